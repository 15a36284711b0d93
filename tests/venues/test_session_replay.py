"""Replaying the recorded sessions through the adapters (pure, no sockets)."""

from __future__ import annotations

import io
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from marketprism_dagster.book import Book
from marketprism_dagster.cli import app
from marketprism_dagster.normalize import merge_by_time, payload_text, read_session, register, replay, run


def sessions(fixtures_dir: Path, *names: str) -> list[dict[str, Any]]:
    return list(merge_by_time(read_session(fixtures_dir / "sessions" / n) for n in names))


def test_okx_books_all_290_checksums_verify(fixtures_dir: Path, make_adapter: Any) -> None:
    adapter = make_adapter("okx_spot", cadence_ms=0)
    result = replay(adapter, sessions(fixtures_dir, "okx.ws.jsonl"))
    books_frames = sum(
        1
        for r in sessions(fixtures_dir, "okx.ws.jsonl")
        if r["kind"] == "recv" and r["data"].get("arg", {}).get("channel") == "books" and "data" in r["data"]
    )
    assert books_frames == 290
    assert sum(s.checksums_verified for s in adapter.books.values()) == 290
    assert "checksum_failure" not in result.events and "resync" not in result.events
    assert sorted(adapter.books) == ["BTC-USD-220527", "BTC-USDT", "UNI-USD-SWAP"]
    assert all(s.synced for s in adapter.books.values())
    # cadence 0: one published book per applied BTC-USDT update (the snapshot frame only synchronizes;
    # the inverse books are verified but not published)
    published = [r for r in result.records if type(r).__name__ == "Orderbook"]
    assert len(published) == 97 and {r.exchange_symbol for r in published} == {"BTC-USDT"}


def test_every_trade_id_published_once(fixtures_dir: Path, make_adapter: Any) -> None:
    for market, name, expected in (
        ("binance_spot", "binance_spot.ws.jsonl", 2),
        ("binance_derivatives", "binance_usdm.ws.jsonl", 91),
    ):
        result = replay(make_adapter(market), sessions(fixtures_dir, name))
        trades = [r for r in result.records if type(r).__name__ == "Trade"]
        ids = Counter((t.symbol, t.trade_id) for t in trades)
        assert len(trades) == expected and max(ids.values()) == 1, market
    okx = sessions(fixtures_dir, "okx.ws.jsonl")
    raw_ids = [
        (d["instId"], d["tradeId"])
        for r in okx
        if r["kind"] == "recv" and r["data"].get("arg", {}).get("channel") == "trades" and "data" in r["data"]
        for d in r["data"]["data"]
        if d["instId"] == "BTC-USDT"
    ]
    result = replay(make_adapter("okx_spot"), okx)
    trades = [(t.exchange_symbol, t.trade_id) for t in result.records if type(t).__name__ == "Trade"]
    assert trades == raw_ids and len(set(trades)) == len(trades) > 0


def _naive_book(
    fixtures_dir: Path, ws: str, http: str, symbol: str, final_u: int
) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    """Reference book: the recorded snapshot plus every diff with u > lastUpdateId, up to final_u."""
    snap = next(r["data"] for r in read_session(fixtures_dir / "sessions" / http) if f"symbol={symbol}&" in r["url"])
    bids = {Decimal(p): Decimal(q) for p, q in snap["bids"]}
    asks = {Decimal(p): Decimal(q) for p, q in snap["asks"]}
    for r in read_session(fixtures_dir / "sessions" / ws):
        d = (r.get("data") or {}).get("data") or {}
        if d.get("e") != "depthUpdate" or d["s"] != symbol or d["u"] <= snap["lastUpdateId"] or d["u"] > final_u:
            continue
        for side, levels in ((bids, d["b"]), (asks, d["a"])):
            for p, q in levels:
                if Decimal(q) == 0:
                    side.pop(Decimal(p), None)
                else:
                    side[Decimal(p)] = Decimal(q)
    return bids, asks


def test_binance_books_synchronize_and_publish(fixtures_dir: Path, make_adapter: Any) -> None:
    for market, prefix, symbols in (
        ("binance_spot", "binance_spot", ("BLZETH", "LRCBTC", "NKNUSDT", "RUNEEUR")),
        ("binance_derivatives", "binance_usdm", ("AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT")),
    ):
        adapter = make_adapter(market)
        result = replay(adapter, sessions(fixtures_dir, f"{prefix}.ws.jsonl", f"{prefix}.http.jsonl"))
        assert "resync" not in result.events and "snapshot_too_old" not in result.events, market
        published = Counter(r.exchange_symbol for r in result.records if type(r).__name__ == "Orderbook")
        for sym in symbols:
            sync = adapter.books[sym]
            assert sync.synced and sync.bridged, (market, sym)
            bids, asks = _naive_book(fixtures_dir, f"{prefix}.ws.jsonl", f"{prefix}.http.jsonl", sym, sync.update_id)
            assert sync.book.as_dicts() == (bids, asks), (market, sym)
        # the busy symbols cross many 1 s ticks; every published book has strictly increasing ids
        assert published["NKNUSDT" if market == "binance_spot" else "SUSHIUSDT"] >= 10
        by_sym: dict[str, list[int]] = {}
        for r in result.records:
            if type(r).__name__ == "Orderbook":
                by_sym.setdefault(r.exchange_symbol, []).append(r.update_id)
                assert r.tick % 1000 == 0 and r.timestamp < r.tick and len(r.bids) <= 400
        assert all(ids == sorted(set(ids)) for ids in by_sym.values())


def test_published_book_is_the_state_before_the_tick(fixtures_dir: Path, make_adapter: Any) -> None:
    """tick T = book after every diff with E < T, stamped with that last diff's u and E."""
    recs = sessions(fixtures_dir, "binance_usdm.ws.jsonl", "binance_usdm.http.jsonl")
    result = replay(make_adapter("binance_derivatives"), recs)
    book = next(r for r in result.records if type(r).__name__ == "Orderbook" and r.exchange_symbol == "SUSHIUSDT")
    diffs = [
        r["data"]["data"]
        for r in recs
        if r["kind"] == "recv" and r["data"]["data"].get("e") == "depthUpdate" and r["data"]["data"]["s"] == "SUSHIUSDT"
    ]
    last = max((d for d in diffs if d["E"] < book.tick), key=lambda d: d["u"])
    assert (book.update_id, book.timestamp) == (last["u"], last["E"])
    bids, asks = _naive_book(fixtures_dir, "binance_usdm.ws.jsonl", "binance_usdm.http.jsonl", "SUSHIUSDT", last["u"])
    ref = Book()
    ref.load([(str(p), str(q)) for p, q in bids.items()], [(str(p), str(q)) for p, q in asks.items()])
    rb, ra = ref.top(400)
    assert [(Decimal(p), Decimal(q)) for p, q in book.bids] == [(Decimal(p), Decimal(q)) for p, q in rb]
    assert [(Decimal(p), Decimal(q)) for p, q in book.asks] == [(Decimal(p), Decimal(q)) for p, q in ra]


def test_normalize_command_prints_records_and_final_books(fixtures_dir: Path, settings: Any) -> None:
    s = fixtures_dir / "sessions"
    buf = io.StringIO()
    run(
        "binance_spot",
        [s / "binance_spot.ws.jsonl", s / "binance_spot.http.jsonl", s / "binance_spot.info.jsonl"],
        settings,
        buf,
    )
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    finals = [line["final_book"] for line in lines if "final_book" in line]
    assert sorted(f["exchange_symbol"] for f in finals) == ["BLZETH", "LRCBTC", "NKNUSDT", "RUNEEUR"]
    assert {f["symbol"] for f in finals} >= {"NKN-USDT", "RUNE-EUR"}
    assert Counter(line.get("data_type") for line in lines if "final_book" not in line) == Counter(
        {"orderbook": 44, "trade": 2}
    )

    register(app) if "normalize" not in {c.name for c in app.registered_commands} else None
    runner = CliRunner()
    res = runner.invoke(app, ["normalize", "--market", "okx_spot", str(s / "okx.ws.jsonl"), str(s / "okx.info.jsonl")])
    assert res.exit_code == 0, res.output
    out_lines = [orjson.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert sum("final_book" in x for x in out_lines) == 3
    res = runner.invoke(app, ["normalize", "--market", "okx_spot", str(s / "okx.ws.jsonl")])
    assert res.exit_code == 2 and "instrument" in res.output


def test_payload_text_reproduces_recorded_bytes(fixtures_dir: Path) -> None:
    recs = read_session(fixtures_dir / "sessions" / "deribit.ws.jsonl")
    with_raw = [r for r in recs if "raw" in r]
    assert len(with_raw) == 38 and all(payload_text(r) == r["raw"] for r in with_raw)
