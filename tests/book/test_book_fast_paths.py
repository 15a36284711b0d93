"""The book's fast paths (float order keys, tuple levels) against the exact Decimal reference.

Float keys are used only where they provably order exactly (<= 15-character prices); anything
else switches the book to Decimal keys. These tests feed spellings that stress that boundary:
equal values spelled differently, prices whose doubles collide, long prices. (Exponent forms are
not a venue's level format: the book rejects them, see test_book_validation.py.)
"""

from __future__ import annotations

import zlib
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism_dagster.book import Book, Diff, SeqIdSync, Status, UpdateIdSync
from marketprism_dagster.book.sync import PREV_ID_RULE, RANGE_RULE

Ref = dict[Decimal, tuple[str, str]]  # exact price -> latest (price, qty) spelling


def apply_ref(ref: Ref, levels: list[tuple[str, str]]) -> None:
    for p, q in levels:
        if Decimal(q) == 0:
            ref.pop(Decimal(p), None)
        else:
            ref[Decimal(p)] = (p, q)


def naive_checksum(bids: Ref, asks: Ref) -> int:
    b = [bids[k] for k in sorted(bids, reverse=True)[:25]]
    a = [asks[k] for k in sorted(asks)[:25]]
    parts: list[str] = []
    for i in range(max(len(b), len(a))):
        if i < len(b):
            parts += list(b[i])
        if i < len(a):
            parts += list(a[i])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


# Price spellings around the float-key boundary. Bids use 1..9.x, asks 10..19.x, so sides never cross.
_SHORT = [f"{i / 10:.1f}" for i in range(10, 100)]  # 1.0 .. 9.9
_VARIANTS = ["7.5", "7.50", "7.500000", "07.5", "7.5000000000000", "7.50000000000000000"]  # one value
_COLLIDE = ["1.00000000000000001", "1.00000000000000002", "1.000000000000000015", "1.0000000000000000"]  # one double
_LONG = ["3.14159265358979323", "3.14159265358979324", "2.718281828459045235"]


def _price(bid: bool) -> st.SearchStrategy[str]:
    base = st.sampled_from(_SHORT + _VARIANTS + _COLLIDE + _LONG)
    return base if bid else base.map(lambda p: "1" + p.lstrip("0"))


_qty = st.sampled_from(["0", "0.000", "0.", "1", "2.5", "0.001", "10", "1.50"])


def _levels(bid: bool) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.lists(st.tuples(_price(bid), _qty), max_size=10)


@settings(max_examples=200, deadline=None)
@given(
    snap=st.tuples(_levels(True), _levels(False)),
    steps=st.lists(st.tuples(_levels(True), _levels(False)), max_size=20),
    n=st.integers(1, 30),
    kind=st.sampled_from(["apply", "pairs", "quads", "mixed"]),
)
def test_fast_paths_equal_the_exact_reference(snap, steps, n, kind) -> None:
    book, rb, ra = Book(), {}, {}
    book.load(snap[0], snap[1])
    apply_ref(rb, snap[0])
    apply_ref(ra, snap[1])
    for i, (b, a) in enumerate(steps):
        # "mixed": the paths alternate on one book
        path = ("quads", "apply", "quads", "pairs")[i % 4] if kind == "mixed" else kind
        if path == "apply":
            book.apply([list(lv) for lv in b], [list(lv) for lv in a], watch=25)
        # short_prices=True is the decoder's promise (<= 15 characters); make it only when true
        short = i % 2 == 1 and all(len(p) <= 15 for p, _ in b + a)
        if path == "pairs":
            book.apply_pairs(b, a, short_prices=short)
        elif path == "quads":
            quads_b = [(p, q, "0", "1") for p, q in b]
            book.apply_quads(quads_b, [(p, q, "0", "1") for p, q in a], watch=25, short_prices=short)
        apply_ref(rb, b)
        apply_ref(ra, a)
        assert book.as_dicts() == ({k: Decimal(v[1]) for k, v in rb.items()}, {k: Decimal(v[1]) for k, v in ra.items()})
        assert book.crc32_checksum() == naive_checksum(rb, ra)
    top_b, top_a = book.top(n)
    # the latest spelling of each level is what is published, best first
    assert top_b == [rb[k] for k in sorted(rb, reverse=True)[:n]]
    assert top_a == [ra[k] for k in sorted(ra)[:n]]
    assert (book.bid_count, book.ask_count) == (len(rb), len(ra))


def test_prices_with_colliding_doubles_stay_distinct_levels() -> None:
    assert float("1.00000000000000001") == float("1.00000000000000002") == 1.0
    book = Book()  # the long price switches the book to exact keys at load
    book.load([("0.9", "1")], [("1.00000000000000001", "1"), ("1", "2")])
    book.apply_pairs([], [("1.00000000000000002", "3")])
    assert book.top(5)[1] == [("1", "2"), ("1.00000000000000001", "1"), ("1.00000000000000002", "3")]
    # the same collision arriving after the book started in fast mode
    book = Book()
    book.load([("0.9", "1")], [("1", "2")])
    book.apply_pairs([], [("1.00000000000000001", "5")])
    assert book.top(5)[1] == [("1", "2"), ("1.00000000000000001", "5")]
    book.apply([], [["1.000000000000000010", "0"]])  # the same value: removes it
    assert book.top(5)[1] == [("1", "2")]
    assert book.as_dicts()[1] == {Decimal(1): Decimal(2)}


def test_equal_values_spelled_differently_are_one_level_with_the_latest_spelling() -> None:
    book = Book()
    book.load([("7.5", "1")], [("8", "1")])
    book.apply_pairs([("7.50", "2")], [])
    assert book.top(5)[0] == [("7.50", "2")]
    book.apply_quads([("7.500", "0", "0", "0")], [])
    assert book.top(5)[0] == [] and book.bid_count == 0


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", "-inf", "1,5", ""])
def test_bad_prices_raise_value_error(bad: str) -> None:
    book = Book()
    book.load([("1", "1")], [("2", "1")])
    with pytest.raises(ValueError):
        book.apply_pairs([(bad, "1")], [])
    with pytest.raises(ValueError):
        Book().load([(bad, "1")], [])


def test_a_bad_level_desynchronizes_instead_of_keeping_a_half_applied_book() -> None:
    sync = UpdateIdSync(PREV_ID_RULE, cadence_ms=1000, depth=10)
    sync.on_diff(Diff(10, 12, 9, 1000, [["1.0", "1"]], [["2.0", "1"]]))
    sync.snapshot_requested()
    assert sync.on_snapshot(11, [["1.0", "1"]], [["2.0", "1"]]) is Status.SYNCED
    with pytest.raises(ValueError):
        sync.on_update_pairs(13, 14, 12, 1100, [("1.1", "1"), ("nan", "1")], [])
    assert not sync.synced and sync.need_snapshot and sync.final_snapshot(10) is None

    okx = SeqIdSync(cadence_ms=1000, depth=10)
    ref_b, ref_a = {Decimal("1.0"): ("1.0", "1")}, {Decimal("2.0"): ("2.0", "1")}
    assert okx.on_snapshot(1, 500, [["1.0", "1"]], [["2.0", "1"]], naive_checksum(ref_b, ref_a)) is Status.SYNCED
    with pytest.raises(ValueError):
        okx.on_update(2, 1, 600, [("1.1", "1", "0", "1"), ("abc", "1", "0", "1")], [], 0, quads=True)
    assert not okx.synced and okx.final_snapshot(10) is None
    assert okx.on_update(3, 2, 700, [], [], None) is Status.BUFFERED and okx.need_snapshot


def test_checksum_is_verified_on_every_update_even_when_the_top_is_unchanged() -> None:
    okx = SeqIdSync(cadence_ms=0, depth=10)
    bids = [(f"{i}.0", "1") for i in range(1, 40)]
    asks = [(f"{i}.0", "1") for i in range(100, 140)]
    rb: Ref = {}
    ra: Ref = {}
    apply_ref(rb, bids)
    apply_ref(ra, asks)
    good = naive_checksum(rb, ra)
    assert okx.on_snapshot(1, 500, bids, asks, good) is Status.SYNCED
    deep = [("139.0", "5", "0", "1")]  # below the top 25: the cached checksum is compared
    assert okx.on_update(2, 1, 600, [], deep, good, quads=True) is Status.APPLIED
    assert okx.checksums_verified == 2
    assert okx.on_update(3, 2, 700, [], [("138.0", "6", "0", "1")], good ^ 1, quads=True) is Status.CHECKSUM
    assert not okx.synced


@settings(max_examples=150, deadline=None)
@given(
    usdm=st.booleans(),
    sizes=st.lists(st.integers(1, 3), min_size=3, max_size=20),
    bodies=st.lists(st.tuples(_levels(True), _levels(False)), min_size=20, max_size=20),
    snap=st.tuples(_levels(True), _levels(False)),
    snap_at=st.integers(0, 2),
    drop=st.sets(st.integers(1, 19), max_size=2),
    stale=st.sets(st.integers(1, 19), max_size=2),
)
def test_update_pairs_path_equals_the_diff_path(usdm, sizes, bodies, snap, snap_at, drop, stale) -> None:
    """``UpdateIdSync.on_update_pairs`` (hot path) == ``on_diff`` (reference) on random chains with
    dropped diffs (gaps) and replayed old diffs (stale): same statuses, books, published snapshots."""
    diffs, prev = [], 100
    for i, (k, (b, a)) in enumerate(zip(sizes, bodies, strict=False)):
        diffs.append(Diff(prev + 1, prev + k, prev if usdm else None, 1000 + 350 * i, b, a))
        prev += k
    feed = []
    for i, d in enumerate(diffs):
        if i in drop:
            continue
        feed.append(d)
        if i in stale:
            feed.append(diffs[i - 1])
    rule = PREV_ID_RULE if usdm else RANGE_RULE
    ref, hot = UpdateIdSync(rule, 1000, 20), UpdateIdSync(rule, 1000, 20)
    anchor = diffs[snap_at]
    last_update_id = anchor.first_id if usdm else anchor.first_id - 1
    snapped = False
    for d in feed:
        a = ref.on_diff(d)
        b = hot.on_update_pairs(d.first_id, d.last_id, d.prev_id, d.event_ms, d.bids, d.asks)
        assert a is b
        if not snapped and d.first_id >= anchor.first_id:
            for sync in (ref, hot):
                sync.snapshot_requested()
                sync.on_snapshot(last_update_id, snap[0], snap[1])
            snapped = True
        assert ref.book.as_dicts() == hot.book.as_dicts() and ref.book.top(20) == hot.book.top(20)
        assert (ref.synced, ref.bridged, ref.update_id, ref.need_snapshot) == (
            hot.synced,
            hot.bridged,
            hot.update_id,
            hot.need_snapshot,
        )
        assert ref.ticker.drain() == hot.ticker.drain()


def test_binance_spot_diff_overlapping_the_local_id_is_applied_not_a_gap() -> None:
    """Binance spot (docs, 2025+): after the bridge an event applies while ``U <= local + 1``; the
    levels are absolute quantities, so an overlap is harmless. Only ``U > local + 1`` is a gap."""
    sync = UpdateIdSync(RANGE_RULE, cadence_ms=0, depth=10)
    assert sync.on_diff(Diff(95, 105, None, 1, [["1.0", "1"]], [])) is Status.BUFFERED
    sync.snapshot_requested()
    assert sync.on_snapshot(100, [["1.0", "2"]], [["2.0", "1"]]) is Status.SYNCED
    assert sync.update_id == 105
    assert sync.on_diff(Diff(103, 110, None, 2, [["1.1", "3"]], [])) is Status.APPLIED  # overlaps 103..105
    assert sync.on_update_pairs(108, 112, None, 3, [("1.2", "4")], []) is Status.APPLIED  # the fast path too
    assert sync.update_id == 112 and sync.book.best_bid() == ("1.2", "4")
    assert sync.on_diff(Diff(110, 112, None, 4, [], [])) is Status.STALE  # nothing new
    assert sync.on_diff(Diff(114, 120, None, 5, [], [])) is Status.GAP and not sync.synced
