"""Property tests of the book engine against a naive reference book (hypothesis)."""

from __future__ import annotations

import zlib
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism_dagster.book import Book, Diff, SeqIdSync, Status, UpdateIdSync
from marketprism_dagster.book.sync import PREV_ID_RULE, RANGE_RULE

Ref = dict[str, str]  # price string -> qty string (canonical spellings)


def price(i: int) -> str:
    return f"{Decimal(i) / 10:.1f}"


levels = st.lists(
    st.tuples(st.integers(1, 60), st.sampled_from(["0", "0.000", "1", "2.5", "0.001", "10"])), max_size=12
)


def as_levels(raw: list[tuple[int, str]], bid: bool) -> list[list[str]]:
    # bids live below 10.0, asks above: the book never crosses
    return [[price(i if bid else i + 100), q] for i, q in raw]


def apply_ref(ref: Ref, lv: list[list[str]]) -> None:
    for p, q in lv:
        if Decimal(q) == 0:
            ref.pop(p, None)
        else:
            ref[p] = q


def numeric(ref: Ref) -> dict[Decimal, Decimal]:
    return {Decimal(p): Decimal(q) for p, q in ref.items()}


def naive_checksum(bids: Ref, asks: Ref) -> int:
    b = sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))[:25]
    a = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:25]
    parts: list[str] = []
    for i in range(max(len(b), len(a))):
        if i < len(b):
            parts += list(b[i])
        if i < len(a):
            parts += list(a[i])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


@settings(max_examples=150, deadline=None)
@given(snap_b=levels, snap_a=levels, steps=st.lists(st.tuples(levels, levels), max_size=30), n=st.integers(1, 30))
def test_book_equals_reference_and_top_is_sorted(snap_b, snap_a, steps, n) -> None:
    book, rb, ra = Book(), {}, {}
    b0, a0 = as_levels(snap_b, True), as_levels(snap_a, False)
    book.load(b0, a0)
    apply_ref(rb, b0)
    apply_ref(ra, a0)
    for sb, sa in steps:
        bl, al = as_levels(sb, True), as_levels(sa, False)
        book.apply(bl, al, watch=25)
        apply_ref(rb, bl)
        apply_ref(ra, al)
        assert book.as_dicts() == (numeric(rb), numeric(ra))
        assert book.crc32_checksum() == naive_checksum(rb, ra)
    top_b, top_a = book.top(n)
    assert [Decimal(p) for p, _ in top_b] == sorted(numeric(rb), reverse=True)[:n]
    assert [Decimal(p) for p, _ in top_a] == sorted(numeric(ra))[:n]


def chain(usdm: bool, start: int, sizes: list[int], bodies: list[tuple[list, list]]) -> list[Diff]:
    diffs, prev = [], start
    for i, (k, (b, a)) in enumerate(zip(sizes, bodies, strict=False)):
        first, last = prev + 1, prev + k
        diffs.append(Diff(first, last, prev if usdm else None, 1000 + 400 * i, as_levels(b, True), as_levels(a, False)))
        prev = last
    return diffs


@settings(max_examples=150, deadline=None)
@given(
    usdm=st.booleans(),
    sizes=st.lists(st.integers(1, 4), min_size=4, max_size=25),
    bodies=st.lists(st.tuples(levels, levels), min_size=25, max_size=25),
    snap=st.tuples(levels, levels),
    snap_at=st.integers(0, 3),
    gap_at=st.one_of(st.none(), st.integers(1, 20)),
)
def test_diff_sync_matches_reference_and_gaps_resync(usdm, sizes, bodies, snap, snap_at, gap_at) -> None:
    diffs = chain(usdm, 100, sizes, bodies)
    sync = UpdateIdSync(PREV_ID_RULE if usdm else RANGE_RULE, cadence_ms=1000, depth=50)
    # the snapshot lands inside diff snap_at's range (spot: lastUpdateId+1 in [U, u]; USD-M: in [U, u])
    anchor = diffs[snap_at]
    last_update_id = anchor.first_id - 1 if not usdm else anchor.first_id
    if gap_at is not None and gap_at <= snap_at + 1:
        gap_at = None
    fed = [d for i, d in enumerate(diffs) if i != gap_at]
    buffered = [d for d in fed if d.first_id <= anchor.first_id]
    for d in buffered:
        assert sync.on_diff(d) is Status.BUFFERED
    assert sync.need_snapshot
    sync.snapshot_requested()
    sb, sa = as_levels(snap[0], True), as_levels(snap[1], False)
    assert sync.on_snapshot(last_update_id, sb, sa) is Status.SYNCED
    rb, ra = {}, {}
    apply_ref(rb, sb)
    apply_ref(ra, sa)
    states: dict[int, tuple[dict, dict]] = {}  # update id -> reference state after it
    for d in diffs:
        # USD-M applies the bridging diff even when u == lastUpdateId (idempotent: absolute quantities)
        if (d.last_id >= last_update_id if usdm else d.last_id > last_update_id) and d.first_id <= anchor.first_id:
            apply_ref(rb, d.bids)
            apply_ref(ra, d.asks)
            states[d.last_id] = (numeric(rb), numeric(ra))
    published = sync.ticker.drain()
    gap_seen = False
    for d in fed:
        if d.first_id <= anchor.first_id:
            continue
        status = sync.on_diff(d)
        if gap_at is not None and not gap_seen and diffs.index(d) > gap_at:
            assert status is Status.GAP and not sync.synced and sync.need_snapshot
            gap_seen = True
            published += sync.ticker.drain()
            continue
        if gap_seen:
            assert status is Status.BUFFERED
            assert not sync.ticker.ready  # nothing is published while unsynchronized
            continue
        assert status is Status.APPLIED
        apply_ref(rb, d.bids)
        apply_ref(ra, d.asks)
        states[d.last_id] = (numeric(rb), numeric(ra))
        assert sync.book.as_dicts() == states[d.last_id]
        published += sync.ticker.drain()
    # every published book is exactly the reference state at its update id, and it is the state
    # before the first diff of its tick (timestamp < tick <= next event time)
    for snap_rec in published:
        bids, asks = states[snap_rec.update_id]
        assert {Decimal(p): Decimal(q) for p, q in snap_rec.bids} == dict(sorted(bids.items(), reverse=True)[:50])
        assert {Decimal(p): Decimal(q) for p, q in snap_rec.asks} == dict(sorted(asks.items())[:50])
        assert snap_rec.timestamp < snap_rec.tick and snap_rec.tick % 1000 == 0
    assert gap_seen == (gap_at is not None and gap_at < len(diffs) - 1 and gap_at > snap_at)


@settings(max_examples=150, deadline=None)
@given(
    snap=st.tuples(levels, levels),
    steps=st.lists(st.tuples(levels, levels), min_size=1, max_size=30),
    bad_at=st.one_of(st.none(), st.integers(0, 29)),
    gap=st.booleans(),
)
def test_okx_seq_checksum_sync_never_publishes_a_wrong_book(snap, steps, bad_at, gap) -> None:
    sync = SeqIdSync(cadence_ms=1000, depth=400)
    rb, ra = {}, {}
    sb, sa = as_levels(snap[0], True), as_levels(snap[1], False)
    apply_ref(rb, sb)
    apply_ref(ra, sa)
    assert sync.on_snapshot(10, 500, sb, sa, naive_checksum(rb, ra)) is Status.SYNCED
    states = {10: (numeric(rb), numeric(ra))}
    seq, published, broken = 10, [], False
    for i, (b, a) in enumerate(steps):
        bl, al = as_levels(b, True), as_levels(a, False)
        nb, na = dict(rb), dict(ra)
        apply_ref(nb, bl)
        apply_ref(na, al)
        checksum = naive_checksum(nb, na)
        prev = seq
        if i == bad_at:
            if gap:
                prev = seq - 1  # prevSeqId does not chain
            else:
                checksum ^= 1  # corrupt
        status = sync.on_update(seq + 3, prev, 600 + 300 * i, bl, al, checksum)
        published += sync.ticker.drain()
        if i == bad_at:
            assert status is (Status.GAP if gap else Status.CHECKSUM) and not sync.synced
            broken = True
            continue
        if broken:  # unsynchronized: buffered for the REST snapshot the sync asks for
            assert status is Status.BUFFERED and sync.need_snapshot and not sync.ticker.ready
            continue
        assert status is Status.APPLIED
        seq += 3
        rb, ra = nb, na
        states[seq] = (numeric(rb), numeric(ra))
    assert sync.synced is not broken
    for s in published:
        assert ({Decimal(p): Decimal(q) for p, q in s.bids}, {Decimal(p): Decimal(q) for p, q in s.asks}) == states[
            s.update_id
        ]


def test_replicas_with_different_snapshots_publish_identical_identities() -> None:
    """Two replicas synchronized at different points emit the same (update_id, tick) for shared ticks."""
    bodies = [([(i % 50 + 1, "1")], [(i % 40 + 1, "2")]) for i in range(60)]
    diffs = chain(True, 1000, [2] * 60, bodies)
    out = []
    for start in (3, 17):
        sync = UpdateIdSync(PREV_ID_RULE, cadence_ms=1000, depth=10)
        for d in diffs[: start + 1]:
            sync.on_diff(d)
        sync.snapshot_requested()
        # replica-specific snapshot: the state at diffs[start] computed from scratch
        ref_b: Ref = {}
        ref_a: Ref = {}
        for d in diffs[: start + 1]:
            apply_ref(ref_b, d.bids)
            apply_ref(ref_a, d.asks)
        sync.on_snapshot(diffs[start].last_id, [[p, q] for p, q in ref_b.items()], [[p, q] for p, q in ref_a.items()])
        for d in diffs[start + 1 :]:
            sync.on_diff(d)
        out.append({(s.tick, s.update_id, tuple(s.bids), tuple(s.asks)) for s in sync.ticker.drain()})
    late = out[1]
    assert late and late <= out[0]


def _okx_stream(snap, steps, gaps):  # -> (states by seqId, [(seq, prev, ts, bids, asks)])
    """A venue-side OKX book: seqIds grow by 1-3 per update (``gaps``), each state recorded."""
    rb, ra = {}, {}
    apply_ref(rb, as_levels(snap[0], True))
    apply_ref(ra, as_levels(snap[1], False))
    seq = 100
    states = {seq: (dict(rb), dict(ra))}
    updates = []
    for i, (b, a) in enumerate(steps):
        bl, al = as_levels(b, True), as_levels(a, False)
        apply_ref(rb, bl)
        apply_ref(ra, al)
        nxt = seq + gaps[i % len(gaps)]
        updates.append((nxt, seq, 1_000 + 250 * i, bl, al))
        seq = nxt
        states[seq] = (dict(rb), dict(ra))
    return states, updates


def _levels_of(ref: Ref, bid: bool) -> list[list[str]]:
    keys = sorted(ref, key=Decimal, reverse=bid)
    return [[p, ref[p], "0", "1"] for p in keys]


@settings(max_examples=150, deadline=None)
@given(
    snap=st.tuples(levels, levels),
    steps=st.lists(st.tuples(levels, levels), min_size=4, max_size=30),
    gaps=st.lists(st.integers(1, 3), min_size=1, max_size=5),
    first=st.integers(0, 3),
    snap_at=st.integers(0, 30),
    stale_first=st.booleans(),
    dup_every=st.one_of(st.none(), st.integers(2, 5)),
    zero=st.booleans(),
)
def test_okx_rest_snapshot_bridges_any_buffer_and_never_publishes_a_wrong_book(
    snap, steps, gaps, first, snap_at, stale_first, dup_every, zero
) -> None:
    """State (c): no pushed snapshot. Updates from ``first`` on are buffered; a REST snapshot of the
    venue's state at ``snap_at`` (maybe preceded by one too old to bridge) synchronizes the book;
    every later update (duplicates included, as while two connections overlap) chains. With
    ``zero`` the frames carry checksum 0, otherwise the real one."""
    states, updates = _okx_stream(snap, steps, gaps)
    seqs = sorted(states)
    received = updates[first:]
    # the snapshot is taken while the updates up to some point have already been received
    snap_seq = seqs[min(max(snap_at, first + 1), len(seqs) - 1)]
    sync = SeqIdSync(cadence_ms=0, depth=400)
    published = []
    bridged_at = None
    for k, (seq, prev, ts, bl, al) in enumerate(received):
        checksum = 0 if zero else naive_checksum(*states[seq])
        status = sync.on_update(seq, prev, ts, bl, al, checksum)
        if dup_every and k % dup_every == 0:
            again = sync.on_update(seq, prev, ts, bl, al, checksum)
            assert again in (Status.STALE, Status.BUFFERED)
        published += sync.ticker.drain()
        if status is Status.BUFFERED and sync.need_snapshot:
            sync.snapshot_requested()
        if seq >= snap_seq and bridged_at is None and not sync.synced:
            if stale_first and first > 0:  # a snapshot older than the first buffered prevSeqId
                old = seqs[0]
                ob, oa = states[old]
                st_old = sync.on_rest_snapshot(old, 0, _levels_of(ob, True), _levels_of(oa, False))
                assert st_old is Status.SNAPSHOT_TOO_OLD and not sync.synced and sync.need_snapshot
                sync.snapshot_requested()
            sb, sa = states[snap_seq]
            st_rest = sync.on_rest_snapshot(snap_seq, ts, _levels_of(sb, True), _levels_of(sa, False))
            assert st_rest in (Status.SYNCED, Status.SNAPSHOT_PENDING)
            bridged_at = seq
            published += sync.ticker.drain()
    assert bridged_at is not None and sync.synced and sync.seq_id == seqs[-1]
    for s in published:
        want_b, want_a = states[s.update_id]
        assert ({Decimal(p): Decimal(q) for p, q in s.bids}, {Decimal(p): Decimal(q) for p, q in s.asks}) == (
            numeric(want_b),
            numeric(want_a),
        )
    final = sync.final_snapshot(400)
    assert final is not None and final.update_id == seqs[-1]
    assert {Decimal(p): Decimal(q) for p, q in final.bids} == numeric(states[seqs[-1]][0])


def test_okx_chain_applies_heartbeats_and_sequence_resets_and_ignores_duplicates() -> None:
    sync = SeqIdSync(cadence_ms=0, depth=10)
    assert sync.on_snapshot(10, 500, [["1.0", "1"]], [["2.0", "1"]], 0) is Status.SYNCED
    assert sync.on_update(11, 10, 600, [["1.1", "1"]], [], 0) is Status.APPLIED
    assert sync.on_update(11, 10, 600, [["1.1", "1"]], [], 0) is Status.STALE  # the same update again
    assert sync.on_update(11, 11, 700, [], [], 0) is Status.APPLIED  # no change: seqId == prevSeqId
    assert sync.on_update(3, 11, 800, [["0.9", "2"]], [], 0) is Status.APPLIED  # reset below: chains by prevSeqId
    assert sync.on_update(4, 3, 900, [], [], None) is Status.APPLIED and sync.seq_id == 4
    assert sync.on_update(9, 7, 950, [], [], None) is Status.GAP and not sync.synced and sync.need_snapshot


def test_okx_rest_snapshot_without_seqid_is_never_bridged_to_a_sequenced_stream() -> None:
    sync = SeqIdSync(cadence_ms=0, depth=10)
    assert sync.on_update(11, 10, 600, [["1.1", "1"]], [], 0) is Status.BUFFERED
    sync.snapshot_requested()
    assert sync.on_rest_snapshot(None, 700, [["1.0", "1"]], [["2.0", "1"]]) is Status.SNAPSHOT_TOO_OLD
    assert not sync.synced and sync.need_snapshot and len(sync.buffer) == 1
    sync.snapshot_requested()
    assert sync.on_rest_snapshot(10, 550, [["1.0", "1"]], [["2.0", "1"]]) is Status.SYNCED
    assert sync.seq_id == 11 and sync.book.best_bid() == ("1.1", "1")


def test_okx_first_update_past_a_tick_publishes_the_pushed_snapshots_book() -> None:
    """Cadence 1 s: a pushed snapshot at 1500 ms is the book of tick 2000; the first update at 2100 ms crosses into
    it, so tick 2000 is published with the snapshot's time and seqId, before that update is applied."""
    sync = SeqIdSync(cadence_ms=1000, depth=10)
    assert sync.on_snapshot(10, 1500, [["1.0", "1"]], [["2.0", "1"]], 0) is Status.SYNCED
    assert sync.on_update(11, 10, 1900, [["1.1", "1"]], [], 0) is Status.APPLIED
    assert sync.ticker.drain() == []  # same tick as the snapshot
    assert sync.on_update(12, 11, 2100, [["1.2", "1"]], [], 0) is Status.APPLIED
    [snap] = sync.ticker.drain()
    assert (snap.tick, snap.timestamp, snap.update_id) == (2000, 1900, 11)
    assert snap.bids == [("1.1", "1"), ("1.0", "1")]
    sync.reset()
    assert sync.on_snapshot(20, 3500, [["1.0", "1"]], [["2.0", "1"]], 0) is Status.SYNCED
    assert sync.on_update(21, 20, 4000, [], [["2.1", "1"]], 0) is Status.APPLIED
    [snap] = sync.ticker.drain()
    assert (snap.tick, snap.timestamp, snap.update_id) == (4000, 3500, 20)
    assert snap.asks == [("2.0", "1")]
