"""The seal's repair write is visible as such: the gap it filled, the messages it re-read from JetStream
and the rows it actually inserted (a row already in the table is not written again)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.records import decode, encode, msg_id, subject, to_columns
from marketprism_dagster.sealing import seal_hour
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.writer.ingest import commit_batch, ensure_writer_tables
from tests.support.records import make_record

HOUR_MS = 3_600_000


async def _publish(settings: Any, records: list[Any]) -> list[StreamMessage]:
    nc = await connect(settings.nats.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        for r in records:
            await js.publish(subject(r), encode(r), headers={"Nats-Msg-Id": msg_id(r)})
        out = []
        for seq in range(1, len(records) + 1):
            m = await js.get_msg("MARKET_DATA", seq=seq)
            out.append(StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers))
        return out
    finally:
        await nc.drain()


async def _seal(settings: Any, hour: int) -> Any:
    nc = await connect(settings.nats.url)
    try:
        with open_store(settings) as store:
            return await seal_hour(store, settings, "trade", hour, nc.jetstream())
    finally:
        await nc.drain()


def test_the_seal_report_shows_the_rows_its_repair_wrote(nats_server, settings_factory) -> None:
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    now = int(time.time() * 1000)
    hour = now - now % HOUR_MS - 2 * HOUR_MS
    records = [msgspec.structs.replace(make_record("trade", k, now), timestamp=hour + 60_000 * k + 7)
               for k in range(10)]
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
    messages = asyncio.run(_publish(settings, records))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:4])
        commit_batch(store, settings, "MARKET_DATA", messages[7:])  # seqs 5-7 never committed
        # a writer that crashed mid-commit left one row of the gap in the table (seq 6)
        store.insert(settings.storage.hot_database, "trade", to_columns("trade", [decode(messages[5].data, "trade")]))

    report = asyncio.run(_seal(settings, hour))
    assert report.repaired_ranges == ["5-7"] and report.repaired_messages == 3 and report.repaired_rows == 2
    meta = report.metadata()
    assert meta["repaired_rows"] == 2 and meta["repaired_messages"] == 3 and meta["repaired_ranges"] == "5-7"
    assert report.rows == report.rows_raw == report.ledger_rows == 10 and report.committed_through == 10

    again = asyncio.run(_seal(settings, hour))  # nothing left to repair
    assert again.repaired_messages == 0 and again.repaired_rows == 0 and again.rows == 10
