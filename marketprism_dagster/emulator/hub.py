"""Synth streams shared by all subscribers of a venue server.

One task per active topic produces frames (at the configured rate, on the topic's fixed
period, or at random intervals for liquidations) and broadcasts them, so every connection
sees the same sequence and the REST snapshots describe the same book.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from .connection import Conn, Frame

log = structlog.get_logger()

MAX_BATCH = 512


@dataclass
class TopicSpec:
    """How a topic produces frames: `make(n)` returns n frames (or more, for bursts)."""

    key: str
    make: Callable[[int], list[Frame]]
    mode: str = "rate"  # rate | period | sporadic
    period: float = 1.0  # seconds: fixed period, or mean interval (sporadic)
    rng: random.Random | None = None


class StreamHub:
    def __init__(self, venue: str, rate: float) -> None:
        self.venue = venue
        self.rate = rate
        self.subs: dict[str, set[Conn]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def subscribe(self, conn: Conn, spec: TopicSpec) -> None:
        conn.subs.add(spec.key)
        self.subs.setdefault(spec.key, set()).add(conn)
        task = self.tasks.get(spec.key)
        if task is None or task.done():
            self.tasks[spec.key] = asyncio.create_task(self._run(spec), name=f"emu-{self.venue}-{spec.key}")

    def unsubscribe(self, conn: Conn, key: str) -> None:
        conn.subs.discard(key)
        conns = self.subs.get(key)
        if conns is not None:
            conns.discard(conn)

    def drop(self, conn: Conn) -> None:
        for key in list(conn.subs):
            self.unsubscribe(conn, key)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _broadcast(self, key: str, frames: list[Frame]) -> bool:
        conns = self.subs.get(key)
        if not conns:
            return False
        for conn in list(conns):
            if conn.closed:
                conns.discard(conn)
                continue
            try:
                await conn.send_frames(frames)
            except (ConnectionError, RuntimeError) as exc:
                log.info("emulator.send_failed", venue=self.venue, topic=key, error=str(exc))
                conn.closed = True
        return True

    async def _run(self, spec: TopicSpec) -> None:
        try:
            if spec.mode == "period":
                while await self._broadcast(spec.key, spec.make(1)):
                    await asyncio.sleep(spec.period)
            elif spec.mode == "sporadic":
                rng = spec.rng or random.Random(spec.key)
                while self.subs.get(spec.key):
                    await asyncio.sleep(rng.expovariate(1 / spec.period))
                    if not await self._broadcast(spec.key, spec.make(1)):
                        break
            elif self.rate <= 0:
                while await self._broadcast(spec.key, spec.make(64)):
                    await asyncio.sleep(0)
            else:
                await self._paced(spec)
        finally:
            if self.tasks.get(spec.key) is asyncio.current_task():
                del self.tasks[spec.key]

    async def _paced(self, spec: TopicSpec) -> None:
        loop = asyncio.get_running_loop()
        rate = self.rate
        start = loop.time()
        sent = 0
        interval = max(1.0 / rate, 0.002)
        while self.subs.get(spec.key):
            due = int((loop.time() - start) * rate) - sent
            if due <= 0:
                await asyncio.sleep(interval)
                continue
            if due > max(rate, MAX_BATCH) * 2:  # fell far behind: do not burst, restart the pace
                start, sent, due = loop.time(), 0, 1
            due = min(due, MAX_BATCH)
            sent += due
            if not await self._broadcast(spec.key, spec.make(due)):
                return
            await asyncio.sleep(0)
