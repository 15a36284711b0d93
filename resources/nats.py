"""NATS JetStream as a Dagster resource, configured by the nested settings resource (nats.url)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import dagster as dg

from marketprism_dagster.jetstream import connect
from resources.settings import SettingsResource


class NatsResource(dg.ConfigurableResource):
    """An async JetStream context for one step: ``async with nats.jetstream() as js``."""

    settings: SettingsResource

    @property
    def url(self) -> str:
        return self.settings.load_settings().nats.url

    @contextlib.asynccontextmanager
    async def jetstream(self) -> AsyncIterator[Any]:
        nc = await connect(self.url, name="marketprism-dagster")
        try:
            yield nc.jetstream()
        finally:
            await nc.drain()
