"""Records round-trip wire JSON -> ClickHouse (real chDB) -> SELECT with exact decimals."""

from __future__ import annotations

import time

import polars as pl
import pytest

from marketprism_dagster import records
from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES
from marketprism_dagster.storage.columns import ch_type, records_to_arrow
from marketprism_dagster.storage.schema import data_tables
from tests.support.schema_contract import assert_hot_and_cold_columns_match_records, assert_replacing_merge_trees

TINY = "0.000000000000000001"
HUGE = "123456789012.123456789012345678"


def _now() -> int:
    return int(time.time() * 1000)


# types carrying decimals (source_gap carries none: tests/collector/test_source_gap_record.py)
@pytest.mark.parametrize("data_type", [t for t in DATA_TYPES if t != "source_gap"])
def test_record_round_trips_json_insert_select_with_exact_decimals(store, record_factory, data_type):
    now = _now()
    original = [
        record_factory(data_type, 1, now, price=HUGE, quantity=TINY),
        record_factory(data_type, 2, now, price=TINY, quantity=HUGE),
    ]
    wire = [records.encode(r) for r in original]
    decoded = [records.decode(w) for w in wire]
    assert decoded == original
    assert [records.decode(w, data_type) for w in wire] == original

    assert store.insert("marketprism_hot", data_type, records.to_columns(data_type, decoded)) == 2
    rt = RECORD_TYPES[data_type]
    decimal_cols = [c.name for c in rt.columns if ch_type(c).startswith(("Decimal", "Nullable(Decimal"))]
    order = ", ".join(rt.identity)
    if decimal_cols:
        rows = store.query_rows(
            f"SELECT {', '.join(f'toString({c})' for c in decimal_cols)} "
            f"FROM marketprism_hot.{data_type} ORDER BY {order}"
        )
    else:  # the book's decimals live in its levels
        rows = store.query_rows(
            f"SELECT toString(bids[1].1), toString(bids[1].2) FROM marketprism_hot.{data_type} ORDER BY {order}"
        )
        decimal_cols = ["bids"]
    # the sample values carry no trailing zeros, so ClickHouse's text equals the wire text exactly
    expected = [
        tuple(getattr(r, c) for c in decimal_cols) if decimal_cols != ["bids"] else (r.bids[0][0], r.bids[0][1])
        for r in original
    ]
    assert rows == expected
    assert TINY in {v for row in rows for v in row} and HUGE in {v for row in rows for v in row}

    # event time and receive time are separate columns, stored to the millisecond
    ts = store.query_rows(
        f"SELECT toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(received_at) "
        f"FROM marketprism_hot.{data_type} ORDER BY {order}"
    )
    assert ts == [(r.timestamp, r.received_at) for r in original]


def test_orderbook_levels_keep_order_and_exact_values(store, record_factory):
    book = record_factory("orderbook", 7, _now(), price=HUGE, quantity=TINY)
    store.insert("marketprism_hot", "orderbook", records.to_columns("orderbook", [book]))
    bids = store.query_value(
        "SELECT arrayMap(x -> (toString(x.price), toString(x.quantity)), bids) FROM marketprism_hot.orderbook"
    )
    assert [tuple(b.values()) if isinstance(b, dict) else tuple(b) for b in bids] == [(HUGE, TINY), ("100.4", "1")]


def test_insert_same_batch_twice_with_token_leaves_one_copy(store, record_factory):
    now = _now()
    batch = records.to_columns("trade", [record_factory("trade", i, now) for i in range(50)])
    store.insert("marketprism_hot", "trade", batch, dedup_token="MARKET_DATA:1-50:trade")
    store.insert("marketprism_hot", "trade", batch, dedup_token="MARKET_DATA:1-50:trade")
    assert store.query_value("SELECT count() FROM marketprism_hot.trade") == 50
    # a different token is a different insert: proves the token, not luck, dropped the retry
    store.insert("marketprism_hot", "trade", batch, dedup_token="MARKET_DATA:51-100:trade")
    assert store.query_value("SELECT count() FROM marketprism_hot.trade") == 100


def test_polars_and_arrow_batches_are_accepted(store, record_factory):
    now = _now()
    recs = [record_factory("funding_rate", i, now) for i in range(3)]
    df = pl.DataFrame(records.to_columns("funding_rate", recs))
    assert store.insert("marketprism_hot", "funding_rate", df) == 3
    arrow = records_to_arrow("funding_rate", [record_factory("funding_rate", 10, now)])
    assert store.insert("marketprism_hot", "funding_rate", arrow) == 1
    assert store.query_value("SELECT count() FROM marketprism_hot.funding_rate") == 4


def test_hot_and_cold_tables_have_identical_columns(store, settings_factory):
    settings = settings_factory()
    tables = data_tables(settings)
    assert len(tables) == 2 * len(DATA_TYPES)
    assert_hot_and_cold_columns_match_records(store, settings.storage.hot_database, settings.storage.cold_database)


def test_tables_are_replacing_merge_trees_keyed_on_identity_with_daily_partitions_and_ttls(store):
    assert_replacing_merge_trees(store, (("marketprism_hot", 3), ("marketprism_cold", 3650)))


def test_subject_and_msg_id_derive_from_the_identity(record_factory):
    now = _now()
    t = record_factory("trade", 5, now)
    assert records.subject(t) == "trade.okx_spot.spot.BTC-USDT"
    assert records.msg_id(t) == "trade:okx_spot|BTC-USDT|10000005"
    dvol = record_factory("volatility_index", 1, now)
    assert records.subject(dvol) == "volatility_index.deribit_derivatives.options.BTC"
    # same identity, different payload -> same Msg-Id (a re-polled point is dropped by JetStream)
    a = record_factory("lsr_top_position", 3, now)
    b = record_factory("lsr_top_position", 3, now, price="9.99")
    assert a != b
    assert records.msg_id(a) == records.msg_id(b)


def test_msg_id_is_the_data_type_and_every_identity_value_in_order_for_every_type(record_factory):
    """The Msg-Id is JetStream's dedup key across collector versions: it must stay the same string."""
    now = _now()
    for data_type, rt in records.RECORD_TYPES.items():
        r = record_factory(data_type, 7, now)
        assert records.msg_id(r) == data_type + ":" + "|".join(str(getattr(r, n)) for n in rt.identity)
