"""Raw message handlers on a nats-py connection: deliveries taken straight from the protocol parser.

nats-py builds a ``Msg`` per incoming message (headers parsed into a dict), queues it to the
subscription's task and awaits the callback there: about 10-15 us of CPU per message on this
machine. The writer's pull consumer (every delivery) and the collector's publisher (every
PubAck) do not need any of that. ``install`` wraps the connection's ``_process_msg`` on that
client instance only; a message whose subscription id has a raw handler goes to it as
``(subject, reply, data, headers)`` bytes, every other message takes nats-py's normal path.

If nats-py's parser interface ever changes (``_process_msg(sid, subject, reply, data, headers)``),
``install`` returns None and the caller falls back to an ordinary subscription callback
(slower, same behaviour).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]

_HOOK_PARAMS = ("sid", "subject", "reply", "data", "headers")
_HANDLERS_ATTR = "_marketprism_raw_handlers"


def status_of(headers: bytes | None) -> tuple[str, str] | None:
    """(code, description) of a status-only message (``NATS/1.0 408 Request Timeout``), else None."""
    if not headers or not headers.startswith(b"NATS/1.0 "):
        return None
    line = headers.split(b"\r\n", 1)[0][9:].decode(errors="replace")
    code, _, desc = line.partition(" ")
    return code, desc.strip()


def install(nc: NATS) -> dict[int, RawHandler] | None:
    """The client's sid -> raw handler table, wrapping its ``_process_msg`` once; None if it cannot be hooked."""
    handlers: dict[int, RawHandler] | None = getattr(nc, _HANDLERS_ATTR, None)
    if handlers is not None:
        return handlers
    orig = getattr(nc, "_process_msg", None)
    if orig is None or tuple(inspect.signature(orig).parameters) != _HOOK_PARAMS or not hasattr(nc, "_subs"):
        return None
    table: dict[int, RawHandler] = {}

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        h = table.get(sid)
        if h is not None:
            h(subject, reply, data, headers)
        else:
            await orig(sid, subject, reply, data, headers)

    nc._process_msg = process_msg  # type: ignore[method-assign]
    setattr(nc, _HANDLERS_ATTR, table)
    return table


def remove(nc: NATS, sid: int) -> None:
    """Drop ``sid``'s raw handler; the last one gone restores the class's ``_process_msg``."""
    handlers: dict[int, RawHandler] | None = getattr(nc, _HANDLERS_ATTR, None)
    if handlers is None:
        return
    handlers.pop(sid, None)
    if not handlers:
        with contextlib.suppress(AttributeError):
            del nc._process_msg
        delattr(nc, _HANDLERS_ATTR)


async def subscribe_raw(nc: NATS, subject: str, handler: RawHandler) -> tuple[Subscription, int | None]:
    """Subscribe ``handler`` to ``subject``: raw when the connection can be hooked (then the sid is returned for
    ``remove``), else through a nats-py callback that hands the same four values over (sid None)."""
    handlers = install(nc)
    if handlers is not None:
        sub = await nc.subscribe(subject)
        sid: int = sub._id
        handlers[sid] = handler
        return sub, sid

    async def cb(m: Msg) -> None:
        raw: bytes | None = None
        if m.header:
            status = m.header.get("Status")
            if not m.data and status:
                raw = f"NATS/1.0 {status} {m.header.get('Description', '')}\r\n\r\n".encode()
            else:
                raw = b"".join([b"NATS/1.0\r\n", *(f"{k}: {v}\r\n".encode() for k, v in m.header.items()), b"\r\n"])
        handler(m.subject.encode(), (m.reply or "").encode(), m.data, raw)

    sub = await nc.subscribe(subject, cb=cb)
    return sub, None
