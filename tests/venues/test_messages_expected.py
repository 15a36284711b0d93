"""Every ``expected`` value of fixtures/messages for our markets, reproduced by the parsers.

What is asserted and why some values are not:

* Binance spot / USD-M (``binance_spot``, ``binance_usdm``): trade price, base quantity, taker
  side; funding rate, funding time, event time; depth diff prices, quantities, ``u`` (seq_id),
  ``pu`` (prev_seq_id), event time; REST snapshot prices, quantities, lastUpdateId and (fapi)
  ``E``; openInterest symbol and time. USD-M delivery contracts (``linear_future``) share the
  USD-M message format and units, so their parser values are asserted too; the recorded
  2021 exchangeInfo does not list them, so the adapter itself counts them ``unknown_symbol``.
* ``quantity_quote`` is crypto-msg-parser's derived value (price x quantity in IEEE doubles),
  not a venue field and not part of our records: not asserted.
* ``extract_timestamp_ms`` of a Binance trade is the frame's event time ``E``; our trade
  ``timestamp`` is the trade time ``T`` (when it executed). Both are asserted.
* COIN-M (``binance_coinm``), Binance options and every inverse/option market of OKX and
  Deribit are outside our market matrix: the adapter must reject them with a counted error
  (``unknown_symbol`` / ``unsupported_instrument`` / ``unsupported_message``), never crash.
  crypto-msg-parser's contract conventions for them (Deribit amount as 10-USD contracts,
  OKX options 1 BTC per contract) are therefore never compared.
* OKX linear futures (BTC-USDT-220325) expired before the recorded instrument list
  (2022-05-13), so no ctVal exists for them: prices and raw contract sizes are asserted from
  the pure parser; base quantities only where the recorded ctVal exists (spot, swaps).
* OKX REST ``/market/books`` and ``/public/open-interest`` (l2_snapshot, open_interest) carry
  only inverse/option/spot REST shapes we do not poll (books come from the WS, OI from the
  ``open-interest`` channel): their expected timestamps are asserted through the pure
  ``ts`` field only where the instrument is in our matrix (none are), so they are skipped.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from marketprism_dagster.venues.base import RestPoll
from marketprism_dagster.venues.binance import parse_depth_snapshot, parse_depth_update
from marketprism_dagster.venues.okx import parse_book_message

REJECTED = ("unknown_symbol", "unsupported_instrument", "unsupported_message")


def close(actual: str | int | None, expected: float | int | None) -> bool:
    if expected is None:
        return actual is None
    a = Decimal(str(actual))
    e = Decimal(repr(expected)) if isinstance(expected, float) else Decimal(expected)
    return abs(a - e) <= abs(e) * Decimal("1e-9") + Decimal("1e-18")


def rejected(out: Any) -> bool:
    return not out.records and any(k in out.events for k in REJECTED)


# ------------------------------------------------------------------ Binance


def test_binance_trades_match_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("binance", "trade")
    cases = {
        "binance/trade/test/spot": "binance_spot",
        "binance/trade/test/linear_swap": "binance_derivatives",
    }
    for mid, market in cases.items():
        m = msgs[mid]
        exp = m["expected"]["trades"]["items"][0]
        raw = orjson.loads(m["raw"])["data"]
        out = make_adapter(market).on_message("k", m["raw"], 1)
        assert len(out.records) == 1, mid
        t = out.records[0]
        assert close(t.quantity, exp["quantity_base"]), mid
        assert t.side == exp["side"], mid
        assert t.price == raw["p"] and t.trade_id == str(raw["a"]), mid
        assert raw["E"] == m["expected"]["extract_timestamp_ms"] and t.timestamp == raw["T"], mid
        assert t.symbol == m["expected"]["pair"].replace("/", "-"), mid
    # USD-M delivery (not listed in the 2021 exchangeInfo), COIN-M and options are rejected and counted
    for mid in ("binance/trade/test/linear_future", "binance/trade/test/option"):
        assert rejected(make_adapter("binance_derivatives").on_message("k", msgs[mid]["raw"], 1)), mid
    for m in msgs.values():
        if m.get("venue") == "binance_coinm" and m.get("expected"):
            assert rejected(make_adapter("binance_derivatives").on_message("k", m["raw"], 1)), m["id"]


def test_binance_funding_rates_match_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("binance", "funding_rate")
    for mid in ("binance/funding_rate/test/linear_swap", "binance/funding_rate/test/linear_swap_all"):
        exp = msgs[mid]["expected"]["funding_rates"]
        out = make_adapter("binance_derivatives").on_message("k", msgs[mid]["raw"], 1)
        assert len(out.records) == exp["count"], mid
        for item in exp["items"]:
            r = out.records[item["index"]]
            assert r.symbol == item["pair"].replace("/", "-")
            assert close(r.funding_rate, item["funding_rate"])
            assert r.next_funding_time == item["funding_time"]
            assert r.timestamp == item["timestamp"]
            assert r.mark_price is not None and r.index_price is not None
    for mid in ("binance/funding_rate/test/inverse_swap", "binance/funding_rate/test/inverse_swap_all"):
        assert rejected(make_adapter("binance_derivatives").on_message("k", msgs[mid]["raw"], 1)), mid


def _assert_levels(levels: list[Any], expected: list[dict[str, Any]], contract_key: str = "quantity_base") -> None:
    for e in expected:
        price, qty = levels[e["index"]][0], levels[e["index"]][1]
        assert close(price, e["price"])
        assert close(qty, e[contract_key])


def test_binance_depth_updates_match_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("binance", "l2_update")
    for mid in (
        "binance/l2_update/test/spot",
        "binance/l2_update/test/linear_swap",
        "binance/l2_update/test/linear_future",
    ):
        exp = msgs[mid]["expected"]["orderbooks"]["items"][0]
        d = parse_depth_update(orjson.loads(msgs[mid]["raw"])["data"])
        assert d.last_id == exp["seq_id"]
        assert d.prev_id == exp.get("prev_seq_id")
        assert d.event_ms == exp["timestamp"] == msgs[mid]["expected"]["extract_timestamp_ms"]
        assert (len(d.asks), len(d.bids)) == (exp["asks_count"], exp["bids_count"])
        _assert_levels(list(d.asks), exp["asks"])
        _assert_levels(list(d.bids), exp["bids"])
    # spot and USD-M perpetual diffs enter the book engine (buffered, a snapshot is requested)
    for mid, market in (
        ("binance/l2_update/test/spot", "binance_spot"),
        ("binance/l2_update/test/linear_swap", "binance_derivatives"),
    ):
        out = make_adapter(market).on_message("k", msgs[mid]["raw"], 1)
        assert [type(a).__name__ for a in out.actions] == ["FetchSnapshot"] and not out.events
    for mid in ("binance/l2_update/test/inverse_future", "binance/l2_update/test/inverse_swap"):
        assert rejected(make_adapter("binance_derivatives").on_message("k", msgs[mid]["raw"], 1)), mid


def test_binance_depth_snapshots_match_expected(messages: Any) -> None:
    msgs = messages("binance", "l2_snapshot")
    for mid in (
        "binance/l2_snapshot/test/spot",
        "binance/l2_snapshot/test/linear_swap",
        "binance/l2_snapshot/test/linear_future",
    ):
        m = msgs[mid]
        exp = m["expected"]["orderbooks"]["items"][0]
        last_id, event_ms, bids, asks = parse_depth_snapshot(m["raw"])
        assert last_id == exp["seq_id"]
        # spot snapshots carry no time (the test used received_at); fapi ones carry E
        assert event_ms == m["expected"]["extract_timestamp_ms"]
        assert (len(asks), len(bids)) == (exp["asks_count"], exp["bids_count"])
        _assert_levels(asks, exp["asks"])
        _assert_levels(bids, exp["bids"])


def test_binance_open_interest_matches_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("binance", "open_interest")
    m = msgs["binance/open_interest/test/linear_swap"]
    adapter = make_adapter("binance_derivatives")
    poll = next(p for p in adapter.rest_polls() if p.data_type == "open_interest" and p.symbol == "BTCUSDT")
    out = adapter.on_rest(poll, m["raw"].encode(), 1)
    (r,) = out.records
    assert r.exchange_symbol == m["expected"]["extract_symbol"]
    assert r.timestamp == m["expected"]["extract_timestamp_ms"]
    assert r.open_interest == orjson.loads(m["raw"])["openInterest"]
    assert r.open_interest_value is None  # no mark price seen yet
    for mid in ("binance/open_interest/test/inverse_swap", "binance/open_interest/test/inverse_future"):
        poll = RestPoll("k", "open_interest", "u", 60, symbol=orjson.loads(msgs[mid]["raw"])["symbol"])
        assert rejected(adapter.on_rest(poll, msgs[mid]["raw"].encode(), 1)), mid


# ------------------------------------------------------------------ OKX


def test_okx_trades_match_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("okx", "trade")
    for mid, market in (("okx/trade/test/spot", "okx_spot"), ("okx/trade/test/linear_swap", "okx_derivatives")):
        m = msgs[mid]
        exp = m["expected"]["trades"]["items"][0]
        out = make_adapter(market).on_message("k", m["raw"], 1)
        (t,) = out.records
        assert close(t.price, exp["price"])
        assert close(t.quantity, exp["quantity_base"])
        assert close(t.quantity_contracts, exp["quantity_contract"])
        assert t.side == exp["side"]
        assert t.timestamp == exp["timestamp"] == m["expected"]["extract_timestamp_ms"]
        assert t.symbol == m["expected"]["pair"].replace("/", "-")
    # inverse swap: instrument known but inverse -> unsupported; expired future/option: unknown
    for mid in (
        "okx/trade/test/inverse_swap",
        "okx/trade/test/inverse_future",
        "okx/trade/test/linear_future",
        "okx/trade/test/option",
    ):
        assert rejected(make_adapter("okx_derivatives").on_message("k", msgs[mid]["raw"], 1)), mid


def test_okx_funding_rates_match_expected(messages: Any, make_adapter: Any) -> None:
    msgs = messages("okx", "funding_rate")
    for mid in ("okx/funding_rate/test/linear_swap", "okx/funding_rate/test/inverse_swap"):
        m = msgs[mid]
        item = m["expected"]["funding_rates"]["items"][0]
        received = m["expected_parser_call"]["received_at_ms"]
        out = make_adapter("okx_derivatives").on_message("k", m["raw"], received)
        (r,) = out.records
        assert close(r.funding_rate, item["funding_rate"])
        assert r.next_funding_time == item["funding_time"]
        assert r.timestamp == item["timestamp"]  # the 2022 push had no ts: receive time, as the test
        assert r.mark_price is None and r.index_price is None  # the channel gives neither


def test_okx_book_messages_match_expected(messages: Any, make_adapter: Any, instrument_bodies: Any) -> None:
    msgs = messages("okx", "l2_update")
    for mid, key in (
        ("okx/l2_update/test/spot_snapshot", "quantity_base"),
        ("okx/l2_update/test/spot_update", "quantity_base"),
        ("okx/l2_update/test/linear_future_snapshot", "quantity_contract"),
        ("okx/l2_update/test/inverse_swap_snapshot", "quantity_contract"),
        ("okx/l2_update/test/option_snapshot", "quantity_contract"),
    ):
        m = msgs[mid]
        exp = m["expected"]["orderbooks"]["items"][0]
        b = parse_book_message(orjson.loads(m["raw"]))
        assert b.snapshot is exp["snapshot"]
        assert b.ts == exp["timestamp"] == m["expected"]["extract_timestamp_ms"]
        assert (len(b.asks), len(b.bids)) == (exp["asks_count"], exp["bids_count"])
        _assert_levels(list(b.asks), exp.get("asks", []), key)
        _assert_levels(list(b.bids), exp.get("bids", []), key)
    # a spot snapshot enters the engine: its 3 levels are a truncated test literal, so the venue's
    # checksum (of the full book) must NOT verify: counted and a REST snapshot is requested
    out = make_adapter("okx_spot").on_message("okx_spot/public", msgs["okx/l2_update/test/spot_snapshot"]["raw"], 1)
    assert out.events.get("checksum_failure") == 1 and not out.records
    assert [type(a).__name__ for a in out.actions] == ["FetchSnapshot"]


# ------------------------------------------------------------------ Deribit


@pytest.mark.parametrize("data_type", ["trade", "l2_update", "l2_snapshot", "ticker", "open_interest", "bbo"])
def test_deribit_non_dvol_messages_are_rejected_and_counted(messages: Any, make_adapter: Any, data_type: str) -> None:
    """Deribit's only type in our matrix is DVOL: other subscriptions are counted, RPC results ignored."""
    adapter = make_adapter("deribit_derivatives", all_symbols=False)
    for m in messages("deribit", data_type).values():
        if m["raw"] is None:
            continue
        out = adapter.on_message("k", m["raw"], 1)
        assert not out.records
        if '"method":"subscription"' in m["raw"].replace(" ", ""):
            assert out.events == {"unsupported_message": 1}, m["id"]
