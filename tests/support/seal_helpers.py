"""Seal the hours a live test's data landed in, as if each had closed: the real seal (ledger + JetStream proof,
count, verdict) with ``now`` set just past the hour's grace."""

from __future__ import annotations

from typing import Any

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect
from marketprism_dagster.sealing import SealRefused, SealReport, seal_hour, seal_hours
from marketprism_dagster.storage import open_store

HOUR_MS = 3_600_000


def event_hours(settings: Settings, data_type: str) -> list[int]:
    """The UTC hours (start ms) holding rows of ``data_type`` in the hot table."""
    with open_store(settings) as store:
        rows = store.query_rows(
            f"SELECT DISTINCT intDiv(toUnixTimestamp64Milli(timestamp), {HOUR_MS}) * {HOUR_MS} "
            f"FROM `{settings.storage.hot_database}`.`{data_type}` ORDER BY 1"
        )
    return [int(r[0]) for r in rows]


async def seal_at_close(
    settings: Settings, data_types: list[str], hour_ms: int
) -> dict[str, SealReport | SealRefused]:
    """Seal ``hour_ms`` of ``data_types`` at its close + grace + 1 s: each type's report or refusal."""
    nc = await connect(settings.nats.url)
    try:
        now = hour_ms + HOUR_MS + settings.seal.grace_s * 1000 + 1000
        with open_store(settings) as store:
            return await seal_hours(store, settings, data_types, hour_ms, nc.jetstream(), now=now)
    finally:
        await nc.close()


async def seal_closed(settings: Settings, data_types: list[str], hour_ms: int) -> dict[str, SealReport]:
    """``seal_at_close``; a refusal fails the test with its reason."""
    out: dict[str, Any] = await seal_at_close(settings, data_types, hour_ms)
    refused = {t: str(r) for t, r in out.items() if isinstance(r, SealRefused)}
    assert not refused, refused
    return out


async def seal_now(settings: Settings, data_type: str, hour_ms: int) -> SealReport:
    """Seal ``hour_ms`` of ``data_type`` once, now, as the seal asset does; a refusal raises."""
    nc = await connect(settings.nats.url)
    try:
        with open_store(settings) as store:
            return await seal_hour(store, settings, data_type, hour_ms, nc.jetstream())
    finally:
        await nc.drain()
