"""A seal that finds the writer a little behind waits while it commits, instead of failing and
waiting for Dagster's retry two minutes later; a writer that does not move is still refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from marketprism_dagster.jetstream import connect
from marketprism_dagster.sealing import SealRefused, seal_hour
from marketprism_dagster.storage import open_store
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch
from tests.support.hour_setup import hour_start_ms, prepare_store, publish_and_read, records_in_hour
from tests.support.seal_helpers import seal_now


def _setup(nats_server: Any, settings_factory: Any) -> tuple[Any, int, list[StreamMessage]]:
    # writer_slack_s 0: every message stored before now is owed by the writer
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    hour = hour_start_ms(2)
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("trade", hour, 10)))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:4])  # the writer is 6 messages behind
    return settings, hour, messages


def test_seal_waits_for_a_writer_that_is_still_committing(nats_server, settings_factory):
    settings, hour, messages = _setup(nats_server, settings_factory)

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


def test_seal_refuses_a_writer_that_does_not_move(nats_server, settings_factory):
    settings, hour, _ = _setup(nats_server, settings_factory)
    with pytest.raises(SealRefused, match="committed MARKET_DATA through seq 4 but messages up to seq 10") as refused:
        asyncio.run(seal_now(settings, "trade", hour))
    assert refused.value.retryable
