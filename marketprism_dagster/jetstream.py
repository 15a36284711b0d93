"""JetStream streams from config: created or updated idempotently, never silently deleted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from marketprism_dagster.config import Settings, StreamConfig

# Fields a stream cannot change once created; a difference is a user-facing conflict.
IMMUTABLE = ("storage",)


class StreamConflict(Exception):
    """The server's stream differs from the config in a field JetStream cannot change."""


@dataclass
class StreamReport:
    name: str
    action: str  # created | updated | verified

    def line(self) -> str:
        return f"{self.action:<8} stream {self.name}"


def stream_config(name: str, cfg: StreamConfig) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=name,
        subjects=list(cfg.subjects),
        retention=js_api.RetentionPolicy.LIMITS,
        discard=js_api.DiscardPolicy.OLD,
        max_bytes=cfg.max_bytes,
        max_age=float(cfg.max_age_s),
        duplicate_window=float(cfg.duplicate_window_s),
        storage=js_api.StorageType.FILE if cfg.storage == "file" else js_api.StorageType.MEMORY,
        num_replicas=cfg.replicas,
    )


def _plain(value: Any) -> Any:
    """An enum's value, else the value (its type depends on the config field named at run time)."""
    return getattr(value, "value", value)


def _differs(current: js_api.StreamConfig, wanted: js_api.StreamConfig) -> list[str]:
    fields = ("subjects", "max_bytes", "max_age", "duplicate_window", "num_replicas", "discard", "retention")
    out = []
    for f in fields:
        a, b = _plain(getattr(current, f)), _plain(getattr(wanted, f))
        if f == "subjects":
            a, b = sorted(a or []), sorted(b or [])
        if f in ("max_age", "duplicate_window"):
            a, b = round(float(a or 0), 3), round(float(b or 0), 3)
        if a != b:
            out.append(f)
    return out


async def ensure_stream(js: JetStreamContext, name: str, cfg: StreamConfig) -> StreamReport:
    wanted = stream_config(name, cfg)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(wanted)
        return StreamReport(name, "created")
    current = info.config
    for f in IMMUTABLE:
        have, want = _plain(getattr(current, f)), _plain(getattr(wanted, f))
        if have != want:
            raise StreamConflict(
                f"stream {name}: {f} is {have!r} on the server but "
                f"{want!r} in config (streams.{name}.{f}); JetStream cannot change it in "
                f"place. Either set streams.{name}.{f} back, or back up and delete the stream "
                f"(nats stream rm {name}) so it can be recreated. Nothing was deleted."
            )
    changed = _differs(current, wanted)
    if not changed:
        return StreamReport(name, "verified")
    await js.update_stream(wanted)
    return StreamReport(name, "updated")


async def ensure_streams(js: JetStreamContext, settings: Settings) -> list[StreamReport]:
    return [await ensure_stream(js, name, cfg) for name, cfg in settings.streams.items()]


async def connect(url: str, name: str = "marketprism", **kwargs: object) -> nats.NATS:
    return await nats.connect(url, name=name, connect_timeout=2, max_reconnect_attempts=-1, **kwargs)
