"""A range is committed with as few store statements and calls as the exactly-once argument allows."""

from __future__ import annotations

import time
from typing import Any

import pytest

from marketprism_dagster import records
from marketprism_dagster.storage.base import ArrowInsert
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.ingest import StreamMessage, commit_prepared, ensure_writer_tables, prepare_batch


class CountingSession:
    """The real chDB session, counting the calls the store makes on it."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.calls: list[str] = []

    def query(self, sql: str, *args: Any) -> Any:
        self.calls.append(sql)
        return self.session.query(sql, *args)


def _messages(make_record, now: int) -> list[StreamMessage]:
    recs = [make_record("trade", i, now) for i in range(5)] + [make_record("funding_rate", i, now) for i in range(2)]
    recs += [make_record("orderbook", i, now) for i in range(2)]  # levels: the Arrow path
    return [StreamMessage(i + 1, records.subject(r), records.encode(r)) for i, r in enumerate(recs)]


def test_a_commit_of_three_tables_is_one_chdb_call_with_the_intent_first_and_the_ledger_last(
        store: EmbeddedStore, settings_factory, record_factory) -> None:
    settings = settings_factory()
    ensure_writer_tables(store, settings)
    batch = prepare_batch("MARKET_DATA", _messages(record_factory, int(time.time() * 1000)))
    assert sorted(batch.tables) == ["funding_rate", "orderbook", "trade"]
    with store.hold():
        with store.operation():
            spy = CountingSession(store._session)
            store._session = spy
        commit_prepared(store, settings, batch)
        store._session = spy.session
    assert len(spy.calls) == 1
    statements = spy.calls[0].split(";\n")
    assert len(statements) == 5
    assert "ingest_intent" in statements[0] and "ingest_ledger" in statements[-1]
    counts = {t: store.query_value(f"SELECT count() FROM marketprism_hot.{t}") for t in batch.tables}
    assert counts == {"trade": 5, "funding_rate": 2, "orderbook": 2}
    assert store.query_value("SELECT count() FROM marketprism_meta.ingest_ledger WHERE data_type = '*'") == 1


def test_statements_of_one_call_stop_at_the_first_that_fails(store: EmbeddedStore) -> None:
    import pyarrow as pa

    store.execute("CREATE DATABASE IF NOT EXISTS t")
    for name in ("a", "b", "c"):
        store.execute(f"CREATE TABLE t.{name} (k UInt64, v String) ENGINE = MergeTree ORDER BY k")
    good = pa.table({"k": pa.array([1, 2], pa.uint64()), "v": ["x;y", "it's"]})
    with pytest.raises(Exception, match="UInt64"):
        store.run_statements([ArrowInsert("t", "a", good, "tok-a"), "INSERT INTO t.b VALUES ('not a number', 'z')",
                              "INSERT INTO t.c VALUES (3, 'never')"])
    assert store.query_rows("SELECT k, v FROM t.a ORDER BY k") == [(1, "x;y"), (2, "it's")]
    assert store.query_value("SELECT count() FROM t.b") == 0
    assert store.query_value("SELECT count() FROM t.c") == 0


def test_init_schema_gives_the_writer_tables_their_settings_once(store: EmbeddedStore, settings_factory) -> None:
    from marketprism_dagster.storage.schema import WRITER_TABLE_SETTINGS, apply_writer_table_settings

    settings = settings_factory()
    ensure_writer_tables(store, settings)
    wanted = [f"{k} = {v}" for k, v in WRITER_TABLE_SETTINGS.items()]
    engines = dict(store.query_rows("SELECT concat(database, '.', name), engine_full FROM system.tables "
                                    "WHERE database IN ('marketprism_hot', 'marketprism_meta')"))
    for table in ("marketprism_hot.trade", "marketprism_hot.orderbook", "marketprism_meta.ingest_ledger"):
        assert all(w in engines[table] for w in wanted), engines[table]
    assert "merge_tree_clear_old_parts_interval_seconds" not in engines.get("marketprism_meta.stream_epochs", "")
    store.execute("ALTER TABLE marketprism_hot.trade RESET SETTING merge_tree_clear_old_parts_interval_seconds")
    assert apply_writer_table_settings(store, settings) == ["marketprism_hot.trade"]
    assert apply_writer_table_settings(store, settings) == []


def test_the_writer_tables_are_ensured_in_one_open_of_the_store(store: EmbeddedStore, settings_factory) -> None:
    """Each open of an embedded store keeps engine memory and threads for the life of the process
    (storage/embedded.py): its half-dozen statements share one session."""
    opens = store.opens
    ensure_writer_tables(store, settings_factory())
    assert store.opens == opens + 1
