"""Fuzzing every adapter entry point with mutated REAL messages (fixtures/sessions, fixtures/messages,
fixtures/documented): no exception escapes an adapter, and no record that is not storable exactly can
pass the collector's pre-publish check and reach the store.

Each example takes one recorded message or body, applies 1-4 mutations (a value replaced by junk:
wrong types, Infinity/NaN, huge and negative numbers, exponent forms, nested junk; a key deleted;
two values swapped; a value wrapped in a list; the text truncated) and feeds it to the entry point
that reads it: ``on_message``, ``on_snapshot``, ``on_rest``, ``on_backfill`` or ``load_instruments``.
Adapters keep their state across examples (books synchronized by the unmutated session first), so
mutations reach the book engine too.

What a record may be is ``validation.fault`` (the collector drops and counts the rest as
``invalid_record``); every record that passes it is run through the writer's decode, validation and
Arrow conversion and must come out unchanged (no dead letter, no wrapped decimal).
"""

from __future__ import annotations

import copy
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketprism_dagster import records, validation
from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import is_instrument_record, payload_text, read_session
from marketprism_dagster.records import RECORD_TYPES, Wire
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import Output, RestPoll, VenueAdapter
from marketprism_dagster.writer.ingest import StreamMessage, prepare_batch

RECEIVED_AT = 1_700_000_000_000
SESSIONS = {
    "binance_spot": ("binance_spot.ws.jsonl", "binance_spot.http.jsonl"),
    "binance_derivatives": ("binance_usdm.ws.jsonl", "binance_usdm.http.jsonl"),
    "okx_spot": ("okx.ws.jsonl", None),
    "okx_derivatives": ("okx.ws.jsonl", None),
    "deribit_derivatives": ("deribit.ws.jsonl", None),
}
DOCUMENTED = {
    "binance_spot": ("binance_spot_orderbook", "binance_spot_trades"),
    "binance_derivatives": (
        "binance_usdm_funding_mark_price",
        "binance_usdm_liquidation",
        "binance_usdm_long_short_ratio",
        "binance_usdm_open_interest",
        "binance_usdm_orderbook",
        "binance_usdm_errors_rate_limits",
    ),
    "okx_spot": ("okx_trades", "okx_orderbook_books", "okx_ws_control"),
    "okx_derivatives": (
        "okx_funding_rate",
        "okx_liquidation_orders",
        "okx_long_short_ratio",
        "okx_open_interest",
        "okx_orderbook_books",
        "okx_trades",
    ),
    "deribit_derivatives": ("deribit_volatility_index", "deribit_ws_control"),
}
MESSAGE_VENUE = {"binance_spot": "binance", "binance_derivatives": "binance", "okx_spot": "okx",
                 "okx_derivatives": "okx"}

# values a venue (or a broken proxy) could put anywhere
JUNK: list[Any] = [
    None, True, False, 0, -1, 1, 2**64, -(2**63), 10**30, 1.5, -0.0, 1e308, math.inf, -math.inf, math.nan,
    "", " ", "0", "-0", "0e0", "-5", "1e30", "1e-30", "abc", "NaN", "Infinity", "-Infinity", " 5", "5 ", "+5", "1_0",
    "0." + "0" * 30 + "1", "9" * 40, "١٢٣", "BTCUSDT", "BTC-USDT", "buy", "sell", "snapshot", "update",
    [], {}, [[]], [["1", "2"]], [["-1", "1"]], [["1", "-0"]], [["abc", "1"]], [[1, 2, 3]], {"a": [1, {"b": None}]},
    [None], [[{"x": 1}, "1"]],
]
KINDS = ("replace", "replace", "replace", "delete", "swap", "wrap", "truncate")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node[:50]):  # long level lists: the first 50 are enough
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        node = node[k]
    return node


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


def mutate(text: str, ops: list[tuple[int, str, int, int]]) -> str:
    """``text`` (JSON) with the mutations applied; Infinity/NaN written as JSON extensions."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text[: len(text) // 2]
    for where, kind, junk, other in ops:
        paths = _paths(doc)
        path = paths[where % len(paths)]
        if kind == "truncate":
            return json.dumps(doc, allow_nan=True)[: max(1, where % max(2, len(text)))]
        if kind == "replace":
            doc = _set(doc, path, copy.deepcopy(JUNK[junk % len(JUNK)]))
        elif kind == "delete" and path:
            parent = _get(doc, path[:-1])
            del parent[path[-1]]
        elif kind == "swap":
            second = paths[other % len(paths)]
            if path and second and path[: len(second)] != second and second[: len(path)] != path:
                a, b = _get(doc, path), _get(doc, second)
                doc = _set(doc, path, b)
                doc = _set(doc, second, a)
        elif kind == "wrap":
            doc = _set(doc, path, [_get(doc, path)])
    return json.dumps(doc, allow_nan=True)


# ------------------------------------------------------------------ seeds


def _documented_jsons(fixtures: Path, names: tuple[str, ...]) -> list[Any]:
    out = []
    for name in names:
        for ex in json.loads((fixtures / "documented" / f"{name}.json").read_text())["examples"]:
            if ex.get("json") is not None and ex.get("direction") != "request":
                out.append(ex["json"])
    return out


def _seeds(fixtures: Path, market: str, adapter: VenueAdapter) -> list[tuple[str, Any, str]]:
    """(entry point, its key argument, body text) for every real message this market reads."""
    ws_file, http_file = SESSIONS[market]
    seeds: list[tuple[str, Any, str]] = []
    for rec in read_session(fixtures / "sessions" / ws_file):
        if rec["kind"] == "recv":
            seeds.append(("message", "k", payload_text(rec)))
    if http_file:
        for rec in read_session(fixtures / "sessions" / http_file):
            sym = rec["url"].split("symbol=")[1].split("&")[0]
            seeds.append(("snapshot", sym, payload_text(rec)))
    venue = MESSAGE_VENUE.get(market)
    if venue:
        for f in sorted((fixtures / "messages" / venue).glob("*.json")):
            for m in json.loads(f.read_text())["messages"]:
                if isinstance(m.get("raw"), str) and m.get("venue", market).split("_")[0] == market.split("_")[0]:
                    seeds.append(("message", "k", m["raw"]))
    polls = list({p.data_type: p for p in adapter.rest_polls()}.values())  # one poll per data type
    for doc in _documented_jsons(fixtures, DOCUMENTED[market]):
        text = json.dumps(doc)
        seeds.append(("message", "k", text))
        for poll in polls:
            seeds.append(("rest", poll, text))
        if market.startswith("okx"):
            seeds.append(("snapshot", next(iter(adapter.instruments)), text))
        if market.startswith("deribit"):
            for name in adapter.instruments:
                seeds.append(("backfill", f"{market}/dvol/{name}", text))
    return seeds


@pytest.fixture(scope="module")
def fuzz_targets(fixtures_dir: Path) -> dict[str, tuple[VenueAdapter, list[tuple[str, Any, str]], dict[str, bytes]]]:
    """Per market: an adapter synchronized by its unmutated session, its seeds and its instrument bodies."""
    cfg = Settings()
    info = {"binance_spot": "binance_spot.info.jsonl", "binance_derivatives": "binance_usdm.info.jsonl",
            "okx_spot": "okx.info.jsonl", "okx_derivatives": "okx.info.jsonl"}
    out = {}
    for market in SESSIONS:
        adapter = adapter_for(market, cfg.markets[market], cfg.orderbook)
        adapter.accept_all_symbols = True
        bodies = {}
        if market in info:
            recs = read_session(fixtures_dir / "sessions" / info[market])
            bodies = {r["url"]: payload_text(r).encode() for r in recs if is_instrument_record(r)}
        adapter.load_instruments(bodies)
        seeds = _seeds(fixtures_dir, market, adapter)
        valid = 0
        for entry, key, text in seeds:  # the real traffic first: books synchronized, marks known
            valid += len(validation.split(_feed(adapter, entry, key, text).records)[0])
        assert valid > 0, market  # the seeds reach the parsers, not only their error paths
        out[market] = (adapter, seeds, bodies)
    return out


def _feed(adapter: VenueAdapter, entry: str, key: Any, text: str) -> Output:
    body = text.encode()
    if entry == "message":
        return adapter.on_message("k", text if len(text) % 2 else body, RECEIVED_AT)
    if entry == "snapshot":
        return adapter.on_snapshot(key, body, RECEIVED_AT)
    if entry == "rest":
        assert isinstance(key, RestPoll)
        return adapter.on_rest(key, body, RECEIVED_AT)
    return adapter.on_backfill(key, body, RECEIVED_AT)


# ------------------------------------------------------------------ what reaches the store


def _decimal_columns(data_type: str) -> list[str]:
    return [c.name for c in RECORD_TYPES[data_type].columns if c.wire in (Wire.DECIMAL, Wire.OPT_DECIMAL)]


def assert_storable_exactly(recs: list[Any]) -> None:
    """Records that pass the collector's check pass the writer's, and Arrow keeps every decimal exactly."""
    messages = [
        StreamMessage(seq, records.subject(r), records.encode(r)) for seq, r in enumerate(recs, start=1)
    ]
    batch = prepare_batch("MARKET_DATA", messages, 1, max(1, len(messages)))
    assert batch.poison == [], [p.reason for p in batch.poison]
    for data_type, tb in batch.tables.items():
        for name in _decimal_columns(data_type):
            stored = tb.table.column(name).to_pylist()
            sent = [getattr(r, name) for r in tb.records]
            assert [None if v is None else Decimal(v) for v in sent] == stored, (data_type, name)
        if data_type == "orderbook":
            for side in ("bids", "asks"):
                stored = tb.table.column(side).to_pylist()
                sent = [[{"price": Decimal(p), "quantity": Decimal(q)} for p, q in getattr(r, side)]
                        for r in tb.records]
                assert sent == stored


MUTATIONS = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(KINDS), st.integers(0, 10**6), st.integers(0, 10**6)),
    min_size=0,
    max_size=4,
)


def chain_to_book(adapter: Any, text: str) -> str:
    """A recorded book update re-numbered to follow the adapter's live book (else it is merely stale), so
    the mutations reach the level engine; any other message unchanged."""
    try:
        msg = json.loads(text)
    except ValueError:
        return text
    if not isinstance(msg, dict):
        return text
    data = msg.get("data")
    if isinstance(data, dict) and data.get("e") == "depthUpdate":  # Binance
        sync = adapter.books.get(data.get("s"))
        if sync is not None and sync.synced and sync.bridged:
            uid = sync.update_id
            data.update(U=uid + 1, u=uid + 1, pu=uid)
            return json.dumps(msg)
    arg = msg.get("arg")
    if isinstance(arg, dict) and arg.get("channel") == "books" and msg.get("action") == "update":  # OKX
        sync = adapter.books.get(arg.get("instId"))
        if sync is not None and sync.synced and sync.seq_id is not None and isinstance(data, list) and data:
            data[0].update(prevSeqId=sync.seq_id, seqId=sync.seq_id + 1, checksum=0)
            return json.dumps(msg)
    return text


def restore_books(adapter: Any, saved: dict[str, Any]) -> None:
    """Books a previous example dropped (a resync) are put back as synchronized by the session."""
    for sym, sync in list(getattr(adapter, "books", {}).items()):
        if not sync.synced and sym in saved:
            adapter.books[sym] = copy.deepcopy(saved[sym])


@pytest.mark.parametrize("market", list(SESSIONS))
def test_mutated_real_messages_never_raise_and_only_valid_records_reach_the_store(
    market: str, fuzz_targets: dict[str, Any]
) -> None:
    adapter, seeds, _ = fuzz_targets[market]
    saved = {sym: copy.deepcopy(sync) for sym, sync in getattr(adapter, "books", {}).items() if sync.synced}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(seed=st.integers(0, len(seeds) - 1), ops=MUTATIONS)
    def run(seed: int, ops: list[tuple[int, str, int, int]]) -> None:
        entry, key, text = seeds[seed]
        restore_books(adapter, saved)
        if entry == "message":
            text = chain_to_book(adapter, text)
        out = _feed(adapter, entry, key, mutate(text, ops) if ops else text)  # any exception fails the test
        good, _invalid = validation.split(out.records)  # the collector counts and drops the invalid ones
        for r in out.records:  # the book engine's promise (the collector does not re-check levels)
            if records.data_type_of(r) == "orderbook":
                assert validation.book_fault(r.bids, r.asks, r.depth) is None
        if good:
            assert_storable_exactly(good)

    run()


@pytest.mark.parametrize("market", ["binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives"])
def test_mutated_instrument_listings_load_the_rest_or_fail_with_value_error(
    market: str, fuzz_targets: dict[str, Any]
) -> None:
    _, _, bodies = fuzz_targets[market]
    cfg = Settings()
    ((url, body),) = list(bodies.items())[:1]
    listing = json.loads(body)  # the first 20 entries: every shape of the listing, mutated quickly
    key = "symbols" if isinstance(listing.get("symbols"), list) else "data"
    text = json.dumps(dict(listing, **{key: listing[key][:20]}))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(ops=MUTATIONS)
    def run(ops: list[tuple[int, str, int, int]]) -> None:
        adapter = adapter_for(market, cfg.markets[market], cfg.orderbook)
        adapter.accept_all_symbols = True
        try:
            instruments = adapter.load_instruments({url: mutate(text, ops).encode()})
        except ValueError:
            return  # the listing as a whole is unreadable: the runtime retries with backoff
        for sym, inst in instruments.items():
            assert isinstance(sym, str) and sym == inst.exchange_symbol and inst.symbol.count("-") >= 1
            assert inst.contract_value is None or inst.contract_value > 0

    run()


