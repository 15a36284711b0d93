"""Run a long-lived asyncio service (collector shard, hot writer) inside a Dagster op.

The op runs until the run is terminated: termination arrives as SIGINT, which Dagster
raises as DagsterExecutionInterruptedError; the service's ``stop`` event is set and it gets
``DRAIN_S`` seconds to cancel its tasks and drain NATS. A heartbeat (run tags: time, pid,
RSS, CPU) proves the worker is alive to the supervisor sensor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable

import dagster as dg
import psutil

from marketprism_dagster import supervision as sv
from marketprism_dagster.config import Settings

DRAIN_S = 20.0
BEAT_EVERY_S = 5.0


class RunHeartbeat:
    """``heartbeat()`` callable handed to the service; writes run tags at most every ``every_s``."""

    def __init__(
        self, instance: dg.DagsterInstance, run_id: str, every_s: float = BEAT_EVERY_S, cpu_window_s: float = 60.0
    ) -> None:
        self.instance = instance
        self.run_id = run_id
        self.every_s = every_s
        self.cpu_window_s = cpu_window_s  # supervisor.mon_interval_s: CPU is judged as an average
        self.started = time.time()
        self._last = 0.0
        self._proc = psutil.Process()
        self._cpu_mark = (time.monotonic(), self._cpu_seconds())
        self._cpu_pct: float | None = None

    def mark_ready(self) -> None:
        """The service is doing its work (a collector: every feed connected): a planned restart's
        predecessor may stop now (make-before-break)."""
        self.instance.add_run_tags(self.run_id, {sv.READY_TAG: f"{time.time():.3f}"})

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def _cpu_average(self) -> float | None:
        """CPU % of one core averaged over the last full window (None until one has passed)."""
        now, used = time.monotonic(), self._cpu_seconds()
        t0, u0 = self._cpu_mark
        if now - t0 >= self.cpu_window_s:
            self._cpu_pct = 100.0 * (used - u0) / (now - t0)
            self._cpu_mark = (now, used)
        return self._cpu_pct

    def __call__(self, *_: object, **__: object) -> None:
        now = time.time()
        if now - self._last < self.every_s:
            return
        self._last = now
        tags = {
            sv.HEARTBEAT_TAG: f"{now:.3f}",
            sv.PID_TAG: str(os.getpid()),
            sv.PID_CREATED_TAG: f"{self._proc.create_time():.3f}",
            sv.STARTED_TAG: f"{self.started:.3f}",
            sv.RSS_TAG: f"{self._proc.memory_info().rss / 2**20:.1f}",
        }
        cpu = self._cpu_average()
        if cpu is not None:
            tags[sv.CPU_TAG] = f"{cpu:.1f}"
        self.instance.add_run_tags(self.run_id, tags)


async def _beat_forever(beat: RunHeartbeat, stop: asyncio.Event) -> None:
    while not stop.is_set():
        beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=beat.every_s)


def restart_reason(beat: RunHeartbeat) -> str | None:
    """Why the supervisor asked this run to stop (None: it did not, e.g. a terminate from the UI)."""
    run = beat.instance.get_run_by_id(beat.run_id)
    if run is None or sv.RESTART_TAG not in run.tags:
        return None
    return run.tags.get(sv.RESTART_REASON_TAG, "restart requested")


def run_until_terminated(
    log: dg.DagsterLogManager,
    beat: RunHeartbeat,
    program: Callable[[asyncio.Event, RunHeartbeat], Awaitable[None]],
) -> None:
    """Run ``program(stop, heartbeat)`` on a fresh loop until it returns or the run is terminated."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        beater = asyncio.ensure_future(_beat_forever(beat, stop))
        try:
            await program(stop, beat)
        finally:
            stop.set()
            await beater

    task = loop.create_task(main())
    beat()
    try:
        loop.run_until_complete(task)
    except dg.DagsterExecutionInterruptedError:
        log.info("termination requested: stopping the service and draining NATS")
        loop.call_soon_threadsafe(stop.set)
        try:
            loop.run_until_complete(asyncio.wait_for(asyncio.shield(task), DRAIN_S))
        except (TimeoutError, dg.DagsterExecutionInterruptedError):
            task.cancel()
            with contextlib.suppress(BaseException):  # cancelled or interrupted again
                loop.run_until_complete(task)
        reason = restart_reason(beat)
        if reason is None:
            raise
        # a planned restart is not a failure: end the run SUCCESS (the supervisor relaunches the service)
        log.info(f"stopped for a supervisor restart ({reason}); the supervisor launches a fresh run")
    finally:
        loop.close()


async def collector_program(
    settings: Settings, shard: str, stop: asyncio.Event, beat: RunHeartbeat, takeover: bool = False
) -> None:
    from marketprism_dagster.collector.runtime import run_collector

    await run_collector(settings, shard, stop=stop, heartbeat=beat, takeover=takeover, on_ready=beat.mark_ready)


async def writer_program(settings: Settings, stop: asyncio.Event, beat: RunHeartbeat) -> None:
    from marketprism_dagster.writer.service import run_writer

    await run_writer(settings, stop=stop, heartbeat=beat)
