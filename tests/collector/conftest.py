"""Fixtures for the collector tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.nats_server import EmbeddedNats
from tests.support.collector_helpers import connect_nats


@pytest.fixture
async def js_nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A connection to the test server with the default streams created."""
    nc = await connect_nats(nats_server.url)
    await ensure_streams(nc.jetstream(), Settings())
    try:
        yield nc
    finally:
        await nc.close()
