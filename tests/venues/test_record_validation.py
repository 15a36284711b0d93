"""Semantic validation (issue 12, items 5 and 6): records parsed from REAL messages, with one value made
impossible, are refused by ``validation.fault`` with the rule's name; the writer dead-letters them instead of
storing a wrapped or impossible value; the collector counts them as ``invalid_record`` and never publishes
them; a malformed book level or a crossed book resynchronizes the book instead of poisoning later rows."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from marketprism_dagster import records, validation
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import is_instrument_record, payload_text, read_session
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import FetchSnapshot, Output
from marketprism_dagster.writer.ingest import StreamMessage, prepare_batch

RECEIVED_AT = 1_700_000_000_000


def frame(payload: Any) -> str:
    return orjson.dumps(payload).decode()


def example(documented: Any, name: str, ex_id: str) -> Any:
    return next(e for e in documented(name)["examples"] if e["id"] == ex_id)["json"]


@pytest.fixture(scope="module")
def real(instrument_bodies: dict[str, dict[str, bytes]], messages: Any, documented: Any) -> dict[str, Any]:
    """One real record of each kind the rules below touch, parsed by the adapters from the fixtures."""
    cfg = Settings()

    def make_adapter(market: str) -> Any:
        adapter = adapter_for(market, cfg.markets[market], cfg.orderbook)
        adapter.accept_all_symbols = True
        adapter.load_instruments(instrument_bodies[market])
        return adapter

    spot = make_adapter("binance_spot")
    trade_msg = messages("binance", "trade")["binance/trade/test/spot"]["raw"]
    (trade,) = spot.on_message("k", trade_msg, RECEIVED_AT).records
    usdm = make_adapter("binance_derivatives")
    mp = example(documented, "binance_usdm_funding_mark_price", "binance_usdm/markPrice/connector")
    (funding,) = usdm.on_message("k", frame({"stream": "btcusdt@markPrice@1s", "data": mp}), RECEIVED_AT).records
    poll = next(p for p in usdm.rest_polls() if p.data_type == "lsr_all_account" and p.symbol == "BTCUSDT")
    rows = example(documented, "binance_usdm_long_short_ratio", "binance_usdm/globalLongShortAccountRatio/doc")
    ratio = usdm.on_rest(poll, orjson.dumps(rows), RECEIVED_AT).records[0]
    fo = example(documented, "binance_usdm_liquidation", "binance_usdm/forceOrder/forum_post_0")
    (liq,) = usdm.on_message("k", frame({"stream": "btcusdt@forceOrder", "data": fo}), RECEIVED_AT).records
    for r in (trade, funding, ratio, liq):
        assert validation.fault(r) is None, r
    return {"trade": trade, "funding": funding, "ratio": ratio, "liquidation": liq}


@pytest.mark.parametrize(
    ("kind", "field", "value", "rule"),
    [
        ("trade", "price", "1e30", "price:positive_decimal"),  # Arrow wrapped it to 18960114910927365649.47...
        ("trade", "price", "100000000000000000000", "price:positive_decimal"),  # 21 integer digits
        ("trade", "price", "0.0000000000000000001", "price:positive_decimal"),  # 19 fractional digits
        ("trade", "price", "0", "price:positive_decimal"),
        ("trade", "price", "-27000.5", "price:positive_decimal"),
        ("trade", "price", "Infinity", "price:positive_decimal"),
        ("trade", "quantity", "-0", "quantity:positive_decimal"),
        ("trade", "quantity", "0e0", "quantity:positive_decimal"),
        ("trade", "side", "BUY", "side:buy_or_sell"),
        ("trade", "trade_id", "", "trade_id:non_empty"),
        ("trade", "timestamp", 5, "timestamp:time_range"),
        ("funding", "funding_rate", "1.5", "funding_rate:abs_at_most_1"),
        ("funding", "funding_rate", "-1.0001", "funding_rate:abs_at_most_1"),
        ("funding", "mark_price", "-1", "mark_price:positive_decimal"),
        ("ratio", "long_ratio", "1.2", "long_ratio:share_0_1"),
        ("ratio", "short_ratio", "-0.1", "short_ratio:share_0_1"),
        ("ratio", "long_short_ratio", "-2", "long_short_ratio:non_negative_decimal"),
        ("liquidation", "side", "long", "side:buy_or_sell"),
        ("liquidation", "quantity", "0", "quantity:positive_decimal"),
    ],
)
def test_impossible_values_are_refused_by_the_rule_that_names_them(
    real: dict[str, Any], kind: str, field: str, value: Any, rule: str
) -> None:
    bad = msgspec.structs.replace(real[kind], **{field: value})
    assert validation.fault(bad) == rule


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("ratio", "long_short_ratio", "3.5"),  # longs / shorts: no upper bound
        ("ratio", "long_ratio", "1"),
        ("funding", "funding_rate", "-0.0003"),  # signed
        ("funding", "funding_rate", "-1"),
        ("trade", "price", "99999999999999999999.999999999999999999"),  # the largest Decimal(38, 18)
        ("trade", "quantity", "0.000000000000000001000"),  # 18 significant fractional digits, trailing zeros
    ],
)
def test_values_at_the_edge_of_the_rules_are_accepted(real: dict[str, Any], kind: str, field: str, value: str) -> None:
    assert validation.fault(msgspec.structs.replace(real[kind], **{field: value})) is None


def test_a_value_beyond_decimal_38_18_is_dead_lettered_not_wrapped(real: dict[str, Any]) -> None:
    good = real["trade"]
    huge = msgspec.structs.replace(good, trade_id="1", price="1e30")
    tiny = msgspec.structs.replace(good, trade_id="2", quantity="0.0000000000000000001")
    msgs = [StreamMessage(i, records.subject(r), records.encode(r)) for i, r in enumerate((good, huge, tiny), 1)]
    batch = prepare_batch("MARKET_DATA", msgs)
    assert [(p.message.seq, p.kind) for p in batch.poison] == [(2, "invalid_value"), (3, "invalid_value")]
    assert "trade.price:positive_decimal: '1e30'" in batch.poison[0].reason
    table = batch.tables["trade"].table
    assert table.num_rows == 1 and table.column("price").to_pylist() == [Decimal(good.price)]


def test_a_crossed_or_unordered_book_row_is_dead_lettered(usdm_replayed: tuple[Any, Any]) -> None:
    book = usdm_replayed[1]
    crossed = msgspec.structs.replace(book, bids=[(book.asks[0][0], "1"), *book.bids[1:]])
    unordered = msgspec.structs.replace(book, asks=list(reversed(book.asks)))
    assert validation.fault(book) is None
    assert validation.fault(crossed) == "levels:book_not_crossed"
    assert validation.fault(unordered) == "levels:levels_strictly_ordered"
    msgs = [StreamMessage(i, records.subject(r), records.encode(r)) for i, r in enumerate((crossed, unordered), 1)]
    assert [p.kind for p in prepare_batch("ORDERBOOK_SNAP", msgs).poison] == ["invalid_value", "invalid_value"]


@pytest.fixture(scope="module")
def usdm_replayed(fixtures_dir: Path) -> tuple[Any, Any]:
    """A USD-M adapter (publishing every update) after the recorded session, and its last orderbook record."""
    cfg = Settings()
    ob = cfg.orderbook.model_copy(update={"cadence_ms": 0, "max_levels": 1200})
    adapter = adapter_for("binance_derivatives", cfg.markets["binance_derivatives"], ob)
    adapter.accept_all_symbols = True
    recs = read_session(fixtures_dir / "sessions" / "binance_usdm.info.jsonl")
    adapter.load_instruments({r["url"]: payload_text(r).encode() for r in recs if is_instrument_record(r)})
    return adapter, _replayed_book_record(adapter, fixtures_dir)


def _replayed_book_record(adapter: Any, fixtures_dir: Path) -> Any:
    """The last orderbook record of the recorded USD-M session (snapshots + diffs)."""
    last = None
    http = read_session(fixtures_dir / "sessions" / "binance_usdm.http.jsonl")
    snapshots = {r["url"].split("symbol=")[1].split("&")[0]: orjson.dumps(r["data"]) for r in http}
    for rec in read_session(fixtures_dir / "sessions" / "binance_usdm.ws.jsonl"):
        if rec["kind"] != "recv":
            continue
        out = adapter.on_message("k", orjson.dumps(rec["data"]), RECEIVED_AT)
        for action in out.actions:
            if isinstance(action, FetchSnapshot):
                out.extend(adapter.on_snapshot(action.symbol, snapshots[action.symbol], RECEIVED_AT))
        books = [r for r in out.records if records.data_type_of(r) == "orderbook"]
        last = books[-1] if books else last
    assert last is not None
    return last


def _chained_diff(adapter: Any, fixtures_dir: Path, sym: str, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    """A real depthUpdate of ``sym`` re-numbered to follow the live book, with the given levels."""
    recs = read_session(fixtures_dir / "sessions" / "binance_usdm.ws.jsonl")
    last = next(
        r["data"] for r in reversed(recs)
        if r["kind"] == "recv" and r["data"]["data"].get("e") == "depthUpdate" and r["data"]["data"]["s"] == sym
    )
    uid = adapter.books[sym].update_id
    data = dict(last["data"], U=uid + 1, u=uid + 1, pu=uid, E=last["data"]["E"] + 1, b=bids, a=asks)
    return orjson.dumps({"stream": last["stream"], "data": data})


@pytest.mark.parametrize("qty", ["-5", "-0", "0e0", "abc", "1e30", "Infinity"])
def test_a_malformed_book_level_resyncs_the_book_instead_of_poisoning_later_rows(
    usdm_replayed: tuple[Any, Any], fixtures_dir: Path, qty: str
) -> None:
    adapter = copy.deepcopy(usdm_replayed[0])
    sync = adapter.books["SUSHIUSDT"]
    assert sync.synced
    best_bid = sync.book.best_bid()
    out = adapter.on_message("k", _chained_diff(adapter, fixtures_dir, "SUSHIUSDT", [[best_bid[0], qty]], []), 5)
    assert not out.records  # no row carries the level
    assert out.events.get("parse_error") == 1 and not sync.synced
    assert [a.symbol for a in out.actions if isinstance(a, FetchSnapshot)] == ["SUSHIUSDT"]
    assert sync.book.bid_count == 0  # the book was dropped: nothing of it is published until a snapshot


def test_a_crossed_book_is_dropped_and_resynchronized(usdm_replayed: tuple[Any, Any], fixtures_dir: Path) -> None:
    adapter = copy.deepcopy(usdm_replayed[0])
    sync = adapter.books["SUSHIUSDT"]
    best_ask = sync.book.best_ask()
    out = adapter.on_message("k", _chained_diff(adapter, fixtures_dir, "SUSHIUSDT", [[best_ask[0], "1"]], []), 5)
    assert not out.records and not sync.synced
    assert out.events == {"resync": 1, "book_crossed": 1}
    assert [a.symbol for a in out.actions if isinstance(a, FetchSnapshot)] == ["SUSHIUSDT"]


def test_a_book_deeper_than_max_levels_is_dropped_and_resynchronized(
    usdm_replayed: tuple[Any, Any], fixtures_dir: Path
) -> None:
    adapter = copy.deepcopy(usdm_replayed[0])  # orderbook.max_levels = 1200
    sync = adapter.books["SUSHIUSDT"]
    low = Decimal(sync.book.top(5000)[0][-1][0])  # the deepest bid: new levels go below it
    n = 1201 - sync.book.bid_count
    assert n > 0
    tick = Decimal("0.0001")
    bids = [[format(low - tick * (i + 1), "f"), "1"] for i in range(n)]
    out = adapter.on_message("k", _chained_diff(adapter, fixtures_dir, "SUSHIUSDT", bids, []), 5)
    assert out.events == {"resync": 1, "book_too_deep": 1} and not sync.synced
    assert sync.book.bid_count == 0


def test_the_collector_counts_invalid_records_and_never_publishes_them(
    real: dict[str, Any], settings_factory: Any
) -> None:
    settings: Settings = settings_factory()
    collector = Collector(settings, adapter_factory=lambda m, mc, ob: _NoAdapter())
    market = next(iter(collector.markets))
    good = real["trade"]
    bad = msgspec.structs.replace(good, trade_id="x", price="-1")
    collector._handle(market, Output([good, bad, bad]))
    assert collector.publisher.buffered == 1
    text = collector.metrics.exposition().decode()
    counted = [
        line for line in text.splitlines()
        if line.startswith("marketprism_collector_errors_total{") and 'code="invalid_record"' in line
    ]
    assert len(counted) == 1 and counted[0].endswith(" 2.0") and 'data_type="trade"' in counted[0]
    assert 'event="invalid_record:trade.price:positive_decimal"' in text


class _NoAdapter:
    def rest_body_error(self, body: bytes) -> None:
        return None
