"""The typed (msgspec) fast paths of the Binance and OKX adapters give exactly the generic path's
results on every recorded session, and bad input on them is counted, never crashes, and never
leaves a half-applied book behind."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from marketprism_dagster.normalize import final_books, merge_by_time, payload_text, read_session, replay
from marketprism_dagster.records import encode

SESSIONS = {
    "binance_spot": ("binance_spot.ws.jsonl", "binance_spot.http.jsonl"),
    "binance_derivatives": ("binance_usdm.ws.jsonl", "binance_usdm.http.jsonl"),
    "okx_spot": ("okx.ws.jsonl",),
    "okx_derivatives": ("okx.ws.jsonl",),
}


def _records(fixtures_dir: Path, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return list(merge_by_time(read_session(fixtures_dir / "sessions" / n) for n in names))


@pytest.mark.parametrize("market", sorted(SESSIONS))
@pytest.mark.parametrize("cadence_ms", [0, 1000])
def test_fast_path_equals_generic_path_on_recorded_sessions(
    fixtures_dir: Path, make_adapter: Any, market: str, cadence_ms: int
) -> None:
    recs = _records(fixtures_dir, SESSIONS[market])
    results = []
    adapters = []
    for fast in (True, False):
        adapter = make_adapter(market, cadence_ms=cadence_ms)
        adapter.typed_fast_path = fast
        res = replay(adapter, recs)
        results.append(res)
        adapters.append(adapter)
    fast_res, slow_res = results
    assert [encode(r) for r in fast_res.records] == [encode(r) for r in slow_res.records]
    assert fast_res.events == slow_res.events
    assert fast_res.records  # the sessions do produce records
    assert final_books(adapters[0], 1) == final_books(adapters[1], 1)
    # frames of other kinds (markPrice, replies, trades on OKX, ...) took the generic path and were counted
    recv = sum(1 for r in recs if r["kind"] == "recv")
    assert 0 < adapters[0].generic_frames < recv
    assert adapters[1].generic_frames == 0


def _first(fixtures_dir: Path, name: str, pred: Any) -> dict[str, Any]:
    return next(r for r in read_session(fixtures_dir / "sessions" / name) if r["kind"] == "recv" and pred(r["data"]))


@pytest.mark.parametrize("bad", ["nan", "abc", "inf"])
def test_binance_bad_price_on_the_fast_path_is_counted_and_forces_a_resync(
    fixtures_dir: Path, make_adapter: Any, bad: str
) -> None:
    recs = _records(fixtures_dir, SESSIONS["binance_derivatives"])
    adapter = make_adapter("binance_derivatives", cadence_ms=0)
    replay(adapter, recs)
    sync = adapter.books["SUSHIUSDT"]
    assert sync.synced
    last = next(
        r["data"]
        for r in reversed(recs)
        if r["kind"] == "recv" and r["data"]["data"].get("e") == "depthUpdate" and r["data"]["data"]["s"] == "SUSHIUSDT"
    )
    # the next diff in the chain, built from the recorded one, with one corrupted price
    data = dict(last["data"], U=sync.update_id + 1, u=sync.update_id + 2, pu=sync.update_id, E=last["data"]["E"] + 1)
    data["b"] = [["7.5", "1"], [bad, "2"]]
    out = adapter.on_message("k", orjson.dumps({"stream": last["stream"], "data": data}), 5)
    assert out.events == {"parse_error": 1, "resync": 1} and not out.records
    assert not sync.synced and sync.final_snapshot(400) is None
    # a fresh snapshot is requested at once; the following diff is buffered for it (no second request)
    assert [type(a).__name__ for a in out.actions] == ["FetchSnapshot"]
    data2 = dict(data, U=data["u"] + 1, u=data["u"] + 2, pu=data["u"], b=[["7.5", "3"]])
    out = adapter.on_message("k", orjson.dumps({"stream": last["stream"], "data": data2}), 6)
    assert out.actions == [] and not out.records and len(sync.buffer) == 1


def test_okx_bad_price_on_the_fast_path_fetches_a_rest_snapshot(fixtures_dir: Path, make_adapter: Any) -> None:
    recs = _records(fixtures_dir, SESSIONS["okx_spot"])
    adapter = make_adapter("okx_spot", cadence_ms=0)
    replay(adapter, recs)
    sync = adapter.books["BTC-USDT"]
    assert sync.synced
    upd = _first(
        fixtures_dir,
        "okx.ws.jsonl",
        lambda d: d.get("action") == "update" and d.get("arg", {}).get("instId") == "BTC-USDT",
    )
    frame = orjson.loads(payload_text(upd))
    frame["data"][0]["bids"] = [["nan", "1", "0", "1"]]
    frame["data"][0].pop("seqId", None)
    frame["data"][0].pop("prevSeqId", None)
    out = adapter.on_message("okx_spot/public", orjson.dumps(frame), 7)
    assert out.events == {"parse_error": 1, "resync": 1, "book_snapshot_request": 1} and not out.records
    (fetch,) = out.actions  # a REST snapshot, never an unsubscribe/subscribe pair
    assert type(fetch).__name__ == "FetchSnapshot" and "/api/v5/market/books?instId=BTC-USDT&sz=400" in fetch.url
    assert not sync.synced


def test_frames_that_do_not_fit_the_fast_path_keep_their_generic_handling(
    fixtures_dir: Path, make_adapter: Any, messages: Any
) -> None:
    okx = make_adapter("okx_spot")
    ack = _first(fixtures_dir, "okx.ws.jsonl", lambda d: d.get("event") == "subscribe")
    assert okx.on_message("k", payload_text(ack), 1).events == {}
    assert okx.on_message("k", "pong", 1).events == {}
    assert okx.on_message("k", b"{not json", 1).events == {"parse_error": 1}
    assert okx.generic_frames == 3
    binance = make_adapter("binance_derivatives")
    mark = messages("binance", "funding_rate")["binance/funding_rate/test/linear_swap"]["raw"]
    out = binance.on_message("k", mark, 1)
    assert [type(r).__name__ for r in out.records] == ["FundingRate"] and binance.generic_frames == 1
    ticker = _first(fixtures_dir, "binance_usdm.ws.jsonl", lambda d: d["data"].get("e") == "bookTicker")
    assert binance.on_message("k", payload_text(ticker), 1).events == {"unsupported_message": 1}
    assert binance.on_message("k", b"{not json", 1).events == {"parse_error": 1}
    assert binance.generic_frames == 3


def test_a_long_price_takes_the_generic_path_and_stays_exact(fixtures_dir: Path, make_adapter: Any) -> None:
    """Prices over 15 characters fail the typed decoder (max_length) and are applied by the generic
    path with exact Decimal keys: both adapters end with the same, exact book."""
    recs = _records(fixtures_dir, SESSIONS["binance_derivatives"])
    last = next(
        r["data"]
        for r in reversed(recs)
        if r["kind"] == "recv" and r["data"]["data"].get("e") == "depthUpdate" and r["data"]["data"]["s"] == "SUSHIUSDT"
    )
    books = []
    for fast in (True, False):
        adapter = make_adapter("binance_derivatives", cadence_ms=0)
        adapter.typed_fast_path = fast
        replay(adapter, recs)
        sync = adapter.books["SUSHIUSDT"]
        best_bid = sync.book.best_bid()
        assert best_bid is not None
        # a level 1e-17 above the best bid: the same double as the best bid, a different decimal (still
        # within Decimal(38, 18): a price with more fractional digits is malformed and resyncs the book)
        longer = format(Decimal(best_bid[0]) + Decimal("1e-17"), "f")
        assert len(longer) > 15 and float(longer) == float(best_bid[0])
        uid = sync.update_id
        data = dict(last["data"], U=uid + 1, u=uid + 2, pu=uid, E=last["data"]["E"] + 1, b=[[longer, "7"]], a=[])
        out = adapter.on_message("k", orjson.dumps({"stream": last["stream"], "data": data}), 5)
        assert not out.events and sync.synced
        top = sync.book.top(2)[0]
        assert top == [(longer, "7"), best_bid]
        books.append(sync.book.as_dicts())
    assert books[0] == books[1]
