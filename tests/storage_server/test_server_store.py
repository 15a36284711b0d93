"""ServerStore (clickhouse-connect over HTTP) against the real ClickHouse engine behind the chDB HTTP shim.

The same behaviours as the embedded store's tests (tests/foundation/test_records_storage.py),
through the server backend: schema, exact decimals, dedup tokens, hot/cold parity, errors and
an unreachable server.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from marketprism_dagster import records
from marketprism_dagster.ledger.tables import INTENT_TABLE, LEDGER_TABLE
from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES
from marketprism_dagster.storage import StoreUnavailable, init_schema, open_store
from marketprism_dagster.storage.columns import ch_type, records_to_arrow
from marketprism_dagster.storage.schema import data_tables
from marketprism_dagster.storage.server import ServerStore
from tests.support.schema_contract import assert_hot_and_cold_columns_match_records, assert_replacing_merge_trees

TINY = "0.000000000000000001"
HUGE = "123456789012.123456789012345678"


def _now() -> int:
    return int(time.time() * 1000)


def test_init_schema_creates_16_tables_the_ledger_and_intent_and_is_idempotent(clickhouse_http, server_settings):
    st = server_settings.storage
    with open_store(server_settings) as store:
        first = init_schema(store, server_settings)
        assert sorted(first.created) == sorted(
            [f"database {d}" for d in (st.hot_database, st.cold_database, st.ledger_database)]
            + [f"table {d}.{t}" for d, t, _ in data_tables(server_settings)]
            + [f"table {st.ledger_database}.{LEDGER_TABLE}", f"table {st.ledger_database}.{INTENT_TABLE}"]
        )
        assert first.verified == []
        assert store.tables(st.hot_database) == sorted(DATA_TYPES)
        assert store.tables(st.cold_database) == sorted(DATA_TYPES)
        assert store.tables(st.ledger_database) == sorted([LEDGER_TABLE, INTENT_TABLE])

        second = init_schema(store, server_settings)
        assert second.created == []
        assert sorted(second.verified) == sorted(first.created)
        assert len([n for n in second.verified if n.startswith("table ")]) == 2 * len(DATA_TYPES) + 2


# types carrying decimals (source_gap carries none: tests/collector/test_source_gap_record.py)
@pytest.mark.parametrize("data_type", [t for t in DATA_TYPES if t != "source_gap"])
def test_record_round_trips_through_the_server_with_exact_decimals(
    server_store, server_settings, record_factory, data_type
):
    hot = server_settings.storage.hot_database
    now = _now()
    original = [
        record_factory(data_type, 1, now, price=HUGE, quantity=TINY),
        record_factory(data_type, 2, now, price=TINY, quantity=HUGE),
    ]
    decoded = [records.decode(records.encode(r)) for r in original]
    assert decoded == original

    assert server_store.insert(hot, data_type, records.to_columns(data_type, decoded)) == 2
    rt = RECORD_TYPES[data_type]
    order = ", ".join(rt.identity)
    decimal_cols = [c.name for c in rt.columns if ch_type(c).startswith(("Decimal", "Nullable(Decimal"))]
    if decimal_cols:
        rows = server_store.query_rows(
            f"SELECT {', '.join(f'toString({c})' for c in decimal_cols)} FROM {hot}.{data_type} ORDER BY {order}"
        )
        expected = [tuple(getattr(r, c) for c in decimal_cols) for r in original]
    else:  # the book's decimals live in its levels
        rows = server_store.query_rows(
            f"SELECT toString(bids[1].1), toString(bids[1].2) FROM {hot}.{data_type} ORDER BY {order}"
        )
        expected = [(r.bids[0][0], r.bids[0][1]) for r in original]
    assert rows == expected
    assert TINY in {v for row in rows for v in row} and HUGE in {v for row in rows for v in row}

    ts = server_store.query_rows(
        f"SELECT toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(received_at) "
        f"FROM {hot}.{data_type} ORDER BY {order}"
    )
    assert ts == [(r.timestamp, r.received_at) for r in original]


def test_query_arrow_returns_typed_decimals_and_utc_times(server_store, server_settings, record_factory):
    hot = server_settings.storage.hot_database
    now = _now()
    server_store.insert(hot, "trade", records.to_columns("trade", [record_factory("trade", 1, now, price=HUGE)]))
    table = server_store.query_arrow(f"SELECT price, timestamp, symbol FROM {hot}.trade")
    assert table.schema.field("price").type == pa.decimal128(38, 18)
    assert pa.types.is_timestamp(table.schema.field("timestamp").type)
    assert str(table.column("price")[0].as_py()) == HUGE
    assert table.column("symbol").to_pylist() == ["BTC-USDT"]


def test_orderbook_levels_keep_order_and_exact_values(server_store, server_settings, record_factory):
    hot = server_settings.storage.hot_database
    book = record_factory("orderbook", 7, _now(), price=HUGE, quantity=TINY)
    server_store.insert(hot, "orderbook", records.to_columns("orderbook", [book]))
    bids = server_store.query_value(
        f"SELECT arrayMap(x -> (toString(x.price), toString(x.quantity)), bids) FROM {hot}.orderbook"
    )
    assert [tuple(b.values()) if isinstance(b, dict) else tuple(b) for b in bids] == [(HUGE, TINY), ("100.4", "1")]


def test_insert_same_batch_twice_with_token_leaves_one_copy(server_store, server_settings, record_factory):
    hot = server_settings.storage.hot_database
    now = _now()
    batch = records.to_columns("trade", [record_factory("trade", i, now) for i in range(50)])
    server_store.insert(hot, "trade", batch, dedup_token="MARKET_DATA:1-50:trade")
    server_store.insert(hot, "trade", batch, dedup_token="MARKET_DATA:1-50:trade")
    assert server_store.query_value(f"SELECT count() FROM {hot}.trade") == 50
    # a different token is a different insert: proves the token, not luck, dropped the retry
    server_store.insert(hot, "trade", batch, dedup_token="MARKET_DATA:51-100:trade")
    assert server_store.query_value(f"SELECT count() FROM {hot}.trade") == 100


def test_insert_arrow_table_with_token_twice_leaves_one_copy(server_store, server_settings, record_factory):
    cold = server_settings.storage.cold_database
    now = _now()
    table = records_to_arrow("funding_rate", [record_factory("funding_rate", i, now) for i in range(5)])
    assert server_store.insert_arrow_table(cold, "funding_rate", table, dedup_token="replicate:day:1") == 5
    assert server_store.insert_arrow_table(cold, "funding_rate", table, dedup_token="replicate:day:1") == 5
    assert server_store.query_value(f"SELECT count() FROM {cold}.funding_rate") == 5


def test_hot_and_cold_tables_have_identical_columns(server_store, server_settings):
    st = server_settings.storage
    assert_hot_and_cold_columns_match_records(server_store, st.hot_database, st.cold_database)


def test_tables_are_replacing_merge_trees_with_daily_partitions_and_ttls(server_store, server_settings):
    st = server_settings.storage
    ttls = ((st.hot_database, st.hot_ttl_days), (st.cold_database, st.cold_ttl_days))
    assert_replacing_merge_trees(server_store, ttls)


def test_server_errors_carry_the_clickhouse_exception_text(server_store):
    with pytest.raises(DatabaseError) as err:
        server_store.query_rows("SELECT * FROM no_such_db.no_such_table")
    assert err.value.code == 81
    assert "UNKNOWN_DATABASE" in str(err.value)
    with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
        server_store.execute("CREATE TABEL nothing")
    # the store still serves after errors
    assert server_store.query_value("SELECT 41 + 1") == 42


def test_store_unavailable_names_the_url_when_the_server_goes_down(
    own_clickhouse_http, server_settings_factory, record_factory
):
    settings = server_settings_factory(own_clickhouse_http.url)
    store = open_store(settings)
    init_schema(store, settings)
    hot = settings.storage.hot_database
    batch = records.to_columns("trade", [record_factory("trade", 1, _now())])
    assert store.insert(hot, "trade", batch) == 1

    own_clickhouse_http.stop()

    with pytest.raises(StoreUnavailable, match=f"ClickHouse server at {own_clickhouse_http.url} "):
        store.query_value(f"SELECT count() FROM {hot}.trade")
    with pytest.raises(StoreUnavailable, match=f"ClickHouse server at {own_clickhouse_http.url} "):
        store.insert(hot, "trade", batch)
    with pytest.raises(StoreUnavailable, match=f"ClickHouse server at {own_clickhouse_http.url} "):
        store.execute("SELECT 1")
    with pytest.raises(StoreUnavailable, match=f"ClickHouse server at {own_clickhouse_http.url} did not answer"):
        ServerStore(own_clickhouse_http.url)
    store.close()


def test_one_store_serves_several_threads_at_once(server_store, server_settings, record_factory):
    hot = server_settings.storage.hot_database
    now = _now()

    def work(worker: int) -> list[int]:
        batch = records.to_columns("trade", [record_factory("trade", worker * 100 + i, now) for i in range(10)])
        server_store.insert(hot, "trade", batch, dedup_token=f"worker-{worker}")
        return [server_store.query_value(f"SELECT {worker} * 1000 + {j}") for j in range(10)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert results == [[w * 1000 + j for j in range(10)] for w in range(4)]
    assert server_store.query_value(f"SELECT count() FROM {hot}.trade") == 40
