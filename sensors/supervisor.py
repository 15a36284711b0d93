"""Supervisor: exactly one unfinished run per collector shard and one for the hot writer.

A sensor tick has a 60 s deadline, so the services run as long Dagster runs and this
sensor only decides (``marketprism_dagster.supervision.plan``) and acts: launch missing
runs (unique run keys), reap dead ones (stale heartbeat: kill the worker, mark the run
failed) and replace live collectors over their memory / CPU / uptime limits make-before-break:
a successor run is launched first (it takes the shard lock over, collector/lock.py) and the old
run is stopped (SIGINT: the op drains and exits SUCCESS) once the successor is ready.
"""

from __future__ import annotations

import json
import os
import signal
import time

import dagster as dg
import psutil
import structlog

from marketprism_dagster import supervision as sv
from marketprism_dagster.config import Settings
from resources.settings import SettingsResource

log = structlog.get_logger(__name__)


def run_views(instance: dg.DagsterInstance, settings: Settings) -> list[sv.RunView]:
    names = [s.name for s in sv.services(settings)]
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in _UNFINISHED], tags={sv.SERVICE_TAG: names})
    )
    return [
        sv.RunView(
            run_id=r.dagster_run.run_id,
            service=r.dagster_run.tags[sv.SERVICE_TAG],
            status=r.dagster_run.status.value,
            created_at=r.create_timestamp.timestamp(),
            tags=dict(r.dagster_run.tags),
        )
        for r in records
    ]


_UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def last_stops(instance: dg.DagsterInstance, settings: Settings, cursor: dict[str, float]) -> dict[str, float]:
    out = dict(cursor)
    for svc in sv.services(settings):
        recs = instance.get_run_records(
            dg.RunsFilter(
                tags={sv.SERVICE_TAG: svc.name},
                statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
            ),
            limit=1,
        )
        if recs and recs[0].end_time:
            out[svc.name] = max(out.get(svc.name, 0.0), float(recs[0].end_time))
    return out


def kill_worker(run: sv.RunView, sig: int) -> bool:
    """Signal the run's worker process, only if it is really that run's process."""
    pid = run.pid
    if not pid or pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            created = proc.create_time()
            cmdline = " ".join(proc.cmdline())
        if not sv.same_process(run, created, cmdline):
            log.warning(
                "supervisor.pid_reused",
                run_id=run.run_id,
                pid=pid,
                recorded_start=run.pid_created,
                process_start=created,
                signal=signal.Signals(sig).name,
            )
            return False  # the worker is gone and an unrelated process holds that pid now: never signal it
        # psutil.Process.send_signal checks again that this pid is still the process created at `created`
        proc.send_signal(sig)
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def service_run_request(svc: sv.Service, now: float, successor_of: str | None = None) -> dg.RunRequest:
    """A run of ``svc``; with ``successor_of`` a planned restart's successor, which takes the shard over."""
    op_config: dict[str, object] = {"kind": svc.kind, "shard": svc.shard or ""}
    tags = {sv.SERVICE_TAG: svc.name}
    if successor_of is not None:
        op_config["takeover"] = True
        tags[sv.SUCCESSOR_OF_TAG] = successor_of
    return dg.RunRequest(
        run_key=f"{svc.name}:{int(now * 1000)}",
        job_name=svc.kind,
        run_config={"ops": {"run_service": {"config": op_config}}},
        tags=tags,
    )


def supervise(context: dg.SensorEvaluationContext, settings: Settings, now: float | None = None) -> dg.SensorResult:
    now = time.time() if now is None else now
    paused = sv.pause_marker(settings)
    if paused.exists():
        return dg.SensorResult(skip_reason=f"paused while {paused} exists (marketprism dev is stopping the services)")
    instance = context.instance
    cursor: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    runs = run_views(instance, settings)
    decision = sv.plan(settings, runs, now, last_stops(instance, settings, cursor))
    for run, why in decision.reap:
        killed = kill_worker(run, signal.SIGKILL)
        dagster_run = instance.get_run_by_id(run.run_id)
        if dagster_run is not None and not dagster_run.is_finished:
            instance.report_run_failed(dagster_run, message=f"supervisor reaped the run: {why}")
        cursor[run.service] = now
        context.log.warning(f"reaped {run.service} run {run.run_id[:8]}: {why} (worker killed: {killed})")
    for run, why in decision.restart:
        asked = run.number(sv.RESTART_TAG)
        if asked is not None and now - asked < settings.supervisor.heartbeat_stale_s:
            continue
        instance.add_run_tags(run.run_id, {sv.RESTART_TAG: str(now), sv.RESTART_REASON_TAG: why})
        sent = kill_worker(run, signal.SIGINT)
        context.log.warning(f"restarting {run.service} run {run.run_id[:8]}: {why} (signalled: {sent})")
    if decision.reap:
        # relaunch after the cooldown (the seeds' COLLECTOR_RESTART_COOLDOWN)
        decision = sv.plan(settings, run_views(instance, settings), now, last_stops(instance, settings, cursor))
    requests = [service_run_request(s, now) for s in decision.launch]
    by_name = {s.name: s for s in sv.services(settings)}
    for run, why in decision.handover:
        # make-before-break: the successor starts beside this run, which is stopped once the successor is ready
        instance.add_run_tags(run.run_id, {sv.HANDOVER_TAG: str(now), sv.HANDOVER_REASON_TAG: why})
        requests.append(service_run_request(by_name[run.service], now, successor_of=run.run_id))
        context.log.warning(f"replacing {run.service} run {run.run_id[:8]}: {why} (successor launched first)")
    for s in decision.launch:
        context.log.info(f"launching {s.name}")
    skip = None if requests else "; ".join(f"{s.name}: {w}" for s, w in decision.waiting) or "all services running"
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor), skip_reason=skip)


def build_supervisor(jobs: list[dg.JobDefinition]) -> dg.SensorDefinition:
    @dg.sensor(
        name="service_supervisor",
        jobs=jobs,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="one live run per collector shard and one hot writer; reaps dead runs and relaunches them",
    )
    def service_supervisor(context: dg.SensorEvaluationContext, settings: SettingsResource) -> dg.SensorResult:
        return supervise(context, settings.load_settings())

    return service_supervisor
