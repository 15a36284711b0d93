"""Supervision decisions for the long-running services (pure: no Dagster, no I/O).

One service per collector shard plus the hot writer. Given the runs that exist and the
clock, ``plan`` says which services need a run launched, which runs are dead (stale
heartbeat: reap, i.e. kill the worker and mark the run failed) and which live runs must be
restarted gracefully (the seeds' self-healing: memory, CPU, max uptime). A planned restart is
make-before-break: a successor run is launched first (``handover``) and the old run is stopped only
once the successor is healthy (heartbeat, and for a collector every feed connected: READY_TAG), or
after ``supervisor.handover_timeout_s``; the identical Nats-Msg-Ids of the overlap dedupe in JetStream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from marketprism_dagster.config import Settings

SERVICE_TAG = "marketprism/service"
HEARTBEAT_TAG = "marketprism/heartbeat"
PID_TAG = "marketprism/pid"
# the worker's process start time (psutil create_time) written with its pid: (pid, start time) names one
# process, a pid alone can belong to an unrelated process after the worker died
PID_CREATED_TAG = "marketprism/pid_created"
RSS_TAG = "marketprism/rss_mb"
CPU_TAG = "marketprism/cpu_pct"
STARTED_TAG = "marketprism/started"
# set by the supervisor on a run it stops for a restart (time, reason): the run then ends SUCCESS, not FAILURE
RESTART_TAG = "marketprism/restart_requested"
RESTART_REASON_TAG = "marketprism/restart_reason"
# make-before-break: a run over a limit first gets a successor (HANDOVER_TAG: when it was asked for, with the
# reason); the successor (SUCCESSOR_OF_TAG) sets READY_TAG once it collects, and only then is the old run stopped
HANDOVER_TAG = "marketprism/handover_requested"
HANDOVER_REASON_TAG = "marketprism/handover_reason"
SUCCESSOR_OF_TAG = "marketprism/successor_of"
READY_TAG = "marketprism/ready"
# a run that has not heartbeated at all is given this long after it was created
START_GRACE_S = 120.0


def pause_marker(settings: Settings) -> Path:
    """While this file exists the supervisor launches, reaps and restarts nothing: ``marketprism dev``
    writes it while it stops the services, so they are not relaunched between their stop and Dagster's."""
    return settings.data_path / "supervisor.paused"


@dataclass(frozen=True)
class Service:
    name: str  # "collector:main" | "writer"
    kind: str  # collector | writer
    shard: str | None = None


def services(settings: Settings) -> list[Service]:
    out = [Service(f"collector:{shard}", "collector", shard) for shard in settings.collector.shards]
    out.append(Service("writer", "writer"))
    return out


@dataclass(frozen=True)
class RunView:
    """What the supervisor needs to know about one unfinished run."""

    run_id: str
    service: str
    status: str  # QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING
    created_at: float
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def heartbeat(self) -> float | None:
        v = self.tags.get(HEARTBEAT_TAG)
        return float(v) if v else None

    @property
    def pid(self) -> int | None:
        v = self.tags.get(PID_TAG)
        try:
            return int(v) if v else None
        except ValueError:
            return None

    @property
    def pid_created(self) -> float | None:
        return self.number(PID_CREATED_TAG)

    def number(self, tag: str) -> float | None:
        v = self.tags.get(tag)
        try:
            return float(v) if v else None
        except ValueError:
            return None


@dataclass
class Plan:
    launch: list[Service] = field(default_factory=list)
    reap: list[tuple[RunView, str]] = field(default_factory=list)  # dead: kill + mark failed
    restart: list[tuple[RunView, str]] = field(default_factory=list)  # alive: graceful stop
    waiting: list[tuple[Service, str]] = field(default_factory=list)  # cooldown
    handover: list[tuple[RunView, str]] = field(default_factory=list)  # alive, over a limit: launch a successor


def same_process(run: RunView, pid_created: float, cmdline: str) -> bool:
    """Is the process with this start time and command line the run's worker? With the start time recorded
    at the pid's heartbeat it must match (to the kernel's clock tick); a run from before that tag existed
    must name its run id on the command line. Anything else may be an unrelated process that reused the pid."""
    recorded = run.pid_created
    if recorded is not None:
        return abs(recorded - pid_created) < PID_CREATED_TOLERANCE_S
    return run.run_id in cmdline


# psutil derives create_time from the boot time and the start tick (1/100 s): the same process reads the
# same value in every process, two processes started a tick apart differ by >= 10 ms (the tag keeps 1 ms)
PID_CREATED_TOLERANCE_S = 0.002


def healthy(run: RunView, svc: Service) -> bool:
    """Doing its work: a fresh heartbeat (the caller checked staleness) and, for a collector, READY_TAG."""
    if run.status != "STARTED" or run.heartbeat is None:
        return False
    return svc.kind != "collector" or run.tags.get(READY_TAG) is not None


def stale_reason(run: RunView, now: float, stale_s: float) -> str | None:
    beat = run.heartbeat
    if beat is None:
        if run.status == "QUEUED":
            return None
        age = now - run.created_at
        return f"no heartbeat {age:.0f} s after creation" if age > max(stale_s, START_GRACE_S) else None
    age = now - beat
    return (
        f"last heartbeat {age:.0f} s ago (limit supervisor.heartbeat_stale_s={stale_s:.0f})" if age > stale_s else None
    )


def limit_reason(run: RunView, now: float, settings: Settings) -> str | None:
    sup = settings.supervisor
    rss = run.number(RSS_TAG)
    if rss is not None and rss > sup.memory_mb:
        return f"rss {rss:.0f} MB over supervisor.memory_mb={sup.memory_mb}"
    cpu = run.number(CPU_TAG)
    if cpu is not None and cpu > sup.cpu_threshold:
        return f"cpu {cpu:.0f}% over supervisor.cpu_threshold={sup.cpu_threshold:.0f}"
    started = run.number(STARTED_TAG)
    if started is not None and now - started > sup.max_uptime_h * 3600:
        return f"up {(now - started) / 3600:.1f} h, over supervisor.max_uptime_h={sup.max_uptime_h}"
    return None


def writer_limit_reason(run: RunView, settings: Settings) -> str | None:
    """The writer's limit: memory only (its CPU follows the load; one writer per consumer, so no overlap)."""
    rss = run.number(RSS_TAG)
    limit = settings.supervisor.writer_memory_mb
    if rss is not None and rss > limit:
        return f"rss {rss:.0f} MB over supervisor.writer_memory_mb={limit}"
    return None


def plan(
    settings: Settings,
    runs: Iterable[RunView],
    now: float,
    last_stop: Mapping[str, float] | None = None,
) -> Plan:
    """Decide. ``runs`` are the unfinished runs carrying SERVICE_TAG; ``last_stop`` maps a service
    to when its previous run ended (or was reaped), for the restart cooldown."""
    last_stop = last_stop or {}
    sup = settings.supervisor
    by_service: dict[str, list[RunView]] = {}
    for r in runs:
        by_service.setdefault(r.service, []).append(r)
    out = Plan()
    for svc in services(settings):
        alive: list[RunView] = []
        for r in sorted(by_service.get(svc.name, []), key=lambda r: r.created_at, reverse=True):
            why = stale_reason(r, now, sup.heartbeat_stale_s)
            if why:
                out.reap.append((r, why))
            else:
                alive.append(r)
        # exactly one: the newest live run stays, extra ones are stopped once it is healthy (unless ALLOW_MULTIPLE)
        if not settings.collector.allow_multiple and len(alive) > 1:
            newest, older = alive[0], alive[1:]
            waited = now - newest.created_at
            ready = healthy(newest, svc)
            if ready or waited > sup.handover_timeout_s:
                note = "" if ready else f" (not ready after {waited:.0f} s: supervisor.handover_timeout_s)"
                for extra in older:
                    why = extra.tags.get(HANDOVER_REASON_TAG) or f"more than one run for {svc.name}"
                    out.restart.append((extra, f"{why}; replaced by run {newest.run_id[:8]}{note}"))
            else:
                out.waiting.append(
                    (svc, f"successor {newest.run_id[:8]} starting; the old run collects until it is ready")
                )
            alive = alive[:1]
        if alive:
            for r in alive:
                if r.status == "STARTED" and svc.kind == "writer":
                    why = writer_limit_reason(r, settings)
                    if why:
                        out.restart.append((r, why))  # break-then-make: the lease allows one writer at a time
                    continue
                # the seeds' limits are the collector's (COLLECTOR_MEMORY_MB, _CPU_THRESHOLD, _MAX_UPTIME_H)
                if r.status == "STARTED" and svc.kind == "collector":
                    why = limit_reason(r, now, settings)
                    if not why:
                        continue
                    if settings.collector.allow_multiple:
                        out.restart.append((r, why))  # replicas: no takeover, stop and relaunch
                        continue
                    asked = r.number(HANDOVER_TAG)
                    if asked is None or now - asked > sup.handover_timeout_s:
                        out.handover.append((r, why))
            continue
        if out.reap and any(r.service == svc.name for r, _ in out.reap):
            out.waiting.append((svc, "reaping a dead run; relaunch after the cooldown"))
            continue
        stopped = last_stop.get(svc.name)
        if stopped is not None and sup.restart_cooldown_s > 0 and now - stopped < sup.restart_cooldown_s:
            out.waiting.append((svc, f"cooldown {sup.restart_cooldown_s - (now - stopped):.0f} s"))
            continue
        out.launch.append(svc)
    return out
