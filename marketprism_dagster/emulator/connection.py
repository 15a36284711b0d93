"""One client WebSocket: batched frame writes with fault application.

Server frames are unmasked, so a batch of text frames is one ``transport.write`` of
concatenated headers and payloads (aiohttp's own ``send_str`` does one write and one
coroutine per frame, which caps a 2-core machine well below 50k msg/s). Compression is
off on every emulator WebSocket, so the frames are valid as written.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web

from .faults import FaultRule, VenueFaults

log = structlog.get_logger()

_PACK2 = struct.Struct("!BBH").pack
_PACK8 = struct.Struct("!BBQ").pack


CLOSE_GOING_AWAY = 1001


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked server close frame (reason at most 123 bytes)."""
    payload = struct.pack("!H", code) + reason[:123]
    return bytes((0x88, len(payload))) + payload


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _PACK2(0x81, 126, n) + payload
    return _PACK8(0x81, 127, n) + payload


class Frame:
    """One outgoing data message.

    `body` is what a raw-stream client receives; `wrapped` the form a combined-stream client
    receives (``{"stream":..,"data":..}``, see ``combined``). Either may be None; a missing
    `body` is the ``data`` member of `wrapped`.
    """

    __slots__ = ("body", "flags", "topic", "wrapped")

    def __init__(self, topic: str, body: bytes | None, flags: int = 0, wrapped: bytes | None = None) -> None:
        self.topic = topic
        self.body = body
        self.flags = flags
        self.wrapped = wrapped

    def payload(self, combined: bool) -> bytes:
        if combined and self.wrapped is not None:
            return self.wrapped
        if self.body is None:
            assert self.wrapped is not None
            self.body = orjson.dumps(orjson.loads(self.wrapped)["data"])
        return self.body


@dataclass
class VenueStats:
    """Counters of one venue server (read by tests through Emulator.stats)."""

    ws_connections: int = 0
    ws_open: int = 0
    ws_messages: int = 0
    ws_control: int = 0
    ws_requests: int = 0
    rest_requests: int = 0
    rest_errors: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    ws_ops: dict[str, int] = field(default_factory=dict)  # client requests by op (subscribe, unsubscribe, ...)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ws_ops": dict(self.ws_ops),
            "ws_connections": self.ws_connections,
            "ws_open": self.ws_open,
            "ws_messages": self.ws_messages,
            "ws_control": self.ws_control,
            "ws_requests": self.ws_requests,
            "rest_requests": self.rest_requests,
            "rest_errors": self.rest_errors,
        }


def _truncate(payload: bytes) -> bytes:
    return payload[: max(1, len(payload) // 2)].decode("utf-8", "ignore").encode()


class Conn:
    """A client connection of one venue server."""

    def __init__(
        self, ws: web.WebSocketResponse, faults: VenueFaults, stats: VenueStats, *, combined: bool = True
    ) -> None:
        self.ws = ws
        self.faults = faults
        self.stats = stats
        self.combined = combined
        self.closed = False
        self.held: bytes | None = None
        self.subs: set[str] = set()
        # the venue's "server about to shut down" message; None = the venue has none
        self.shutdown_notice: Callable[[], bytes] | None = None
        self.shutting_down = False
        writer = getattr(ws, "_writer", None)
        self._transport = getattr(writer, "transport", None)
        self._protocol = getattr(writer, "protocol", None)

    def _write(self, payloads: Iterable[bytes]) -> None:
        if self.closed:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self.closed = True
            return
        transport.write(b"".join([text_frame(p) for p in payloads]))

    async def _drain(self) -> None:
        protocol = self._protocol
        if protocol is not None and getattr(protocol, "_paused", False):
            try:
                await protocol._drain_helper()
            except (ConnectionError, RuntimeError):
                self.closed = True

    async def send_control(self, payload: bytes) -> None:
        """A frame outside the data stream (ack, pong, RPC result): never faulted or counted."""
        self.stats.ws_control += 1
        self._write((payload,))
        await self._drain()

    async def send_frames(self, frames: list[Frame]) -> None:
        if self.closed or not frames:
            return
        self.stats.ws_messages += len(frames)
        faults = self.faults
        combined = self.combined
        if not faults.ws_active:
            faults.frames += len(frames)
            self._write([f.payload(combined) for f in frames])
            await self._drain()
            return
        out: list[bytes] = []
        for frame in frames:
            payload = frame.payload(combined)
            fired = faults.on_frame(frame.flags, frame.topic)
            if fired:
                payload_or_none = await self._apply(fired, payload, out)
                if self.closed:
                    return
                if payload_or_none is None:
                    continue
                payload = payload_or_none
            out.append(payload)
            if self.held is not None and not fired:
                out.append(self.held)
                self.held = None
        self._write(out)
        await self._drain()

    async def _apply(self, fired: list[FaultRule], payload: bytes, out: list[bytes]) -> bytes | None:
        """Apply fired faults to one frame; return the payload to send, or None to send nothing."""
        result: bytes | None = payload
        for rule in fired:
            kind = rule.kind
            if kind == "disconnect":
                self._write(out)
                out.clear()
                await self.abort()
                return None
            if kind == "stall":
                self._write(out)
                out.clear()
                await self._drain()
                await asyncio.sleep(rule.hold_seconds())
            elif kind == "gap":
                result = None
            elif kind == "duplicate" and result is not None:
                out.append(result)
            elif kind == "malformed" and result is not None:
                result = _truncate(result)
            elif kind in self.faults.transforms and result is not None:
                result = self.faults.transforms[kind](result)  # the venue's own corruption (bad_checksum)
            elif kind == "shutdown_notice" and self.shutdown_notice is not None and not self.shutting_down:
                self.shutting_down = True
                out.append(self.shutdown_notice())
                self.stats.ws_control += 1
                asyncio.get_running_loop().call_later(rule.hold_seconds(), self.close_going_away)
            elif kind == "reorder" and result is not None:
                if self.held is not None:
                    out.append(self.held)
                self.held = result
                result = None
        return result

    def close_going_away(self) -> None:
        """Close after a shutdown notice: a close frame (1001), then the TCP connection once flushed."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self.closed = True
            return
        self.closed = True
        transport.write(close_frame(CLOSE_GOING_AWAY, b"server shutdown"))
        transport.close()
        log.info("emulator.ws_closed_after_notice", subs=sorted(self.subs))

    async def abort(self) -> None:
        """Drop the connection without a close handshake (what a network failure looks like)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
