"""``marketprism init``: streams, databases and tables, created or verified."""

from __future__ import annotations

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.nats_server import nats_available
from marketprism_dagster.storage import init_schema, open_store


async def init_streams(url: str, settings: Settings) -> list[str]:
    nc = await connect(url, name="marketprism-init")
    try:
        reports = await ensure_streams(nc.jetstream(), settings)
    finally:
        await nc.close()
    return [r.line() for r in reports]


def init_storage(settings: Settings) -> list[str]:
    with open_store(settings) as store:
        return init_schema(store, settings).lines()


async def initialize(settings: Settings) -> list[str]:
    with nats_available(settings.nats.url, settings.nats.embedded, settings.nats_store_dir) as url:
        lines = await init_streams(url, settings)
    return lines + init_storage(settings)
