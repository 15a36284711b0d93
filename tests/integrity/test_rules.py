"""The seeds' integrity rules over a real chDB store: each fails on missing data and passes on present data."""

from __future__ import annotations

import time

import msgspec

from marketprism_dagster import integrity
from marketprism_dagster.collector.health import feed_status_from_health
from marketprism_dagster.ledger.lost import Marker
from marketprism_dagster.ledger.queries import write_markers
from marketprism_dagster.records import DATA_TYPES, VENUE_TYPES, encode, subject
from marketprism_dagster.storage.columns import records_to_arrow
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch, ensure_writer_tables

NOW = (int(time.time()) // 60) * 60_000  # hot TTL counts from received_at: keep data recent


def _insert(store, settings, data_type, records, db=None):
    store.insert(db or settings.storage.hot_database, data_type, records_to_arrow(data_type, records))


def _at(record_factory, data_type, i, ts):
    return msgspec.structs.replace(record_factory(data_type, i, NOW), timestamp=ts)


def test_each_window_rule_fails_without_rows_and_passes_with_a_row_inside_its_window(
    store, settings_factory, record_factory
):
    settings = settings_factory()
    for data_type in VENUE_TYPES:  # source_gap rows are exceptions: test_source_gap_record.py
        window_ms = settings.window_rules[data_type].window_s * 1000
        assert not integrity.window_presence(store, settings, data_type, now=NOW).passed, data_type
        _insert(store, settings, data_type, [_at(record_factory, data_type, 1, NOW - window_ms - 1000)])
        outside = integrity.window_presence(store, settings, data_type, now=NOW)
        assert not outside.passed and outside.metadata["rows_in_window"] == 0, data_type
        _insert(store, settings, data_type, [_at(record_factory, data_type, 2, NOW - window_ms // 2)])
        inside = integrity.window_presence(store, settings, data_type, now=NOW)
        assert inside.passed and inside.metadata["rows_in_window"] == 1, data_type


def test_window_lengths_are_the_seeds_values(settings_factory):
    rules = settings_factory().window_rules
    assert rules["trade"].window_s == rules["orderbook"].window_s == 300
    assert rules["liquidation"].window_s == 3600
    assert {rules[t].window_s for t in DATA_TYPES if t not in ("trade", "orderbook", "liquidation")} == {8 * 3600}


def test_empty_liquidation_window_passes_only_while_feeds_are_healthy_and_says_so(store, settings_factory):
    settings = settings_factory()
    healthy = feed_status_from_health(
        {
            "coverage": {
                "liquidation": {"binance_derivatives": {"status": "healthy"}, "okx_derivatives": {"status": "ok"}}
            }
        },
        "liquidation",
    )
    down = feed_status_from_health(
        {"coverage": {"liquidation": {"binance_derivatives": {"status": "unhealthy"}}}}, "liquidation"
    )
    ok = integrity.window_presence(store, settings, "liquidation", now=NOW, feeds=healthy)
    assert ok.passed and "feeds healthy" in ok.description and "binance_derivatives=healthy" in ok.description
    bad = integrity.window_presence(store, settings, "liquidation", now=NOW, feeds=down)
    assert not bad.passed and "binance_derivatives=unhealthy" in bad.description
    assert not integrity.window_presence(store, settings, "liquidation", now=NOW, feeds=None).passed
    # the health probe of a collector that does not answer vouches for nothing
    assert integrity.collector_feed_status(settings_factory(collector__health_port=1), "liquidation") is None


def test_data_lag_warns_then_errors_by_thresholds(store, settings_factory, record_factory):
    settings = settings_factory()
    rule = settings.window_rules["trade"]
    assert integrity.data_lag(store, settings, "trade", now=NOW).severity == "ERROR"
    _insert(store, settings, "trade", [_at(record_factory, "trade", 1, NOW - 10_000)])
    fresh = integrity.data_lag(store, settings, "trade", now=NOW)
    assert fresh.passed and fresh.metadata["lag_s"] == 10.0
    warn = integrity.data_lag(store, settings, "trade", now=NOW + rule.lag_warn_s * 1000)
    assert not warn.passed and warn.severity == "WARN"
    err = integrity.data_lag(store, settings, "trade", now=NOW + rule.lag_error_s * 1000)
    assert not err.passed and err.severity == "ERROR"


def test_duplicates_by_identity_must_be_zero(store, settings_factory, record_factory):
    settings = settings_factory()
    recs = [record_factory("trade", i, NOW) for i in range(5)]
    _insert(store, settings, "trade", recs)
    assert integrity.duplicates(store, settings, "trade").passed
    _insert(store, settings, "trade", recs[:2])  # no token: a second copy of two identities
    dup = integrity.duplicates(store, settings, "trade")
    assert not dup.passed
    assert dup.metadata["duplicate_identities"] == 2 and dup.metadata["extra_rows"] == 2


def _messages(record_factory, first_seq, n):
    out = []
    for k in range(n):
        r = record_factory("trade", first_seq + k, NOW)
        out.append(StreamMessage(seq=first_seq + k, subject=subject(r), data=encode(r), headers=None))
    return out


def test_ledger_gaps_found_between_committed_ranges(store, settings_factory, record_factory):
    settings = settings_factory()
    ensure_writer_tables(store, settings)
    assert integrity.ledger_gaps(store, settings, "MARKET_DATA").passed
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 1, 3))
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 4, 2))
    assert integrity.ledger_gaps(store, settings, "MARKET_DATA").metadata["last_seq"] == 5
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 9, 2))
    res = integrity.ledger_gaps(store, settings, "MARKET_DATA")
    assert not res.passed
    assert res.metadata["gaps"] == 1 and res.metadata["missing_messages"] == 3 and res.metadata["gap_ranges"] == ["6-8"]


def test_ledger_gaps_fails_on_absent_messages_and_lists_lost_ranges_a_marker_accounts_for(
    store, settings_factory, record_factory
):
    settings = settings_factory()
    ensure_writer_tables(store, settings)
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 1, 3))
    # the writer found 4-5 gone: it committed 4-7 holding 6-7 only
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 6, 2), first_seq=4, last_seq=7)
    commit_batch(store, settings, "MARKET_DATA", _messages(record_factory, 11, 2))  # 8-10 never committed
    res = integrity.ledger_gaps(store, settings, "MARKET_DATA")
    assert not res.passed and res.metadata["gap_ranges"] == ["8-10"]
    write_markers(store, settings, [Marker("MARKET_DATA", 8, 10, 3, "trade", 0, 0, 0)], 0)
    res = integrity.ledger_gaps(store, settings, "MARKET_DATA")
    assert not res.passed and res.metadata["gaps"] == 0 and res.metadata["absent_ranges"] == ["4-7 (2 lost)"]
    assert "2 messages were no longer in JetStream" in res.description
    write_markers(store, settings, [Marker("MARKET_DATA", 4, 7, 2, "trade", 0, 0, 0)], 0)
    res = integrity.ledger_gaps(store, settings, "MARKET_DATA")
    assert res.passed and res.metadata["lost_accounted"] == ["8-10", "4-7 (2 absent)"]
    assert "lost and refilled from venue history: 8-10, 4-7 (2 absent)" in res.description


def test_schema_parity_detects_a_drifted_cold_table(store, settings_factory):
    settings = settings_factory()
    assert all(integrity.schema_parity(store, settings, t).passed for t in DATA_TYPES)
    store.execute(f"ALTER TABLE `{settings.storage.cold_database}`.`trade` ADD COLUMN extra String")
    res = integrity.schema_parity(store, settings, "trade")
    assert not res.passed and "extra String" in res.description


def test_hot_cold_lag_warns_over_an_hour_of_replicable_data(store, settings_factory, record_factory):
    settings = settings_factory()
    day = NOW - NOW % 86_400_000
    horizon = day  # everything before today is replicable
    _insert(store, settings, "trade", [_at(record_factory, "trade", 1, day - 1000)])
    lag = integrity.hot_cold_lag(store, settings, "trade", horizon_ms=horizon)
    assert not lag.passed and lag.severity == "WARN"
    _insert(store, settings, "trade", [_at(record_factory, "trade", 1, day - 1000)], db=settings.storage.cold_database)
    assert integrity.hot_cold_lag(store, settings, "trade", horizon_ms=horizon).passed
    _insert(store, settings, "trade", [_at(record_factory, "trade", 2, day - 10)])
    assert integrity.hot_cold_lag(store, settings, "trade", horizon_ms=horizon).passed  # 1 s behind


def test_all_passed_ignores_warnings_only():
    ok = integrity.CheckResult("a", "t", True, "ERROR", "")
    warn = integrity.CheckResult("b", "t", False, "WARN", "")
    err = integrity.CheckResult("c", "t", False, "ERROR", "")
    assert integrity.all_passed([ok, warn]) and not integrity.all_passed([ok, err])
