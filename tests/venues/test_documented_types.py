"""Types with no recorded sample (liquidations, long/short ratios, OI, funding, DVOL) parsed from
the venues' own documented examples (fixtures/documented): fields, units and endpoints."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from marketprism_dagster.venues.base import Backfill, RestPoll, Send


def example(documented: Any, name: str, ex_id: str) -> Any:
    return next(e for e in documented(name)["examples"] if e["id"] == ex_id)["json"]


def frame(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def test_binance_force_order_and_mark_price(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("binance_derivatives")
    fo = example(documented, "binance_usdm_liquidation", "binance_usdm/forceOrder/forum_post_0")
    (liq,) = adapter.on_message("k", frame({"stream": "btcusdt@forceOrder", "data": fo}), 5).records
    o = fo["o"]
    assert (liq.symbol, liq.side, liq.price, liq.quantity, liq.status, liq.timestamp) == (
        "BTC-USDT",
        "sell",
        o["ap"],
        o["z"],
        "filled",
        o["T"],
    )
    coinm = example(documented, "binance_usdm_liquidation", "binance_coinm/forceOrder/doc")
    assert adapter.on_message("k", frame(coinm), 5).events == {"unknown_symbol": 1}

    mp = example(documented, "binance_usdm_funding_mark_price", "binance_usdm/markPrice/connector")
    (fr,) = adapter.on_message("k", frame({"stream": "btcusdt@markPrice@1s", "data": mp}), 5).records
    assert (fr.funding_rate, fr.next_funding_time, fr.mark_price, fr.index_price, fr.timestamp) == (
        mp["r"],
        mp["T"],
        mp["p"],
        mp["i"],
        mp["E"],
    )
    # open interest: base units from REST; quote value = oi x the mark price seen on the stream
    oi_body = example(documented, "binance_usdm_open_interest", "binance_usdm/openInterest/doc")
    poll = next(p for p in adapter.rest_polls() if p.data_type == "open_interest" and p.symbol == "BTCUSDT")
    assert poll.url.endswith("/fapi/v1/openInterest?symbol=BTCUSDT")
    (oi,) = adapter.on_rest(poll, orjson.dumps(oi_body), 5).records
    assert oi.open_interest == "10659.509" and oi.timestamp == oi_body["time"]
    assert oi.open_interest_value == "125719848.07235"  # 10659.509 x 11794.15000000, exact


def test_binance_long_short_ratios_use_the_right_endpoints(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("binance_derivatives", all_symbols=False)
    polls = {p.data_type: p for p in adapter.rest_polls() if p.symbol == "BTCUSDT"}
    assert "/futures/data/topLongShortPositionRatio?symbol=BTCUSDT&period=5m&limit=3" in polls["lsr_top_position"].url
    assert "/futures/data/globalLongShortAccountRatio?symbol=BTCUSDT&period=5m" in polls["lsr_all_account"].url
    assert polls["lsr_top_position"].period_s == 300
    for data_type, ex_id in (
        ("lsr_top_position", "binance_usdm/topLongShortPositionRatio/doc"),
        ("lsr_all_account", "binance_usdm/globalLongShortAccountRatio/doc"),
    ):
        rows = example(documented, "binance_usdm_long_short_ratio", ex_id)
        out = adapter.on_rest(polls[data_type], orjson.dumps(rows), 5)
        assert [(r.timestamp, r.long_short_ratio, r.long_ratio, r.short_ratio, r.period) for r in out.records] == [
            (int(x["timestamp"]), x["longShortRatio"], x["longAccount"], x["shortAccount"], "5m") for x in rows
        ]
    error = adapter.on_rest(polls["lsr_all_account"], b'{"code":-1121,"msg":"Invalid symbol."}', 5)
    assert not error.records and error.events == {"parse_error": 1}


def test_okx_swap_channels_convert_contracts(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("okx_derivatives")
    oi = example(documented, "okx_open_interest", "okx/open-interest/push")
    (r,) = adapter.on_message("k", frame(oi), 5).records
    d = oi["data"][0]
    assert (r.open_interest, r.open_interest_contracts, r.open_interest_value, r.timestamp) == (
        d["oiCcy"],
        d["oi"],
        d["oiUsd"],
        int(d["ts"]),
    )
    liq = example(documented, "okx_liquidation_orders", "okx/liquidation-orders/push")
    inst = adapter.instruments.get("IOST-USDT-SWAP")
    out = adapter.on_message("k", frame(liq), 5)
    det = liq["data"][0]["details"][0]
    if inst is None:  # not listed in the May 2022 instruments: counted, not published
        assert out.events == {"liquidation_other_symbol": 1}
    else:
        (lr,) = out.records
        assert (lr.side, lr.price, lr.quantity_contracts, lr.timestamp) == (
            det["side"],
            det["bkPx"],
            "13",
            int(det["ts"]),
        )
        assert Decimal(lr.quantity) == 13 * inst.contract_value  # contracts x ctVal, exact
    fr = example(documented, "okx_funding_rate", "okx/funding-rate/push")
    (f,) = adapter.on_message("k", frame(fr), 5).records
    assert (f.funding_rate, f.next_funding_time, f.timestamp) == (
        fr["data"][0]["fundingRate"],
        int(fr["data"][0]["fundingTime"]),
        int(fr["data"][0]["ts"]),
    )
    err = example(documented, "okx_funding_rate", "okx/funding-rate/subscribe_error")
    assert adapter.on_message("k", frame(err), 5).events == {"subscribe_error": 1}


def test_okx_rubik_ratios_and_subscriptions(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("okx_derivatives", all_symbols=False)
    assert sorted(adapter.instruments) == ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
    assert adapter.instruments["BTC-USDT-SWAP"].symbol == "BTC-USDT"
    polls = {p.data_type: p for p in adapter.rest_polls() if p.symbol == "BTC-USDT-SWAP"}
    assert (
        "/rubik/stat/contracts/long-short-position-ratio-contract-top-trader?instId=BTC-USDT-SWAP"
        in polls["lsr_top_position"].url
    )
    assert (
        "/rubik/stat/contracts/long-short-account-ratio-contract?instId=BTC-USDT-SWAP" in polls["lsr_all_account"].url
    )
    body = example(documented, "okx_long_short_ratio", "okx/long-short-position-ratio-contract-top-trader/rest")
    out = adapter.on_rest(polls["lsr_top_position"], orjson.dumps(body), 5)
    assert [(r.timestamp, r.long_short_ratio) for r in out.records] == [(int(t), v) for t, v in body["data"]]
    (feed,) = adapter.ws_feeds()
    sub = json.loads(feed.subscribe[0])
    assert {"channel": "liquidation-orders", "instType": "SWAP"} in sub["args"]
    assert {"channel": "books", "instId": "BTC-USDT-SWAP"} in sub["args"]
    assert (feed.ping_text, feed.pong_text, feed.ping_interval_s) == ("ping", "pong", 25.0)
    assert adapter.on_message(feed.key, "pong", 1).events == {}


def test_deribit_dvol_stream_heartbeat_and_backfill(documented: Any, make_adapter: Any) -> None:
    adapter = make_adapter("deribit_derivatives", all_symbols=False)
    (feed,) = adapter.ws_feeds()
    assert json.loads(feed.subscribe[0])["method"] == "public/set_heartbeat"
    assert "deribit_volatility_index.btc_usd" in json.loads(feed.subscribe[1])["params"]["channels"]
    envelope = example(documented, "deribit_ws_control", "deribit/notification/basic_structure")
    data = example(documented, "deribit_volatility_index", "deribit/deribit_volatility_index/notification_data")
    envelope["params"] = {"channel": "deribit_volatility_index.btc_usd", **data}
    (vi,) = adapter.on_message(feed.key, frame(envelope), 5).records
    assert (vi.symbol, vi.exchange_symbol, vi.index_value, vi.timestamp) == ("BTC", "btc_usd", "129.36", 1619777946007)

    test_request = {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}
    (send,) = adapter.on_message(feed.key, frame(test_request), 5).actions
    assert isinstance(send, Send) and json.loads(send.text)["method"] == "public/test"

    actions = adapter.on_connect(feed.key, 1_700_000_000_000).actions
    assert all(isinstance(a, Backfill) for a in actions) and len(actions) == 2
    assert "get_volatility_index_data?currency=BTC&start_timestamp=1699999996400000" not in actions[0].url
    assert "resolution=60" in actions[0].url and "end_timestamp=1700000000000" in actions[0].url
    resp = example(documented, "deribit_volatility_index", "deribit/get_volatility_index_data/response")
    out = adapter.on_backfill(actions[0].key, frame(resp).encode(), 5)
    assert [(r.timestamp, r.open, r.high, r.low, r.close, r.index_value) for r in out.records] == [
        (ts, repr(o), repr(h), repr(lo), repr(c), repr(c)) for ts, o, h, lo, c in resp["result"]["data"]
    ]
    poll = RestPoll("k", "x", "u", 1)
    assert adapter.on_rest(poll, b"{}", 1).records == []
