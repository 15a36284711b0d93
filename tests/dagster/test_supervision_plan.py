"""``supervision.plan`` alone: launches, reaps, cooldowns, limits and hand-overs decided from run views and a clock.

No Dagster instance and no servers: the runs are ``RunView`` values, the clock is a number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from marketprism_dagster import supervision as sv
from marketprism_dagster.config import Settings

NOW = 1_800_000_000.0
SHARDS = {"spot": ["binance_spot"], "deriv": ["binance_derivatives"]}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**kw: Any) -> Settings:
        values = {
            "collector__shards": SHARDS,
            "supervisor__memory_mb": 800,
            "supervisor__writer_memory_mb": 1024,
            "supervisor__cpu_threshold": 90,
            "supervisor__max_uptime_h": 24,
            "supervisor__restart_cooldown_s": 5,
            "supervisor__heartbeat_stale_s": 90,
            "supervisor__handover_timeout_s": 300,
            **kw,
        }
        return settings_factory(**values)

    return make


def run(service: str, run_id: str = "r0000000-old", *, created: float = NOW - 600, status: str = "STARTED",
        beat: float | None = NOW - 5, **tags: Any) -> sv.RunView:
    all_tags = {sv.SERVICE_TAG: service, **{k: str(v) for k, v in tags.items()}}
    if beat is not None:
        all_tags[sv.HEARTBEAT_TAG] = str(beat)
    return sv.RunView(run_id=run_id, service=service, status=status, created_at=created, tags=all_tags)


def live(settings: Settings, **tags: Any) -> list[sv.RunView]:
    """One healthy run per service, each with ``tags``."""
    return [run(s.name, f"{s.name}-run", **{sv.READY_TAG: NOW - 500, **tags}) for s in sv.services(settings)]


def names(items: list[tuple[Any, str]]) -> list[tuple[str, str]]:
    return [(getattr(x, "service", None) or x.name, why) for x, why in items]


def test_nothing_running_launches_every_shard_and_the_writer(settings):
    s = settings()
    p = sv.plan(s, [], NOW)
    assert [svc.name for svc in p.launch] == ["collector:spot", "collector:deriv", "writer"]
    assert [(svc.kind, svc.shard) for svc in p.launch] == [("collector", "spot"), ("collector", "deriv"),
                                                          ("writer", None)]
    assert (p.reap, p.restart, p.handover, p.waiting) == ([], [], [], [])


def test_healthy_runs_under_every_limit_are_left_alone(settings):
    s = settings()
    p = sv.plan(s, live(s, **{sv.RSS_TAG: 799, sv.CPU_TAG: 89, sv.STARTED_TAG: NOW - 23 * 3600}), NOW)
    assert (p.launch, p.reap, p.restart, p.handover, p.waiting) == ([], [], [], [], [])


def test_a_stale_heartbeat_is_reaped_and_its_service_waits_instead_of_launching_a_second(settings):
    s = settings()
    runs = [r for r in live(s) if r.service != "writer"] + [run("writer", "w-dead", beat=NOW - 91)]
    p = sv.plan(s, runs, NOW)
    assert names(p.reap) == [("writer", "last heartbeat 91 s ago (limit supervisor.heartbeat_stale_s=90)")]
    assert names(p.waiting) == [("writer", "reaping a dead run; relaunch after the cooldown")]
    assert p.launch == []


def test_a_run_without_a_heartbeat_gets_the_start_grace_and_a_queued_one_is_never_reaped(settings):
    s = settings()
    others = [r for r in live(s) if r.service != "writer"]
    young = run("writer", "w-young", beat=None, status="STARTING", created=NOW - sv.START_GRACE_S + 1)
    assert sv.plan(s, [*others, young], NOW).reap == []
    old = run("writer", "w-old", beat=None, status="STARTING", created=NOW - 121)
    assert names(sv.plan(s, [*others, old], NOW).reap) == [("writer", "no heartbeat 121 s after creation")]
    queued = run("writer", "w-queued", beat=None, status="QUEUED", created=NOW - 3600)
    p = sv.plan(s, [*others, queued], NOW)
    assert (p.reap, p.launch) == ([], [])  # queued behind the run coordinator: alive, not relaunched


def test_the_restart_cooldown_delays_the_relaunch_then_lets_it_through(settings):
    s = settings(supervisor__restart_cooldown_s=30)
    others = [r for r in live(s) if r.service != "collector:spot"]
    p = sv.plan(s, others, NOW, last_stop={"collector:spot": NOW - 12})
    assert names(p.waiting) == [("collector:spot", "cooldown 18 s")] and p.launch == []
    p = sv.plan(s, others, NOW, last_stop={"collector:spot": NOW - 31})
    assert [svc.name for svc in p.launch] == ["collector:spot"] and p.waiting == []
    p = sv.plan(settings(supervisor__restart_cooldown_s=0), others, NOW, last_stop={"collector:spot": NOW})
    assert [svc.name for svc in p.launch] == ["collector:spot"]


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ({sv.RSS_TAG: 801.0}, "rss 801 MB over supervisor.memory_mb=800"),
        ({sv.CPU_TAG: 95.0}, "cpu 95% over supervisor.cpu_threshold=90"),
        ({sv.STARTED_TAG: NOW - 25 * 3600}, "up 25.0 h, over supervisor.max_uptime_h=24.0"),
    ],
)
def test_a_collector_over_a_limit_gets_a_successor_first(settings, tags, why):
    s = settings()
    runs = [r if r.service != "collector:deriv" else run(r.service, "deriv-run", **{sv.READY_TAG: 1, **tags})
            for r in live(s)]
    p = sv.plan(s, runs, NOW)
    assert names(p.handover) == [("collector:deriv", why)]
    assert (p.restart, p.launch, p.reap) == ([], [], [])
    # asked for a successor a minute ago: not asked again until the hand-over timeout has passed
    asked = [r if r.service != "collector:deriv" else run(r.service, "deriv-run", **{sv.HANDOVER_TAG: NOW - 60,
                                                                                        **tags}) for r in runs]
    assert sv.plan(s, asked, NOW).handover == []
    late = [r if r.service != "collector:deriv" else run(r.service, "deriv-run", **{sv.HANDOVER_TAG: NOW - 301,
                                                                                       **tags}) for r in runs]
    assert names(sv.plan(s, late, NOW).handover) == [("collector:deriv", why)]


def test_replicas_over_a_limit_are_restarted_not_handed_over(settings):
    s = settings(collector__allow_multiple=True)
    runs = [run(r.service, r.run_id, **{sv.RSS_TAG: 900.0}) if r.service == "collector:spot" else r for r in live(s)]
    p = sv.plan(s, runs, NOW)
    assert names(p.restart) == [("collector:spot", "rss 900 MB over supervisor.memory_mb=800")] and p.handover == []


def test_the_writer_over_its_memory_limit_is_restarted_and_the_collector_limits_leave_it_alone(settings):
    """supervisor.writer_memory_mb applies to the writer and acts (a restart: the lease allows one writer);
    the collector's memory, CPU and uptime limits do not apply to it."""
    s = settings()
    collectors = [r for r in live(s) if r.service != "writer"]
    over = run("writer", "w-run", **{sv.RSS_TAG: 1100.0})
    p = sv.plan(s, [*collectors, over], NOW)
    assert names(p.restart) == [("writer", "rss 1100 MB over supervisor.writer_memory_mb=1024")]
    assert (p.handover, p.launch, p.reap) == ([], [], [])
    busy = run("writer", "w-run", **{sv.RSS_TAG: 1000.0, sv.CPU_TAG: 100.0, sv.STARTED_TAG: NOW - 48 * 3600})
    assert sv.plan(s, [*collectors, busy], NOW).restart == []  # over memory_mb=800, under writer_memory_mb
    starting = run("writer", "w-run", status="STARTING", **{sv.RSS_TAG: 2000.0})
    assert sv.plan(s, [*collectors, starting], NOW).restart == []  # acts on a started writer only


def test_two_live_runs_the_older_stops_once_the_successor_is_ready_or_the_timeout_passed(settings):
    s = settings()
    others = [r for r in live(s) if r.service != "collector:spot"]
    old = run("collector:spot", "old-run-1", created=NOW - 3600, **{sv.HANDOVER_REASON_TAG: "rss 900 MB over x"})
    starting = run("collector:spot", "new-run-2", created=NOW - 30)
    p = sv.plan(s, [*others, old, starting], NOW)
    assert names(p.waiting) == [
        ("collector:spot", "successor new-run- starting; the old run collects until it is ready")
    ]
    assert p.restart == [] and p.launch == []
    ready = run("collector:spot", "new-run-2", created=NOW - 30, **{sv.READY_TAG: NOW - 1})
    p = sv.plan(s, [*others, old, ready], NOW)
    assert [(r.run_id, why) for r, why in p.restart] == [("old-run-1", "rss 900 MB over x; replaced by run new-run-")]
    stuck = run("collector:spot", "new-run-2", created=NOW - 301)
    p = sv.plan(s, [*others, old, stuck], NOW)
    note = " (not ready after 301 s: supervisor.handover_timeout_s)"
    assert [(r.run_id, why) for r, why in p.restart] == [
        ("old-run-1", f"rss 900 MB over x; replaced by run new-run-{note}")
    ]
