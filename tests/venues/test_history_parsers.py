"""History mappings (refill): the venues' documented history answers map to the records the live path produces,
with the live identities; requests stay inside the venues' limits; a walk covers a window exactly once.

Payloads are the venues' documented examples: fixtures/documented where it has them; the two history answers
it lacks are quoted verbatim from the venue pages (URL and commit beside each)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketprism_dagster import records
from marketprism_dagster.validation import fault
from marketprism_dagster.venues.base import VenueAdapter
from marketprism_dagster.venues.history import Page, PageResult, Window, history_for

# GET /api/v3/aggTrades and /fapi/v1/aggTrades "Response" (developers.binance.com, spot "Compressed/Aggregate
# trades list" and USD-M "Compressed-Aggregate-Trades-List"; same text in binance/binance-spot-api-docs rest-api.md)
BINANCE_AGG_TRADES_DOC = [
    {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153, "m": True,
     "M": True}
]
# GET /api/v5/market/history-trades "Response Example" (https://www.okx.com/docs-v5/en/#order-book-trading-market-
# data-get-trades-history; copy wcttmf/okx-api-docs@e82f90ec docs/03-order-book-trading/126-market-data-get-trades-
# history.html)
OKX_HISTORY_TRADES_DOC: dict[str, Any] = {
    "code": "0",
    "msg": "",
    "data": [
        {"instId": "BTC-USDT", "side": "sell", "sz": "0.00001", "px": "29963.2", "tradeId": "242720720",
         "ts": "1654161646974"},
        {"instId": "BTC-USDT", "side": "sell", "sz": "0.00001", "px": "29964.1", "tradeId": "242720719",
         "ts": "1654161641568"},
    ],
}
NOW = 1_700_000_000_000


def example(documented: Any, name: str, ex_id: str) -> Any:
    return next(e for e in documented(name)["examples"] if e["id"] == ex_id)["json"]


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def first(adapter: VenueAdapter, window: Window) -> Page:
    hist = history_for(adapter, window.data_type)
    assert hist is not None
    inst = adapter.instruments[window.symbol]
    page: Page = getattr(adapter, hist.first)(window, inst)
    return page


def answer(adapter: VenueAdapter, window: Window, page: Page, body: Any) -> PageResult:
    hist = history_for(adapter, window.data_type)
    assert hist is not None
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    result: PageResult = getattr(adapter, hist.page)(window, adapter.instruments[window.symbol], page, raw, NOW)
    for r in result.records:
        assert fault(r) is None, r
    return result


def without_receive(record: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(records.encode(record))
    body.pop("received_at")
    return body


# ---------------------------------------------------------------- Binance


def test_binance_agg_trades_history_is_the_live_aggtrade_mapping(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("binance_spot")
    event = example(documented, "binance_spot_trades", "binance_spot/aggTrade/doc")  # the stream event
    (live,) = adapter.on_message("k", json.dumps({"stream": "bnbbtc@aggTrade", "data": event}), 5).records
    row = {k: v for k, v in event.items() if k not in ("e", "E", "s")}  # the history row: the event minus e/E/s
    window = Window("trade", "BNBBTC", 0, 2**62, event["a"], event["a"])
    (refilled,) = answer(adapter, window, first(adapter, window), [row]).records
    assert without_receive(refilled) == without_receive(live)
    assert records.msg_id(refilled) == records.msg_id(live) == f"trade:binance_spot|BNB-BTC|{event['a']}"

    window = Window("trade", "BNBBTC", 0, 2**62, 26129, 26130)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/api/v3/aggTrades" and page.weight == 4
    assert query(page.url) == {"symbol": "BNBBTC", "fromId": "26129", "limit": "1000"}
    result = answer(adapter, window, page, BINANCE_AGG_TRADES_DOC)
    (t,) = result.records
    assert (t.trade_id, t.price, t.quantity, t.timestamp, t.side) == ("26129", "0.01633102", "4.70443515",
                                                                     1498793709153, "sell")
    assert result.next is not None and query(result.next.url)["fromId"] == "26130"  # 26130 still missing
    done = answer(adapter, Window("trade", "BNBBTC", 0, 2**62, 26129, 26129), page, BINANCE_AGG_TRADES_DOC)
    assert done.next is None


def test_binance_usdm_trade_history_by_time_stays_under_one_hour(make_adapter: Any) -> None:
    adapter = make_adapter("binance_derivatives")
    window = Window("trade", "BTCUSDT", NOW, NOW + 3 * 3_600_000)  # a downtime of 3 h without ids
    page = first(adapter, window)
    q = query(page.url)
    assert urlsplit(page.url).path == "/fapi/v1/aggTrades" and page.weight == 20
    assert int(q["startTime"]) == NOW + 1 and int(q["endTime"]) - int(q["startTime"]) < 3_600_000
    nxt = answer(adapter, window, page, []).next  # an hour without trades: the next hour
    assert nxt is not None and int(query(nxt.url)["startTime"]) == int(q["endTime"]) + 1
    full = [dict(BINANCE_AGG_TRADES_DOC[0], a=100 + i, T=NOW + 10) for i in range(1000)]
    by_id = answer(adapter, window, page, full).next  # a full page continues by id, not by time
    assert by_id is not None and query(by_id.url)["fromId"] == "1100" and "startTime" not in by_id.url


def test_binance_funding_history_is_the_settled_rate_at_its_funding_time(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("binance_derivatives")
    rows = example(documented, "binance_usdm_funding_mark_price", "binance_usdm/fundingRate/doc")
    window = Window("funding_rate", "BTCUSDT", rows[0]["fundingTime"] - 1, rows[-1]["fundingTime"] + 1)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/fapi/v1/fundingRate"
    assert query(page.url) == {"symbol": "BTCUSDT", "startTime": str(window.after_ms + 1),
                               "endTime": str(window.before_ms - 1), "limit": "1000"}
    result = answer(adapter, window, page, rows)
    assert [(r.timestamp, r.next_funding_time, r.funding_rate, r.mark_price) for r in result.records] == [
        (x["fundingTime"], x["fundingTime"], x["fundingRate"], x["markPrice"]) for x in rows
    ]
    assert result.next is None  # 2 rows < limit
    # a live row (markPrice@1s) names the NEXT funding time, after its own time: the two never look alike
    mp = example(documented, "binance_usdm_funding_mark_price", "binance_usdm/markPrice/connector")
    (live,) = adapter.on_message("k", json.dumps({"stream": "btcusdt@markPrice@1s", "data": mp}), 5).records
    assert live.next_funding_time > live.timestamp


def test_binance_open_interest_and_ratio_histories(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("binance_derivatives")
    for ex_id in ("binance_usdm/openInterestHist/doc", "binance_usdm/openInterestHist/connector"):
        rows = example(documented, "binance_usdm_open_interest", ex_id)
        window = Window("open_interest", "BTCUSDT", 0, 2**62)
        page = first(adapter, window)
        assert urlsplit(page.url).path == "/futures/data/openInterestHist"
        assert query(page.url)["period"] == "5m" and query(page.url)["limit"] == "500"
        result = answer(adapter, window, page, rows)
        assert [(r.timestamp, r.open_interest, r.open_interest_value) for r in result.records] == [
            (int(x["timestamp"]), x["sumOpenInterest"], x["sumOpenInterestValue"]) for x in rows
        ]
    polls = {p.data_type: p for p in adapter.rest_polls() if p.symbol == "BTCUSDT"}
    for data_type, ex_id in (
        ("lsr_top_position", "binance_usdm/topLongShortPositionRatio/doc"),
        ("lsr_all_account", "binance_usdm/globalLongShortAccountRatio/doc"),
    ):
        rows = example(documented, "binance_usdm_long_short_ratio", ex_id)
        window = Window(data_type, "BTCUSDT", 0, 2**62)
        page = first(adapter, window)
        assert urlsplit(page.url).path == urlsplit(polls[data_type].url).path  # the polled endpoint
        assert query(page.url)["period"] == "5m"
        refilled = answer(adapter, window, page, rows).records
        live = adapter.on_rest(polls[data_type], orjson.dumps(rows), NOW).records
        assert [records.encode(r) for r in refilled] == [records.encode(r) for r in live]  # identical rows


# ---------------------------------------------------------------- OKX


def test_okx_history_trades_are_single_matches_through_the_live_mapping(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("okx_spot")
    push = example(documented, "okx_trades", "okx/trades/push")
    push["arg"]["instId"] = push["data"][0]["instId"] = "BTC-USDT"
    (live,) = adapter.on_message("k", json.dumps(push), 5).records
    row = {k: push["data"][0][k] for k in ("instId", "side", "sz", "px", "tradeId", "ts")}
    window = Window("trade", "BTC-USDT", 0, 2**62, int(row["tradeId"]), int(row["tradeId"]))
    (refilled,) = answer(adapter, window, first(adapter, window), {"code": "0", "msg": "", "data": [row]}).records
    assert without_receive(refilled) == without_receive(live)

    window = Window("trade", "BTC-USDT", 0, 2**62, 242720700, 242720720)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/api/v5/market/history-trades"
    assert query(page.url) == {"instId": "BTC-USDT", "type": "1", "after": "242720721", "before": "242720699",
                               "limit": "100"}
    result = answer(adapter, window, page, OKX_HISTORY_TRADES_DOC)
    assert [(r.trade_id, r.price, r.quantity, r.side, r.timestamp) for r in result.records] == [
        ("242720720", "29963.2", "0.00001", "sell", 1654161646974),
        ("242720719", "29964.1", "0.00001", "sell", 1654161641568),
    ]
    assert result.next is not None and query(result.next.url)["after"] == "242720719"  # older than the oldest row


def test_okx_swap_trade_history_converts_contracts(make_adapter: Any) -> None:
    adapter = make_adapter("okx_derivatives", all_symbols=False)
    inst = adapter.instruments["BTC-USDT-SWAP"]
    body = json.loads(json.dumps(OKX_HISTORY_TRADES_DOC).replace('"BTC-USDT"', '"BTC-USDT-SWAP"'))
    window = Window("trade", "BTC-USDT-SWAP", 0, 2**62, 242720719, 242720720)
    result = answer(adapter, window, first(adapter, window), body)
    assert result.next is None
    for r in result.records:
        assert r.quantity_contracts == "0.00001"
        assert Decimal(r.quantity) == inst.contract_value * Decimal("0.00001")  # contracts x ctVal, exact


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(1, 10**9),
    counts=st.lists(st.integers(1, 5), min_size=2, max_size=30),
    lost=st.data(),
)
def test_okx_refill_ids_never_meet_a_live_aggregate(start: int, counts: list[int], lost: st.DataObject) -> None:
    """Pushes aggregate ``count`` matches with ``tradeId`` = the last; whatever run of pushes is lost, the gap's
    ids (previous tradeId + 1 .. next tradeId - count) are exactly the lost matches, never a live push's id."""
    pushes, nxt = [], start
    for c in counts:
        pushes.append((nxt + c - 1, c))  # (tradeId, count)
        nxt += c
    i = lost.draw(st.integers(1, len(pushes) - 1))
    j = lost.draw(st.integers(i, len(pushes) - 1))
    received = pushes[:i] + pushes[j + 1:]
    if j + 1 >= len(pushes):
        return  # nothing after the loss yet: no gap to detect
    before, after = pushes[i - 1], pushes[j + 1]
    window = Window("trade", "X", 0, 2**62, before[0] + 1, after[0] - after[1])
    lost_ids = {tid - k for tid, c in pushes[i:j + 1] for k in range(c)}
    live_ids = {tid - k for tid, c in received for k in range(c)}
    wanted = {m for m in range(start, nxt) if window.wants(_Trade(m))}
    assert wanted == lost_ids and not wanted & live_ids


class _Trade:
    def __init__(self, trade_id: int) -> None:
        self.trade_id = str(trade_id)
        self.timestamp = 0


def test_okx_funding_oi_and_ratio_histories(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("okx_derivatives", all_symbols=False)
    body = example(documented, "okx_funding_rate", "okx/funding-rate-history/rest")
    stamps = [int(r["fundingTime"]) for r in body["data"]]
    window = Window("funding_rate", "BTC-USDT-SWAP", min(stamps) - 1, max(stamps) + 1)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/api/v5/public/funding-rate-history"
    assert query(page.url) == {"instId": "BTC-USDT-SWAP", "after": str(window.before_ms),
                               "before": str(window.after_ms), "limit": "400"}
    result = answer(adapter, window, page, body)
    assert [(r.timestamp, r.next_funding_time, r.funding_rate) for r in result.records] == [
        (int(r["fundingTime"]), int(r["fundingTime"]), r["realizedRate"]) for r in body["data"]
    ]
    assert result.next is None

    oi = example(documented, "okx_open_interest", "okx/open-interest-history/rest")
    window = Window("open_interest", "BTC-USDT-SWAP", 0, 2**62)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/api/v5/rubik/stat/contracts/open-interest-history"
    assert query(page.url)["period"] == "5m" and query(page.url)["limit"] == "100"
    assert [(r.timestamp, r.open_interest_contracts, r.open_interest, r.open_interest_value)
            for r in answer(adapter, window, page, oi).records] == [
        (int(ts), contracts, coin, usd) for ts, contracts, coin, usd in oi["data"]
    ]

    polls = {p.data_type: p for p in adapter.rest_polls() if p.symbol == "BTC-USDT-SWAP"}
    ratios = example(documented, "okx_long_short_ratio", "okx/long-short-account-ratio-contract/rest")
    window = Window("lsr_all_account", "BTC-USDT-SWAP", 0, 2**62)
    page = first(adapter, window)
    assert urlsplit(page.url).path == urlsplit(polls["lsr_all_account"].url).path
    assert query(page.url)["begin"] == "0" and query(page.url)["period"] == "5m"
    refilled = answer(adapter, window, page, ratios).records
    live = adapter.on_rest(polls["lsr_all_account"], orjson.dumps(ratios), NOW).records
    assert [records.encode(r) for r in refilled] == [records.encode(r) for r in live]


# ---------------------------------------------------------------- Deribit


def test_deribit_dvol_history_is_the_backfill_mapping(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("deribit_derivatives", all_symbols=False)
    resp = example(documented, "deribit_volatility_index", "deribit/get_volatility_index_data/response")
    window = Window("volatility_index", "btc_usd", 1598019300000 - 1, 1598019420000 + 1)
    page = first(adapter, window)
    assert urlsplit(page.url).path == "/api/v2/public/get_volatility_index_data"
    assert query(page.url) == {"currency": "BTC", "start_timestamp": "1598019300000",
                               "end_timestamp": "1598019420000", "resolution": "60"}
    result = answer(adapter, window, page, resp)
    backfill = adapter.on_backfill("deribit_derivatives/dvol/btc_usd", orjson.dumps(resp), NOW).records
    assert [records.encode(r) for r in result.records] == [records.encode(r) for r in backfill]
    assert [r.timestamp for r in result.records] == [c[0] for c in resp["result"]["data"]]
    assert result.next is None  # continuation null
    resp["result"]["continuation"] = 1598019000000
    nxt = answer(adapter, window, page, resp).next
    assert nxt is None  # the continuation is before the window: nothing more to ask
    wide = Window("volatility_index", "btc_usd", 0, 1598019420000 + 1)
    nxt = answer(adapter, wide, first(adapter, wide), resp).next
    assert nxt is not None and query(nxt.url)["end_timestamp"] == "1598019000000"


# ---------------------------------------------------------------- a walk covers a window exactly once


def _agg_answer(ids: list[int], times: dict[int, int], url: str) -> list[dict[str, Any]]:
    """GET aggTrades as documented: fromId / startTime / endTime inclusive, limit <= 1000, ascending."""
    q = query(url)
    rows = ids
    if "fromId" in q:
        rows = [i for i in rows if i >= int(q["fromId"])]
    if "startTime" in q:
        rows = [i for i in rows if times[i] >= int(q["startTime"])]
    if "endTime" in q:
        rows = [i for i in rows if times[i] <= int(q["endTime"])]
    return [dict(BINANCE_AGG_TRADES_DOC[0], a=i, T=times[i]) for i in rows[: int(q["limit"])]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(3, 4000),
    per_ms=st.integers(1, 50),
    gap=st.data(),
    by_id=st.booleans(),
)
def test_binance_walk_covers_the_window_once(
    make_adapter: Any, n: int, per_ms: int, gap: st.DataObject, by_id: bool
) -> None:
    adapter = make_adapter("binance_derivatives", all_symbols=False)
    ids = list(range(10_000, 10_000 + n))
    times = {i: NOW + (i - 10_000) // per_ms * 250 for i in ids}  # bursts of per_ms trades a millisecond
    lo = gap.draw(st.integers(1, n - 2))
    hi = gap.draw(st.integers(lo, n - 2))
    before, after = ids[lo - 1], ids[hi + 1]
    window = Window("trade", "BTCUSDT", times[before], times[after], before + 1 if by_id else None,
                    after - 1 if by_id else None)
    page: Page | None = first(adapter, window)
    got: list[int] = []
    pages = 0
    while page is not None:
        result = answer(adapter, window, page, _agg_answer(ids, times, page.url))
        got += [int(r.trade_id) for r in result.records if window.wants(r)]
        page, pages = result.next, pages + 1
        assert pages < 100
    expect = [i for i in ids if before < i < after] if by_id else [
        i for i in ids if times[before] < times[i] < times[after]]
    assert sorted(got) == sorted(set(got)) == expect


def _okx_trades_answer(ids: list[int], url: str) -> dict[str, Any]:
    """GET history-trades type 1 as documented: ``after`` older than, ``before`` newer than (exclusive), newest
    first, at most ``limit`` (100)."""
    q = query(url)
    rows = [i for i in ids if ("after" not in q or i < int(q["after"])) and ("before" not in q or i > int(q["before"]))]
    rows = sorted(rows, reverse=True)[: int(q["limit"])]
    data = [dict(OKX_HISTORY_TRADES_DOC["data"][0], instId="BTC-USDT", tradeId=str(i), ts=str(NOW + i)) for i in rows]
    return {"code": "0", "msg": "", "data": data}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(3, 1500), gap=st.data())
def test_okx_walk_by_id_covers_the_window_once(make_adapter: Any, n: int, gap: st.DataObject) -> None:
    adapter = make_adapter("okx_spot", all_symbols=False)
    ids = list(range(5_000, 5_000 + n))
    lo = gap.draw(st.integers(1, n - 2))
    hi = gap.draw(st.integers(lo, n - 2))
    window = Window("trade", "BTC-USDT", 0, 2**62, ids[lo], ids[hi])
    page: Page | None = first(adapter, window)
    got: list[int] = []
    pages = 0
    while page is not None:
        result = answer(adapter, window, page, _okx_trades_answer(ids, page.url))
        got += [int(r.trade_id) for r in result.records if window.wants(r)]
        page, pages = result.next, pages + 1
        assert pages <= (hi - lo) // 100 + 2
    assert sorted(got) == sorted(set(got)) == ids[lo:hi + 1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.integers(1, 1500), span=st.data())
def test_series_walks_cover_the_window_once(make_adapter: Any, points: int, span: st.DataObject) -> None:
    """Binance /futures/data (ascending, startTime paging, 500 a page) and OKX rubik (newest first, ``end`` paging,
    100 a page): every 5-minute point strictly inside the window, once."""
    step = 300_000
    stamps = [NOW + i * step for i in range(points)]
    a = span.draw(st.integers(-1, points))
    b = span.draw(st.integers(a, points + 1))
    after, before = NOW + a * step + span.draw(st.sampled_from([0, 1])), NOW + b * step
    inside = [t for t in stamps if after < t < before]
    binance = make_adapter("binance_derivatives", all_symbols=False)
    window = Window("open_interest", "BTCUSDT", after, before)
    page: Page | None = first(binance, window)
    got: list[int] = []
    while page is not None:
        q = query(page.url)
        rows = [t for t in stamps if int(q["startTime"]) <= t <= int(q["endTime"])][: int(q["limit"])]
        rows_body = [{"symbol": "BTCUSDT", "sumOpenInterest": "1.5", "sumOpenInterestValue": "2.5", "timestamp": t}
                     for t in rows]
        result = answer(binance, window, page, rows_body)
        got += [r.timestamp for r in result.records if window.wants(r)]
        page = result.next
    assert got == inside
    okx = make_adapter("okx_derivatives", all_symbols=False)
    window = Window("open_interest", "BTC-USDT-SWAP", after, before)
    page = first(okx, window)
    got = []
    while page is not None:
        q = query(page.url)
        rows = sorted((t for t in stamps if int(q["begin"]) < t < int(q["end"])), reverse=True)[: int(q["limit"])]
        body = {"code": "0", "msg": "", "data": [[str(t), "10", "0.1", "3000"] for t in rows]}
        result = answer(okx, window, page, body)
        got += [r.timestamp for r in result.records if window.wants(r)]
        page = result.next
    assert sorted(got) == sorted(set(got)) == inside
