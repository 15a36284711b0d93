"""The ``source_gap`` record type: declared like the others, stored by the same DDL, never required by a window."""

from __future__ import annotations

import time

import msgspec
import pytest
import yaml

from marketprism_dagster import integrity, records, validation
from marketprism_dagster.config import ConfigError, load_config
from marketprism_dagster.records import GAP_CAUSES, GAP_STATES, RECORD_TYPES, SourceGap
from marketprism_dagster.storage.columns import records_to_arrow

NOW = (int(time.time()) // 60) * 60_000  # hot TTL counts from received_at: keep data recent


def _gap(**changes: object) -> SourceGap:
    base = SourceGap(
        exchange="binance_derivatives",
        market_type="perpetual",
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        timestamp=NOW - 60_000,
        received_at=NOW,
        gap_data_type="trade",
        cause="trade_id_jump",
        end_time=NOW - 50_000,
        first_missing_id="1000",
        last_missing_id="1499",
        state="open",
        recovered=0,
        detail="500 trade ids missing",
    )
    return msgspec.structs.replace(base, **changes)


def test_the_same_gap_has_one_identity_and_a_later_state_is_another_row():
    opened = _gap()
    assert records.msg_id(opened) == records.msg_id(_gap(received_at=NOW + 5_000, detail="seen again"))
    repaired = _gap(state="repaired", recovered=500)
    assert records.msg_id(repaired) != records.msg_id(opened)
    assert records.subject(opened) == "source_gap.binance_derivatives.perpetual.BTC-USDT"
    assert records.decode(records.encode(opened)) == opened
    assert RECORD_TYPES["source_gap"].stream == "MARKET_DATA"


def test_gap_rows_store_and_replace_by_identity_in_chdb(store, settings_factory):
    db = settings_factory().storage.hot_database
    rows = [_gap(), _gap(received_at=NOW + 1), _gap(state="repaired", recovered=500)]
    store.insert(db, "source_gap", records_to_arrow("source_gap", rows))
    got = store.query_rows(
        f"SELECT gap_data_type, cause, first_missing_id, last_missing_id, state, recovered, "
        f"toUnixTimestamp64Milli(end_time) FROM {db}.source_gap FINAL ORDER BY state"
    )
    assert got == [
        ("trade", "trade_id_jump", "1000", "1499", "open", 0, NOW - 50_000),
        ("trade", "trade_id_jump", "1000", "1499", "repaired", 500, NOW - 50_000),
    ]


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"cause": "gremlins"}, "cause:gap_cause"),
        ({"state": "closed"}, "state:gap_state"),
        ({"gap_data_type": "candles"}, "gap_data_type:record_type"),
        ({"end_time": 5}, "end_time:time_range"),
    ],
)
def test_a_gap_row_outside_the_declared_values_is_never_stored(change, rule):
    assert validation.fault(_gap()) is None
    assert validation.fault(_gap(**change)) == rule
    assert {"trade_id_jump", "disconnect", "book_unsynced", "poll_failed", "downtime"} == set(GAP_CAUSES)
    assert {"open", "repaired", "unrecoverable"} == set(GAP_STATES)


def test_no_gap_rows_passes_the_window_and_lag_rules_and_rows_do_too(store, settings_factory):
    settings = settings_factory()
    for result in (
        integrity.window_presence(store, settings, "source_gap", now=NOW),
        integrity.data_lag(store, settings, "source_gap", now=NOW),
    ):
        assert result.passed, result
    store.insert(settings.storage.hot_database, "source_gap", records_to_arrow("source_gap", [_gap()]))
    assert integrity.window_presence(store, settings, "source_gap", now=NOW).passed
    assert integrity.duplicates(store, settings, "source_gap").passed


def test_source_gap_is_not_a_data_type_a_market_can_configure(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"markets": {"binance_spot": {"data_types": ["trade", "source_gap"]}}}))
    with pytest.raises(ConfigError, match="source_gap"):
        load_config(path, env={})
