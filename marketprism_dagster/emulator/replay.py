"""Replay of the recorded sessions: the recorded bytes, in order, at the recorded pace.

Each venue module reads its recorded ``recv`` records into `RecordedFrame`s (exact recorded
bytes, a topic in the venue's own naming, fault flags); a connection gets the frames of the
topics it subscribed to. Control records (event acks, RPC results) are answered by the venue
modules instead, in the recorded format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .connection import Conn, Frame
from .fixtures import SessionRecord

BATCH = 256


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    t: float
    topic: str
    payload: bytes
    flags: int = 0


def http_by_query(records: tuple[SessionRecord, ...], key: str) -> dict[str, bytes]:
    """Recorded REST answers indexed by the value of query parameter `key` (e.g. symbol)."""
    out: dict[str, bytes] = {}
    for rec in records:
        if rec.kind != "http" or rec.payload is None:
            continue
        values = parse_qs(urlsplit(rec.url).query).get(key)
        out[values[0] if values else ""] = rec.payload
    return out


async def replay_subscribed(conn: Conn, frames: list[RecordedFrame], settle_s: float, speed: float) -> None:
    """After a settle delay, replay the recorded frames of the topics ``conn`` subscribed to."""
    await asyncio.sleep(settle_s)
    await replay_frames(conn, frames, speed, conn.subs.__contains__, lambda r: Frame(r.topic, r.payload, r.flags))


async def replay_frames(
    conn: Conn,
    frames: list[RecordedFrame],
    speed: float,
    wanted: Callable[[str], bool],
    to_frame: Callable[[RecordedFrame], Frame],
) -> None:
    """Send the wanted frames in recorded order; speed 0 = as fast as the client reads."""
    loop = asyncio.get_running_loop()
    if not frames:
        return
    t0 = frames[0].t
    start = loop.time()
    batch: list[Frame] = []
    for rec in frames:
        if conn.closed:
            return
        if speed > 0:
            delay = (rec.t - t0) / speed - (loop.time() - start)
            if delay > 0.0005:
                await conn.send_frames(batch)
                batch = []
                await asyncio.sleep(delay)
        if wanted(rec.topic):
            batch.append(to_frame(rec))
            if len(batch) >= BATCH:
                await conn.send_frames(batch)
                batch = []
    await conn.send_frames(batch)
