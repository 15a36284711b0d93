"""A range the writer committed without messages JetStream no longer held (``writer.messages_expired_before_commit``:
the ledger has no gap, its ``'*'`` row counts fewer messages than it spans) is a loss the seal names: real
nats-server and chDB. Before the ledger markers such an hour sealed as if complete."""

from __future__ import annotations

import asyncio

from marketprism_dagster.ledger.lost import Marker
from marketprism_dagster.ledger.queries import write_markers
from marketprism_dagster.records import decode, to_columns
from marketprism_dagster.sealing import SealRefused, SealReport, seal_hours
from marketprism_dagster.storage import open_store
from marketprism_dagster.writer.ingest import commit_batch
from tests.support.hour_setup import HOUR_MS, hour_start_ms, prepare_store, publish_and_read, records_in_hour
from tests.support.seal_helpers import seal_at_close

TYPES = ["trade", "liquidation"]


def test_a_range_committed_without_lost_messages_refuses_until_a_marker_accounts_for_it(
    nats_server, settings_factory
) -> None:
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    hour = hour_start_ms(3)
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("trade", hour, 10)))
    with open_store(settings) as store:  # as the writer commits 1-10 when seqs 4-6 were gone when it got there
        commit_batch(store, settings, "MARKET_DATA", messages[:3] + messages[6:], first_seq=1, last_seq=10)

    first = asyncio.run(seal_at_close(settings, TYPES, hour))
    for t in TYPES:
        refused = first[t]
        assert isinstance(refused, SealRefused) and refused.aged_out, refused
        assert "committed MARKET_DATA seq 1-10 without 3 messages" in str(refused)
        assert [(x.first, x.last, x.missing) for x in refused.lost] == [(1, 10, 3)]

    # what hour_refill writes once the hour's trades are whole again (here: the 7 the table holds)
    with open_store(settings) as store:
        write_markers(store, settings, [Marker("MARKET_DATA", 1, 10, 3, "trade", hour, 0, 7, "test")], 0)
        write_markers(store, settings, [Marker("MARKET_DATA", 1, 10, 3, "trade", hour, 0, 7, "test")], 0)  # once
        assert store.query_value("SELECT count() FROM marketprism_meta.ingest_lost") == 1
    marked = asyncio.run(seal_at_close(settings, TYPES, hour))
    trade = marked["trade"]
    assert isinstance(trade, SealReport), trade
    meta = trade.metadata()
    assert meta["lost_ranges"] == ("MARKET_DATA seq 1-10: 3 messages lost from the stream, hour replaced from venue "
                                   "history (+0 refilled, 7 already held)")
    assert meta["source"] == "gaps_repaired" and trade.rows == trade.ledger_rows == 7
    assert isinstance(marked["liquidation"], SealRefused) and marked["liquidation"].aged_out  # no marker of its own

    # a commit that inserted a lost message's row before it crashed: one row per lost message is allowed
    with open_store(settings) as store:
        store.insert(settings.storage.hot_database, "trade", to_columns("trade", [decode(messages[4].data, "trade")]))
    orphan = asyncio.run(seal_at_close(settings, TYPES, hour))["trade"]
    assert isinstance(orphan, SealReport) and orphan.unledgered_rows == 1 and orphan.rows_raw == 8
    with open_store(settings) as store:  # three more than the lost messages could have carried
        extra = [decode(m.data, "trade") for m in messages[3:6]]
        store.insert(settings.storage.hot_database, "trade", to_columns("trade", extra))
    outside = asyncio.run(seal_at_close(settings, TYPES, hour))["trade"]
    assert isinstance(outside, SealRefused) and "accounts for 7 and 3 lost messages" in str(outside)

    # an hour that starts after the lost messages were stored (the commit, now, plus the skew) seals as usual
    later = asyncio.run(seal_at_close(settings, TYPES, hour_start_ms(-2)))
    assert all(isinstance(r, SealReport) for r in later.values()), later


def test_without_jetstream_a_gap_a_marker_names_is_lost_and_any_other_gap_refuses(
    nats_server, settings_factory
) -> None:
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    hour = hour_start_ms(3)
    now = hour + HOUR_MS + settings.seal.grace_s * 1000 + 1000
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("trade", hour, 10)))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:3])
        commit_batch(store, settings, "MARKET_DATA", messages[6:])  # 4-6 never committed
        before = asyncio.run(seal_hours(store, settings, TYPES, hour, None, now=now))
        assert all(isinstance(r, SealRefused) and "no JetStream connection" in str(r) for r in before.values())
        write_markers(store, settings, [Marker("MARKET_DATA", 4, 6, 3, "trade", hour, 3, 7, "test")], 0)
        after = asyncio.run(seal_hours(store, settings, TYPES, hour, None, now=now))
    trade, liquidation = after["trade"], after["liquidation"]
    assert isinstance(trade, SealReport) and trade.proof == "ledger+venue_history" and trade.rows == 7, trade
    assert isinstance(liquidation, SealRefused) and "MARKET_DATA seq 4 is no longer in JetStream" in str(liquidation)
