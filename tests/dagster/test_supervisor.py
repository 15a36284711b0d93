"""The supervisor sensor: one run per shard, never two, reaps a dead run and relaunches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import dagster as dg
import psutil
from dagster._core.test_utils import create_run_for_test

from marketprism_dagster import supervision as sv
from marketprism_dagster.defs.runner import RunHeartbeat
from marketprism_dagster.defs.services import defs as services_defs
from sensors.supervisor import supervise
from tests.support.dagster_helpers import start_run_worker

SHARDS = {"collector.shards": {"spot": ["binance_spot", "okx_spot"], "deriv": ["binance_derivatives"]}}


def _settings(settings_factory, **kw):
    values = {"collector__shards": SHARDS["collector.shards"], "supervisor__restart_cooldown_s": 0, **kw}
    return settings_factory(**values)


def _tick(instance, settings, cursor=None, now=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=services_defs)
    return supervise(ctx, settings, now=now)


def _start(instance, request: dg.RunRequest, **tags) -> dg.DagsterRun:
    return create_run_for_test(
        instance,
        job_name=request.job_name,
        status=dg.DagsterRunStatus.STARTED,
        tags={**request.tags, **tags},
        run_config=request.run_config,
    )


def test_supervisor_launches_one_run_per_shard_and_the_writer_then_never_a_second(settings_factory, dagster_instance):
    settings = _settings(settings_factory)
    first = _tick(dagster_instance, settings)
    services = sorted(r.tags[sv.SERVICE_TAG] for r in first.run_requests)
    assert services == ["collector:deriv", "collector:spot", "writer"]
    assert len({r.run_key for r in first.run_requests}) == 3
    jobs = {r.tags[sv.SERVICE_TAG]: r.job_name for r in first.run_requests}
    assert jobs == {"collector:deriv": "collector", "collector:spot": "collector", "writer": "writer"}
    assert all(services_defs.resolve_job_def(j) for j in set(jobs.values()))
    now = time.time()
    for r in first.run_requests:
        _start(dagster_instance, r, **{sv.HEARTBEAT_TAG: str(now)})
    second = _tick(dagster_instance, settings, first.cursor)
    assert second.run_requests == []
    assert "all services running" in (second.skip_reason.skip_message if second.skip_reason else "")


def test_supervisor_reaps_a_stale_run_kills_its_worker_and_relaunches(settings_factory, dagster_instance):
    settings = _settings(settings_factory)
    reqs = {r.tags[sv.SERVICE_TAG]: r for r in _tick(dagster_instance, settings).run_requests}
    now = time.time()
    for name in ("collector:spot", "collector:deriv"):
        _start(dagster_instance, reqs[name], **{sv.HEARTBEAT_TAG: str(now)})
    stale_run = _start(dagster_instance, reqs["writer"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", stale_run.run_id])
    try:
        dagster_instance.add_run_tags(
            stale_run.run_id,
            {sv.HEARTBEAT_TAG: str(now - settings.supervisor.heartbeat_stale_s - 5), sv.PID_TAG: str(worker.pid)},
        )
        result = _tick(dagster_instance, settings)
        assert worker.wait(timeout=10) == -9  # SIGKILL: the dead worker is gone
    finally:
        worker.kill()
    reaped = dagster_instance.get_run_by_id(stale_run.run_id)
    assert reaped.status == dg.DagsterRunStatus.FAILURE
    assert [r.tags[sv.SERVICE_TAG] for r in result.run_requests] == ["writer"]
    assert "writer" in json.loads(result.cursor)


def test_supervisor_waits_for_the_cooldown_before_relaunching(settings_factory, dagster_instance):
    settings = _settings(settings_factory, supervisor__restart_cooldown_s=60)
    cursor = json.dumps({"writer": time.time()})
    result = _tick(dagster_instance, settings, cursor)
    assert sorted(r.tags[sv.SERVICE_TAG] for r in result.run_requests) == ["collector:deriv", "collector:spot"]


def test_planned_restart_launches_the_successor_first_and_stops_the_old_run_only_once_it_is_ready(
    settings_factory, dagster_instance
):
    settings = _settings(settings_factory, supervisor__memory_mb=100)
    reqs = {r.tags[sv.SERVICE_TAG]: r for r in _tick(dagster_instance, settings).run_requests}
    now = time.time()
    for name in ("collector:deriv", "writer"):
        _start(dagster_instance, reqs[name], **{sv.HEARTBEAT_TAG: str(now)})
    run = _start(dagster_instance, reqs["collector:spot"])
    worker = start_run_worker(run.run_id)
    try:
        tags = {sv.HEARTBEAT_TAG: str(now), sv.PID_TAG: str(worker.pid), sv.RSS_TAG: "250.0"}
        dagster_instance.add_run_tags(run.run_id, tags)

        # over the limit: a successor is launched beside the old run, which keeps collecting
        first = _tick(dagster_instance, settings)
        (successor_request,) = first.run_requests
        assert successor_request.tags[sv.SERVICE_TAG] == "collector:spot"
        assert successor_request.tags[sv.SUCCESSOR_OF_TAG] == run.run_id
        assert successor_request.run_config["ops"]["run_service"]["config"]["takeover"] is True
        assert worker.poll() is None
        assert sv.RESTART_TAG not in dagster_instance.get_run_by_id(run.run_id).tags

        # the successor runs but is not collecting yet: nothing is stopped, no second successor
        successor = _start(dagster_instance, successor_request, **{sv.HEARTBEAT_TAG: str(time.time())})
        waiting = _tick(dagster_instance, settings, first.cursor)
        assert waiting.run_requests == []
        assert worker.poll() is None

        # the successor is ready (every feed connected): now the old run is stopped gracefully
        dagster_instance.add_run_tags(successor.run_id, {sv.READY_TAG: str(time.time())})
        stopped = _tick(dagster_instance, settings, waiting.cursor)
        assert worker.wait(timeout=10) == 3  # graceful: SIGINT -> KeyboardInterrupt -> drain and exit
    finally:
        worker.kill()
    assert stopped.run_requests == []
    old_tags = dagster_instance.get_run_by_id(run.run_id).tags
    assert sv.RESTART_TAG in old_tags
    assert old_tags[sv.RESTART_REASON_TAG].startswith("rss 250 MB over supervisor.memory_mb=100; replaced by run ")


def test_supervisor_does_nothing_while_paused_by_a_stopping_dev_server(settings_factory, dagster_instance):
    settings = _settings(settings_factory)
    marker = sv.pause_marker(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    paused = _tick(dagster_instance, settings)
    assert paused.run_requests == []
    assert "paused" in (paused.skip_reason.skip_message if paused.skip_reason else "")
    marker.unlink()
    resumed = _tick(dagster_instance, settings)
    assert len(resumed.run_requests) == len(sv.services(settings))


def _stale_writer_run(instance, settings):
    reqs = {r.tags[sv.SERVICE_TAG]: r for r in _tick(instance, settings).run_requests}
    now = time.time()
    for name in ("collector:spot", "collector:deriv"):
        _start(instance, reqs[name], **{sv.HEARTBEAT_TAG: str(now)})
    stale = {sv.HEARTBEAT_TAG: str(now - settings.supervisor.heartbeat_stale_s - 5)}
    return _start(instance, reqs["writer"], **stale)


def test_supervisor_never_kills_an_unrelated_process_that_reused_the_dead_workers_pid(
    settings_factory, dagster_instance
):
    settings = _settings(settings_factory)
    run = _stale_writer_run(dagster_instance, settings)
    # the worker recorded its pid and start time, then died; the kernel gave the pid to another process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_started = psutil.Process(dead.pid).create_time()
    dead.wait()
    time.sleep(0.05)  # a later kernel clock tick: psutil's start times have 10 ms resolution
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = {sv.PID_TAG: str(unrelated.pid), sv.PID_CREATED_TAG: f"{dead_started:.3f}"}
        dagster_instance.add_run_tags(run.run_id, tags)
        result = _tick(dagster_instance, settings)
        assert unrelated.poll() is None, "the unrelated process is alive"
    finally:
        unrelated.kill()
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE  # still reaped
    assert [r.tags[sv.SERVICE_TAG] for r in result.run_requests] == ["writer"]


def test_supervisor_never_kills_a_process_without_the_run_id_when_no_start_time_was_recorded(
    settings_factory, dagster_instance
):
    settings = _settings(settings_factory)
    run = _stale_writer_run(dagster_instance, settings)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # started after the run
    try:
        dagster_instance.add_run_tags(run.run_id, {sv.PID_TAG: str(unrelated.pid)})
        _tick(dagster_instance, settings)
        assert unrelated.poll() is None
    finally:
        unrelated.kill()


def test_supervisor_kills_the_worker_named_by_its_pid_and_start_time(settings_factory, dagster_instance):
    settings = _settings(settings_factory)
    run = _stale_writer_run(dagster_instance, settings)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # no run id in its argv
    try:
        started = psutil.Process(worker.pid).create_time()
        tags = {sv.PID_TAG: str(worker.pid), sv.PID_CREATED_TAG: f"{started:.3f}"}
        dagster_instance.add_run_tags(run.run_id, tags)
        _tick(dagster_instance, settings)
        assert worker.wait(timeout=10) == -9
    finally:
        worker.kill()


def test_run_heartbeat_records_the_workers_pid_with_its_start_time(dagster_instance):
    run = create_run_for_test(dagster_instance, job_name="writer", status=dg.DagsterRunStatus.STARTED)
    RunHeartbeat(dagster_instance, run.run_id)()
    tags = dagster_instance.get_run_by_id(run.run_id).tags
    assert int(tags[sv.PID_TAG]) == os.getpid()
    assert float(tags[sv.PID_CREATED_TAG]) == round(psutil.Process().create_time(), 3)
