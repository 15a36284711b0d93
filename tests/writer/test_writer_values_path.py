"""Small ranges land through INSERT ... VALUES, large ones through Arrow: both store identical rows."""

from __future__ import annotations

import time

import pytest

from marketprism_dagster import records
from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES
from marketprism_dagster.storage.sql import values_rows
from marketprism_dagster.writer.ingest import (
    VALUES_MAX_ROWS,
    StreamMessage,
    commit_prepared,
    ensure_writer_tables,
    prepare_batch,
)

PRICES = ("0.000000000000000001", "123456789012.123456789012345678", "-5", "100.5")
SHARES = ("0.000000000000000001", "0.999999999999999999", "0.5", "1")  # long/short shares must lie in 0..1


def _batch(make_record, data_type: str, rows: int, now: int) -> list[StreamMessage]:
    out = []
    for i in range(rows):
        price = PRICES[i % len(PRICES)] if data_type != "orderbook" else "100.5"
        sizes = SHARES if data_type.startswith("lsr_") else PRICES  # the factory puts the size in a share column
        r = make_record(data_type, i, now, price=price.lstrip("-"), quantity=sizes[(i + 1) % len(sizes)].lstrip("-"))
        out.append(StreamMessage(i + 1, records.subject(r), records.encode(r)))
    return out


def _rows(store, database: str, data_type: str) -> list[tuple]:
    order = ", ".join(f"`{c}`" for c in RECORD_TYPES[data_type].identity)
    return store.query_rows(f"SELECT * FROM `{database}`.`{data_type}` ORDER BY {order}")


@pytest.mark.parametrize("data_type", DATA_TYPES)
def test_a_small_range_stores_exactly_what_the_arrow_path_stores(store, settings_factory, record_factory, data_type):
    settings = settings_factory()
    ensure_writer_tables(store, settings)
    now = int(time.time() * 1000)
    batch = prepare_batch("S", _batch(record_factory, data_type, 12, now))
    tb = batch.tables[data_type]
    assert not batch.poison
    writes_values = values_rows(tb.table) is not None
    assert writes_values == (data_type != "orderbook")  # order book levels always go through Arrow
    commit_prepared(store, settings, batch)
    store.insert("marketprism_cold", data_type, records.to_columns(data_type, tb.records))  # the Arrow path
    hot, cold = _rows(store, "marketprism_hot", data_type), _rows(store, "marketprism_cold", data_type)
    assert len(hot) == 12 and hot == cold
    commit_prepared(store, settings, batch)  # a retried commit: the token drops the copy
    assert len(_rows(store, "marketprism_hot", data_type)) == 12


def test_a_range_over_the_values_limit_lands_whole_through_arrow(store, settings_factory, record_factory):
    settings = settings_factory()
    ensure_writer_tables(store, settings)
    batch = prepare_batch("S", _batch(record_factory, "trade", VALUES_MAX_ROWS + 1, int(time.time() * 1000)))
    assert batch.tables["trade"].table.num_rows > VALUES_MAX_ROWS
    commit_prepared(store, settings, batch)
    assert len(_rows(store, "marketprism_hot", "trade")) == VALUES_MAX_ROWS + 1
