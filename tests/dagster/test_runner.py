"""The service runner: an interrupt drains the service; a supervisor restart ends the op normally (the
run succeeds), any other interrupt (the UI's Terminate, dev stopping) propagates to Dagster."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.test_utils import create_run_for_test

from marketprism_dagster import supervision as sv
from marketprism_dagster.defs.runner import RunHeartbeat, run_until_terminated


@pytest.fixture
def interrupt_soon() -> Iterator[None]:
    """SIGUSR1 shortly after the test starts, raised as Dagster's interrupt (as its SIGINT handler does)."""

    def handler(signum: int, frame: object) -> None:
        raise DagsterExecutionInterruptedError()

    old = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)


def _service(drained: list[str]):
    async def program(stop: asyncio.Event, beat: RunHeartbeat) -> None:
        await stop.wait()
        await asyncio.sleep(0.05)  # the drain
        drained.append("drained")

    return program


def _run(instance: dg.DagsterInstance, **tags: str) -> RunHeartbeat:
    run = create_run_for_test(instance, job_name="writer", status=dg.DagsterRunStatus.STARTED, tags=tags)
    return RunHeartbeat(instance, run.run_id, every_s=60)


def test_a_supervisor_restart_drains_and_returns(dagster_instance, interrupt_soon) -> None:
    beat = _run(dagster_instance, **{sv.RESTART_TAG: "1.0", sv.RESTART_REASON_TAG: "rss 900 MB over 800"})
    drained: list[str] = []
    run_until_terminated(logging.getLogger("test"), beat, _service(drained))  # type: ignore[arg-type]
    assert drained == ["drained"]


def test_any_other_interrupt_drains_and_propagates(dagster_instance, interrupt_soon) -> None:
    beat = _run(dagster_instance)
    drained: list[str] = []
    with pytest.raises(DagsterExecutionInterruptedError):
        run_until_terminated(logging.getLogger("test"), beat, _service(drained))  # type: ignore[arg-type]
    assert drained == ["drained"]


def test_ready_service_is_tagged_so_a_planned_restart_can_stop_its_predecessor(dagster_instance) -> None:
    beat = _run(dagster_instance)
    assert sv.READY_TAG not in dagster_instance.get_run_by_id(beat.run_id).tags
    beat.mark_ready()
    assert float(dagster_instance.get_run_by_id(beat.run_id).tags[sv.READY_TAG]) > 0
