"""Replay of the recorded sessions: the recorded bytes, in order, at the recorded pace.

Each recorded ``recv`` record becomes a `RecordedFrame` with its exact recorded bytes and a
topic (Binance stream name, OKX ``channel:instId``, Deribit channel). A connection gets the
frames of the topics it subscribed to; control records (OKX event acks, Deribit RPC results)
are answered by the venue modules instead, in the recorded format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .connection import Conn, Frame
from .faults import FLAG_CHECKSUM, FLAG_SEQ
from .fixtures import SessionRecord, load_session

BATCH = 256


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    t: float
    topic: str
    payload: bytes
    flags: int = 0


def binance_frames(root: Path, session: str) -> list[RecordedFrame]:
    """Data frames of a Binance combined-stream recording (topic = stream name)."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, session):
        if rec.kind != "recv" or rec.payload is None or not isinstance(rec.data, dict):
            continue
        stream = str(rec.data.get("stream", ""))
        flags = FLAG_SEQ if "@depth" in stream else 0
        out.append(RecordedFrame(rec.t, stream, rec.payload, flags))
    return out


def okx_frames(root: Path) -> list[RecordedFrame]:
    """Data frames of the OKX recording (topic = channel:instId); event acks are left out."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, "okx.ws"):
        data = rec.data
        if rec.kind != "recv" or rec.payload is None or not isinstance(data, dict) or "event" in data:
            continue
        arg = data.get("arg", {})
        flags = 0
        if arg.get("channel") == "books":
            flags = FLAG_CHECKSUM | (FLAG_SEQ if data.get("action") == "update" else 0)
        out.append(RecordedFrame(rec.t, f"{arg.get('channel')}:{arg.get('instId')}", rec.payload, flags))
    return out


def deribit_frames(root: Path) -> list[RecordedFrame]:
    """Subscription notifications of the Deribit recording (topic = channel)."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, "deribit.ws"):
        data = rec.data
        if rec.kind != "recv" or rec.payload is None or not isinstance(data, dict):
            continue
        if data.get("method") != "subscription":
            continue
        params = data["params"]
        flags = FLAG_SEQ if params.get("data", {}).get("type") == "change" else 0
        out.append(RecordedFrame(rec.t, str(params["channel"]), rec.payload, flags))
    return out


def deribit_rpc_script(root: Path) -> list[tuple[dict[str, object], bytes]]:
    """Recorded (request, response bytes) pairs of the Deribit session, matched by id."""
    records = load_session(root, "deribit.ws")
    sends = [r for r in records if r.kind == "send" and isinstance(r.data, dict)]
    results: dict[object, bytes] = {}
    for rec in records:
        if rec.kind == "recv" and isinstance(rec.data, dict) and "id" in rec.data and rec.payload:
            results[rec.data["id"]] = rec.payload
    return [(s.data, results[s.data.get("id")]) for s in sends if s.data.get("id") in results]


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
