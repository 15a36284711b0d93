"""A seal that finds the writer a little behind waits while it commits, instead of failing and
waiting for Dagster's retry two minutes later; a writer that does not move is still refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.records import encode, msg_id, subject
from marketprism_dagster.sealing import SealRefused, seal_hour
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch, ensure_writer_tables

HOUR_MS = 3_600_000


async def _published(settings: Any, records: list[Any]) -> list[StreamMessage]:
    nc = await connect(settings.nats.url)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    for r in records:
        await js.publish(subject(r), encode(r), headers={"Nats-Msg-Id": msg_id(r)})
    out = []
    for seq in range(1, len(records) + 1):
        m = await js.get_msg("MARKET_DATA", seq=seq)
        out.append(StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers))
    await nc.drain()
    return out


def _setup(nats_server: Any, settings_factory: Any, record_factory: Any) -> tuple[Any, int, list[StreamMessage]]:
    # writer_slack_s 0: every message stored before now is owed by the writer
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    now = int(time.time() * 1000)
    hour = now - now % HOUR_MS - 2 * HOUR_MS
    records = [
        msgspec.structs.replace(record_factory("trade", i, now), timestamp=hour + 60_000 * i + 7) for i in range(10)
    ]
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
    messages = asyncio.run(_published(settings, records))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:4])  # the writer is 6 messages behind
    return settings, hour, messages


def test_seal_waits_for_a_writer_that_is_still_committing(nats_server, settings_factory, record_factory):
    settings, hour, messages = _setup(nats_server, settings_factory, record_factory)

    async def seal_while_the_writer_catches_up() -> Any:
        nc = await connect(settings.nats.url)
        try:
            with open_store(settings) as store:

                async def writer() -> None:
                    await asyncio.sleep(0.6)
                    commit_batch(store, settings, "MARKET_DATA", messages[4:7])
                    await asyncio.sleep(0.6)
                    commit_batch(store, settings, "MARKET_DATA", messages[7:])

                catching_up = asyncio.create_task(writer())
                report = await seal_hour(store, settings, "trade", hour, nc.jetstream())
                await catching_up
                return report
        finally:
            await nc.drain()

    report = asyncio.run(seal_while_the_writer_catches_up())
    assert report.rows == 10 and report.ledger_rows == 10
    assert report.committed_through == 10 and report.boundary_seq == 11


def test_seal_refuses_a_writer_that_does_not_move(nats_server, settings_factory, record_factory):
    settings, hour, _ = _setup(nats_server, settings_factory, record_factory)

    async def seal() -> Any:
        nc = await connect(settings.nats.url)
        try:
            with open_store(settings) as store:
                return await seal_hour(store, settings, "trade", hour, nc.jetstream())
        finally:
            await nc.drain()

    with pytest.raises(SealRefused, match="committed MARKET_DATA through seq 4 but messages up to seq 10") as refused:
        asyncio.run(seal())
    assert refused.value.retryable
