"""A NATS server restart under a running writer: it keeps pulling from (and acking) its durable consumer.

A graceful restart (SIGTERM) already worked: the server ends every open pull request with a 409
before it goes. A killed server says nothing, and the writer used to wait forever for the credit
of requests the new server never heard of (it then moved data only through the slow catch-up
reader and never acked the durable again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.consumer import durable_name
from tests.support.writer_helpers import expected_by_type, generate, publish, table_identities


async def test_after_nats_server_is_killed_and_restarted_the_writer_pulls_and_acks_its_durable_again(
    nats_server: EmbeddedNats, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    recs = generate(3000, seed=12)
    before, after = recs[:1500], recs[1500:]
    nc: NATS = await connect(nats_server.url, name="restart-test")
    try:
        w = await start_writer(settings)
        await publish(nc, before)
        await w.wait_committed(nc)

        nats_server.kill()  # SIGKILL: no goodbye to the pull requests; JetStream file storage survives
        await asyncio.sleep(0.5)
        nats_server.start()
        deadline = asyncio.get_running_loop().time() + 20
        while not (nc.is_connected and w.service is not None and w.service.nc is not None
                   and w.service.nc.is_connected):
            assert asyncio.get_running_loop().time() < deadline, "clients did not reconnect"
            await asyncio.sleep(0.1)

        await publish(nc, after)
        await w.wait_committed(nc, timeout=60)
        js = nc.jetstream()
        # the durable, not the catch-up reader, delivered the new messages: it acknowledged every one
        for stream in settings.streams:
            last = (await js.stream_info(stream)).state.last_seq
            info = None
            for _ in range(100):  # the ack of the last range is published right after its commit
                info = await js.consumer_info(stream, durable_name(settings, stream))
                if info.ack_floor.stream_seq == last:
                    break
                await asyncio.sleep(0.1)
            assert info is not None
            assert info.delivered.stream_seq == last, stream
            assert info.ack_floor.stream_seq == last, stream
            assert info.num_ack_pending == 0, stream
        await w.close()
    finally:
        await nc.close()

    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert len(got) == len(expected[t]) and set(got) == expected[t], t
    finally:
        store.close()
