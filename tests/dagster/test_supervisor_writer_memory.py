"""The supervisor's memory limit applies to the hot writer: over supervisor.writer_memory_mb it is stopped
gracefully (SIGINT: drain, exit) and relaunched; the collector-only limits (CPU, uptime) leave it alone."""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from marketprism_dagster import supervision as sv
from marketprism_dagster.defs.services import defs as services_defs
from sensors.supervisor import supervise
from tests.support.dagster_helpers import start_run_worker


def _tick(instance, settings, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=services_defs)
    return supervise(ctx, settings)


def _start(instance, request: dg.RunRequest, **tags) -> dg.DagsterRun:
    return create_run_for_test(instance, job_name=request.job_name, status=dg.DagsterRunStatus.STARTED,
                               tags={**request.tags, **tags}, run_config=request.run_config)


def test_writer_over_its_memory_limit_is_stopped_gracefully_with_the_reason(settings_factory, dagster_instance):
    settings = settings_factory(supervisor__restart_cooldown_s=0, supervisor__writer_memory_mb=300,
                                supervisor__cpu_threshold=10)
    reqs = {r.tags[sv.SERVICE_TAG]: r for r in _tick(dagster_instance, settings).run_requests}
    now = time.time()
    for name, req in reqs.items():
        if name != "writer":
            _start(dagster_instance, req, **{sv.HEARTBEAT_TAG: str(now)})
    run = _start(dagster_instance, reqs["writer"])
    worker = start_run_worker(run.run_id)
    try:
        # under the limit, busy (CPU over the collector's threshold): left alone
        dagster_instance.add_run_tags(run.run_id, {sv.HEARTBEAT_TAG: str(now), sv.PID_TAG: str(worker.pid),
                                                   sv.RSS_TAG: "290.0", sv.CPU_TAG: "95.0"})
        calm = _tick(dagster_instance, settings)
        assert calm.run_requests == []
        assert worker.poll() is None
        # over it: stopped gracefully, the reason names the limit
        dagster_instance.add_run_tags(run.run_id, {sv.RSS_TAG: "1900.0"})
        _tick(dagster_instance, settings, calm.cursor)
        assert worker.wait(timeout=10) == 3
    finally:
        worker.kill()
    tags = dagster_instance.get_run_by_id(run.run_id).tags
    assert tags[sv.RESTART_REASON_TAG] == "rss 1900 MB over supervisor.writer_memory_mb=300"
