"""replicate_day: idempotent partition replace, verified by count and content checksum."""

from __future__ import annotations

import time

import msgspec

from marketprism_dagster import integrity
from marketprism_dagster.replication import replicate_day
from marketprism_dagster.storage.columns import records_to_arrow

DAY = (int(time.time()) // 86_400 - 1) * 86_400_000  # yesterday, UTC: inside the hot TTL


def _rows(record_factory, data_type, n, start=0):
    return [
        msgspec.structs.replace(record_factory(data_type, start + i, DAY), timestamp=DAY + 1000 * (start + i))
        for i in range(n)
    ]


def test_replicated_day_matches_hot_and_a_rerun_never_duplicates(store, settings_factory, record_factory):
    settings = settings_factory()
    hot, cold = settings.storage.hot_database, settings.storage.cold_database
    store.insert(hot, "trade", records_to_arrow("trade", _rows(record_factory, "trade", 50)))
    # a row of the next day stays out of this day's partition
    nxt = msgspec.structs.replace(record_factory("trade", 999, DAY), timestamp=DAY + 86_400_000 + 5)
    store.insert(hot, "trade", records_to_arrow("trade", [nxt]))
    report = replicate_day(store, settings, "trade", DAY, sleep=lambda s: None)
    assert report.rows == 50 and report.attempts == 1 and report.mode == "insert-select"
    assert integrity.hot_cold_parity(store, settings, "trade", DAY).passed
    replicate_day(store, settings, "trade", DAY, sleep=lambda s: None)
    assert store.query_value(f"SELECT count() FROM {cold}.trade") == 50
    assert integrity.duplicates(store, settings, "trade", database=cold).passed


def test_parity_fails_when_hot_changes_and_replication_repairs_it(store, settings_factory, record_factory):
    settings = settings_factory()
    hot = settings.storage.hot_database
    store.insert(hot, "funding_rate", records_to_arrow("funding_rate", _rows(record_factory, "funding_rate", 10)))
    replicate_day(store, settings, "funding_rate", DAY, sleep=lambda s: None)
    store.insert(hot, "funding_rate", records_to_arrow("funding_rate", _rows(record_factory, "funding_rate", 3, 10)))
    stale = integrity.hot_cold_parity(store, settings, "funding_rate", DAY)
    assert not stale.passed and stale.metadata["hot_rows"] == 13 and stale.metadata["cold_rows"] == 10
    replicate_day(store, settings, "funding_rate", DAY, sleep=lambda s: None)
    assert integrity.hot_cold_parity(store, settings, "funding_rate", DAY).passed


def test_checksum_catches_same_count_different_content(store, settings_factory, record_factory):
    settings = settings_factory()
    hot, cold = settings.storage.hot_database, settings.storage.cold_database
    rows = _rows(record_factory, "trade", 5)
    store.insert(hot, "trade", records_to_arrow("trade", rows))
    altered = [msgspec.structs.replace(rows[0], price="1.5"), *rows[1:]]
    store.insert(cold, "trade", records_to_arrow("trade", altered))
    res = integrity.hot_cold_parity(store, settings, "trade", DAY)
    assert not res.passed and res.metadata["hot_rows"] == res.metadata["cold_rows"] == 5
