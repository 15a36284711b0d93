"""The seal's repair write is visible as such: the gap it filled, the messages it re-read from JetStream
and the rows it actually inserted (a row already in the table is not written again)."""

from __future__ import annotations

import asyncio

from marketprism_dagster.records import decode, to_columns
from marketprism_dagster.storage import open_store
from marketprism_dagster.writer.ingest import commit_batch
from tests.support.hour_setup import hour_start_ms, prepare_store, publish_and_read, records_in_hour
from tests.support.seal_helpers import seal_now


def test_the_seal_report_shows_the_rows_its_repair_wrote(nats_server, settings_factory) -> None:
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    hour = hour_start_ms(2)
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("trade", hour, 10)))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:4])
        commit_batch(store, settings, "MARKET_DATA", messages[7:])  # seqs 5-7 never committed
        # a writer that crashed mid-commit left one row of the gap in the table (seq 6)
        store.insert(settings.storage.hot_database, "trade", to_columns("trade", [decode(messages[5].data, "trade")]))

    report = asyncio.run(seal_now(settings, "trade", hour))
    assert report.repaired_ranges == ["5-7"] and report.repaired_messages == 3 and report.repaired_rows == 2
    meta = report.metadata()
    assert meta["repaired_rows"] == 2 and meta["repaired_messages"] == 3 and meta["repaired_ranges"] == "5-7"
    assert report.rows == report.rows_raw == report.ledger_rows == 10 and report.committed_through == 10

    again = asyncio.run(seal_now(settings, "trade", hour))  # nothing left to repair
    assert again.repaired_messages == 0 and again.repaired_rows == 0 and again.rows == 10
