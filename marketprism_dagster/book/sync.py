"""Exchange-exact book synchronization and wall-clock aligned publishing.

Two generic rules; a venue module picks one and passes its parameters:

* ``UpdateIdSync``: diffs carry an update-id range ``[U, u]`` and books start from a REST snapshot
  (``lastUpdateId``), diffs buffered meanwhile. The chain rule is a parameter: ``RANGE_RULE`` (the
  first applied diff bridges ``lastUpdateId + 1``, then a diff applies while ``U <= prev u + 1``
  (an overlap is valid) and ``u > prev u``) or ``PREV_ID_RULE`` (the first applied diff has
  ``U <= lastUpdateId <= u``, then each diff names the previous one: ``pu == prev u``).
* ``SeqIdSync``: updates chained by sequence ids (``prevSeqId == previous seqId``), from a snapshot
  pushed in the stream or a REST snapshot bridged by sequence id, optionally verified by a CRC32
  checksum of the top ``checksum_levels`` levels after EVERY message (0 = none).

Any gap or mismatch drops the book to unsynchronized; nothing is published until a fresh snapshot
synchronizes it again.

Windows without a valid book (``SyncWindows``, on both syncs as ``windows``): from the event time of the
last update applied to a valid book when it is dropped (gap, mismatch, bad level, reconnect) to the event
time of the first valid book again; the collector drains them as ``book_unsynced`` source gaps.

Publishing (``Ticker``): the snapshot for tick T is the book after every update whose
exchange event time is < T; it is taken when the first update with event time >= T arrives,
before that update is applied. Its fields are tick=T, timestamp=event time of the last
applied update, update_id=last applied id. Two replicas that see the same updates therefore
produce the same (symbol, update_id) identities. ``cadence_ms == 0`` publishes after every
applied update with tick = its event time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from marketprism_dagster.book.levels import Book, Level


class Status(IntEnum):
    APPLIED = 0
    BUFFERED = 1  # waiting for a snapshot; the caller should fetch one if ``need_snapshot``
    STALE = 2  # older than the book, ignored (normal right after a snapshot)
    GAP = 3  # sequence broken: book dropped, resync needed
    CHECKSUM = 4  # checksum mismatch: book dropped, resync needed
    IGNORED = 5  # not synchronized (waiting for a snapshot from the stream)
    SYNCED = 6  # a snapshot synchronized the book
    SNAPSHOT_TOO_OLD = 7  # snapshot predates the buffered diffs: fetch another
    SNAPSHOT_PENDING = 8  # snapshot loaded, waiting for the diff that bridges it
    CROSSED = 9  # best bid >= best ask: book dropped, resync needed
    TOO_DEEP = 10  # a side holds more than ``max_levels`` levels: book dropped, resync needed


# Enum member access costs ~60 ns in Python 3.11 (a descriptor); the hot paths use these aliases
# (the very same objects, so ``st is Status.APPLIED`` keeps working for callers).
APPLIED = Status.APPLIED
CHECKSUM = Status.CHECKSUM
GAP = Status.GAP
IGNORED = Status.IGNORED
SYNCED = Status.SYNCED
MAX_LEVELS = 10_000  # default levels per side before a book is dropped and resynchronized
_FAULT_STATUS = {"book_crossed": Status.CROSSED, "book_too_deep": Status.TOO_DEEP}
_FAULT_STATUSES = frozenset(_FAULT_STATUS.values())
BOOK_FAULT_EVENTS = {status: event for event, status in _FAULT_STATUS.items()}  # metric event of each status
RANGE_RULE = "range"  # UpdateIdSync: each diff must reach the local id + 1 (overlaps valid)
PREV_ID_RULE = "prev_id"  # UpdateIdSync: each diff names the last id of the one before it


_NEVER = 1 << 62  # a tick boundary no event time reaches (nothing applied yet, or cadence 0)


class SyncWindows:
    """Windows without a valid book, in exchange event ms. ``lost`` when a valid book is dropped (its last
    applied event time; the last valid time when it has none), ``back`` when a book is valid again; closed
    windows wait in ``closed`` until the caller drains them. The book's first synchronization opens none."""

    __slots__ = ("closed", "lost_ms", "valid_ms")

    def __init__(self) -> None:
        self.lost_ms: int | None = None  # an open window's start
        self.valid_ms: int | None = None  # the last time the book became valid
        self.closed: list[tuple[int, int]] = []

    def lost(self, last_ms: int | None) -> None:
        if self.lost_ms is None:
            self.lost_ms = last_ms if last_ms is not None else self.valid_ms

    def back(self, ms: int) -> None:
        self.valid_ms = ms
        if self.lost_ms is not None:
            self.closed.append((self.lost_ms, max(ms, self.lost_ms)))
            self.lost_ms = None

    def drain(self) -> list[tuple[int, int]]:
        out, self.closed = self.closed, []
        return out


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """A top-N view ready to become an ``orderbook`` record (levels in venue strings/units)."""

    tick: int
    timestamp: int
    update_id: int
    bids: list[Level]
    asks: list[Level]


class Ticker:
    """Decides when a synchronized book is published (see module docstring)."""

    __slots__ = ("cadence_ms", "depth", "last_event_ms", "next_tick_ms", "ready")

    def __init__(self, cadence_ms: int, depth: int) -> None:
        self.cadence_ms = cadence_ms
        self.depth = depth
        self.last_event_ms: int | None = None
        # the first event time of the tick after ``last_event_ms`` (cadence > 0; else never): an update at or past
        # it crosses into a new tick, so ``before`` is one comparison per update
        self.next_tick_ms = _NEVER
        self.ready: list[BookSnapshot] = []

    def reset(self) -> None:
        self.last_event_ms = None
        self.next_tick_ms = _NEVER

    def seen(self, event_ms: int) -> None:
        """The book is valid as of ``event_ms`` (a snapshot loaded): updates are ticked from there."""
        c = self.cadence_ms
        self.last_event_ms = event_ms
        self.next_tick_ms = event_ms - event_ms % c + c if c > 0 else _NEVER

    def before(self, book: Book, event_ms: int, update_id: int | None) -> None:
        """Before an update with event time ``event_ms`` is applied: publish the tick it crosses into (the book
        of every earlier update; ``update_id`` the last applied id, None: nothing applied yet)."""
        if event_ms >= self.next_tick_ms and update_id is not None:
            last = self.last_event_ms
            assert last is not None  # next_tick_ms is set with it
            self.publish(book, event_ms - event_ms % self.cadence_ms, last, update_id)

    def after(self, book: Book, event_ms: int, update_id: int) -> None:
        """After the update (now id ``update_id``) is applied: with cadence 0 publish it, and remember its time."""
        c = self.cadence_ms
        if c > 0:
            self.next_tick_ms = event_ms - event_ms % c + c
        else:
            self.publish(book, event_ms, event_ms, update_id)
        self.last_event_ms = event_ms

    def publish(self, book: Book, tick: int, timestamp: int, update_id: int) -> None:
        """Copy the book's top ``depth`` levels (two list slices) into a ready snapshot."""
        bids, asks = book.top(self.depth)
        self.ready.append(BookSnapshot(tick, timestamp, update_id, bids, asks))

    def drain(self) -> list[BookSnapshot]:
        out, self.ready = self.ready, []
        return out


@dataclass(slots=True)
class Diff:
    first_id: int  # U
    last_id: int  # u
    prev_id: int | None  # pu under PREV_ID_RULE, else None
    event_ms: int
    bids: Sequence[Sequence[str]]
    asks: Sequence[Sequence[str]]


class UpdateIdSync:
    """Update-id diff synchronization for one symbol (``rule``: ``RANGE_RULE`` or ``PREV_ID_RULE``).

    Feed every diff to ``on_diff`` and every REST snapshot body to ``on_snapshot``. When a
    call leaves ``need_snapshot`` True the caller fetches a snapshot (then calls
    ``snapshot_requested()``). ``synced`` is True only while the book is exact.
    """

    def __init__(
        self, rule: str, cadence_ms: int, depth: int, max_buffer: int = 5000, max_levels: int = MAX_LEVELS
    ) -> None:
        if rule not in (RANGE_RULE, PREV_ID_RULE):
            raise ValueError(f"rule must be {RANGE_RULE!r} or {PREV_ID_RULE!r}, got {rule!r}")
        self.prev_id_chain = rule == PREV_ID_RULE
        self.max_levels = max_levels
        self.book = Book()
        self.ticker = Ticker(cadence_ms, depth)
        self.buffer: deque[Diff] = deque(maxlen=max_buffer)
        self.synced = False
        self.bridged = False  # first diff after the snapshot applied
        self.update_id: int | None = None  # last applied u (or snapshot lastUpdateId)
        self.timestamp: int | None = None  # event time of the last applied diff
        self.need_snapshot = False
        self.snapshot_inflight = False
        self.buffer_drops = 0
        self.windows = SyncWindows()

    def reset(self) -> None:
        """Forget everything (e.g. the feed reconnected)."""
        if self.synced:
            self.windows.lost(self.timestamp)
        self.book.clear()
        self.buffer.clear()
        self.ticker.reset()
        self.synced = self.bridged = False
        self.update_id = self.timestamp = None
        self.need_snapshot = self.snapshot_inflight = False

    def snapshot_requested(self) -> None:
        self.need_snapshot = False
        self.snapshot_inflight = True

    def _desync(self) -> None:
        if self.synced:
            self.windows.lost(self.timestamp)
        self.book.clear()
        self.buffer.clear()
        self.ticker.reset()
        self.synced = self.bridged = False
        self.update_id = None
        self.need_snapshot = True
        self.snapshot_inflight = False

    def _drop_faulty(self, fault: str, d: Diff) -> Status:
        """The update left the book crossed or too deep: drop it, keep the update for the next snapshot."""
        self._desync()
        self._buffer(d)
        return _FAULT_STATUS[fault]

    def _buffer(self, d: Diff) -> Status:
        if len(self.buffer) == self.buffer.maxlen:
            self.buffer_drops += 1
        self.buffer.append(d)
        if not self.snapshot_inflight:
            self.need_snapshot = True
        return Status.BUFFERED

    def on_diff(self, d: Diff) -> Status:
        if not self.synced:
            return self._buffer(d)
        return self._apply(d.first_id, d.last_id, d.prev_id, d.event_ms, d.bids, d.asks, d)

    def on_update_pairs(
        self,
        first_id: int,
        last_id: int,
        prev_id: int | None,
        event_ms: int,
        bids: Sequence[Level],
        asks: Sequence[Level],
        short_prices: bool = False,
    ) -> Status:
        """``on_diff`` for levels that are (price, qty) TUPLES (see ``Book.apply_pairs``, also for
        ``short_prices``), without building a ``Diff`` unless it has to be buffered: the hot path.

        The chained case (synchronized, bridged, ``pu == u`` or ``U == u + 1``) is ``_apply``
        inlined; everything else goes through ``_apply``.
        """
        last = self.update_id
        # bridged implies synced; anything but the plain chained case takes the general path
        if not self.bridged or (
            prev_id != last if prev_id is not None and self.prev_id_chain else first_id != last + 1  # type: ignore[operator]
        ):
            if not self.synced:
                return self._buffer(Diff(first_id, last_id, prev_id, event_ms, bids, asks))
            return self._apply(first_id, last_id, prev_id, event_ms, bids, asks, None)
        book = self.book
        ticker = self.ticker
        try:
            ticker.before(book, event_ms, last)
            book.apply_pairs(bids, asks, short_prices)
        except Exception:
            self._desync()  # a level the book could not take (bad price): never keep a half-applied book
            raise
        fault = book.fault(self.max_levels)
        if fault is not None:
            return self._drop_faulty(fault, Diff(first_id, last_id, prev_id, event_ms, bids, asks))
        self.update_id = last_id
        self.timestamp = event_ms
        ticker.after(book, event_ms, last_id)
        return APPLIED

    def _apply(
        self,
        first_id: int,
        last_id: int,
        prev_id: int | None,
        event_ms: int,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        d: Diff | None,
    ) -> Status:
        last = self.update_id
        assert last is not None
        bridging = False
        if self.bridged:
            if self.prev_id_chain and prev_id is not None:
                ok = prev_id == last
            else:
                # RANGE_RULE: an event overlapping the local id is valid (levels are absolute
                # quantities); only U > local + 1 is a gap
                if last_id <= last:
                    return Status.STALE
                ok = first_id <= last + 1
        else:
            if self.prev_id_chain:
                if last_id < last:
                    return Status.STALE
                ok = first_id <= last <= last_id
            else:
                if last_id <= last:
                    return Status.STALE
                ok = first_id <= last + 1 <= last_id
            if ok:
                self.bridged = bridging = True
        if not ok:
            self._desync()
            self._buffer(d or Diff(first_id, last_id, prev_id, event_ms, bids, asks))
            return Status.GAP
        book = self.book
        ticker = self.ticker
        try:
            ticker.before(book, event_ms, last)
            book.apply(bids, asks)
        except Exception:
            self._desync()  # a level the book could not take (bad price): never keep a half-applied book
            raise
        fault = book.fault(self.max_levels)
        if fault is not None:
            return self._drop_faulty(fault, d or Diff(first_id, last_id, prev_id, event_ms, bids, asks))
        self.update_id = last_id
        self.timestamp = event_ms
        if bridging:  # the first valid book since the snapshot
            self.windows.back(event_ms)
        ticker.after(book, event_ms, last_id)
        return APPLIED

    def final_snapshot(self, depth: int) -> BookSnapshot | None:
        """The current book if synchronized and bridged (tick = timestamp = last event time)."""
        if not (self.synced and self.bridged) or self.update_id is None or self.timestamp is None:
            return None
        bids, asks = self.book.top(depth)
        return BookSnapshot(self.timestamp, self.timestamp, self.update_id, bids, asks)

    def on_snapshot(self, last_update_id: int, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> Status:
        self.snapshot_inflight = False
        buffered = list(self.buffer)
        self.buffer.clear()
        # a snapshot older than the first buffered diff cannot be bridged: fetch another
        if buffered:
            first = buffered[0]
            too_old = last_update_id < first.first_id if self.prev_id_chain else last_update_id + 1 < first.first_id
            if too_old:
                self.buffer.extend(buffered)
                self.need_snapshot = True
                return Status.SNAPSHOT_TOO_OLD
        try:
            self.book.load(bids, asks)
        except Exception:
            self._desync()  # a level the book could not take: fetch another snapshot
            raise
        fault = self.book.fault(self.max_levels)
        if fault is not None:  # a crossed or too deep snapshot: fetch another
            self._desync()
            self.buffer.extend(buffered)
            return _FAULT_STATUS[fault]
        self.ticker.reset()
        self.update_id = last_update_id
        self.timestamp = None
        self.synced = True
        self.bridged = False
        self.need_snapshot = False
        for d in buffered:
            st = self._apply(d.first_id, d.last_id, d.prev_id, d.event_ms, d.bids, d.asks, d)
            if st is Status.GAP or st in _FAULT_STATUSES:
                # the buffer itself is broken after the snapshot (or breaks the book): _apply re-buffered d
                return st
        return Status.SYNCED if self.bridged else Status.SNAPSHOT_PENDING


_Buffered = tuple[int | None, int | None, int, Sequence[Sequence[str]], Sequence[Sequence[str]], int | None]


class SeqIdSync:
    """Sequence-id chained book synchronization for one instrument, in three protocol states.

    (a) a snapshot in the stream and a real CRC32 ``checksum`` on every push (verified on every
        message);
    (b) the same with ``checksum`` always 0: a zero or absent checksum means "no checksum",
        integrity rests on the ``prevSeqId == previous seqId`` chain;
    (c) no snapshot in the stream: updates are buffered, a REST snapshot is loaded with
        ``on_rest_snapshot`` and bridged by sequence ids: a snapshot whose ``seqId`` is below the
        first buffered ``prevSeqId`` is too old (fetch another); buffered updates with
        ``seqId <= snapshot seqId`` are dropped; the first applied one has
        ``prevSeqId <= snapshot seqId < seqId``; then chain.

    A pushed snapshot (states a, b) synchronizes the book directly; a REST snapshot is the
    recovery in every state: after a gap or a checksum mismatch the book drops to
    unsynchronized, buffers, and ``need_snapshot`` asks the caller for a REST snapshot (never a
    resubscribe). An update whose ``seqId`` is not above the book's (a duplicate, e.g. while two
    connections overlap) is ``STALE`` and ignored; an update that chains (``prevSeqId`` equal to
    the book's ``seqId``) is applied even when its ``seqId`` does not grow (a no-change heartbeat,
    a sequence reset after maintenance). Recordings without ``seqId`` (before
    2023) cannot be chained: their updates apply in arrival order and only a real checksum, when
    present, verifies them.
    """

    def __init__(
        self,
        cadence_ms: int,
        depth: int,
        max_buffer: int = 2000,
        max_levels: int = MAX_LEVELS,
        checksum_levels: int = 25,
    ) -> None:
        self.max_levels = max_levels
        self.checksum_levels = checksum_levels  # levels per side the venue's checksum covers
        self.book = Book()
        self.ticker = Ticker(cadence_ms, depth)
        self.synced = False
        self.bridged = True  # False between a REST snapshot and the first update chained to it
        self.seq_id: int | None = None
        self.timestamp: int | None = None
        self.checksums_verified = 0
        self._crc: int | None = None  # cached checksum while the top levels are unchanged
        # updates received while unsynchronized: (seqId, prevSeqId, ts, bids, asks, checksum)
        self.buffer: deque[_Buffered] = deque(maxlen=max_buffer)
        self.need_snapshot = False
        self.snapshot_inflight = False
        self.buffer_drops = 0
        self.windows = SyncWindows()

    def reset(self) -> None:
        """Forget everything (e.g. the feed reconnected)."""
        self._drop()
        self.buffer.clear()
        self.need_snapshot = self.snapshot_inflight = False

    def _drop(self) -> None:
        if self.synced:
            self.windows.lost(self.timestamp)
        self.book.clear()
        self.ticker.reset()
        self.synced = False
        self.bridged = True
        self.seq_id = self.timestamp = None
        self._crc = None

    def _desync(self) -> None:
        """A gap or a mismatch: drop the book and ask for a REST snapshot."""
        self._drop()
        self.buffer.clear()
        self.need_snapshot = not self.snapshot_inflight

    def snapshot_requested(self) -> None:
        self.need_snapshot = False
        self.snapshot_inflight = True

    def snapshot_failed(self) -> None:
        """The REST snapshot could not be fetched or read: ask again."""
        self.snapshot_inflight = False
        self.need_snapshot = not self.synced

    def final_snapshot(self, depth: int) -> BookSnapshot | None:
        """The current book if synchronized (update_id = seqId, or ts where the venue sent no seqId)."""
        if not self.synced or self.timestamp is None:
            return None
        bids, asks = self.book.top(depth)
        uid = self.seq_id if self.seq_id is not None else self.timestamp
        return BookSnapshot(self.timestamp, self.timestamp, uid, bids, asks)

    def _load(
        self, seq_id: int | None, ts: int, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]
    ) -> None:
        try:
            self.book.load(bids, asks)
        except Exception:
            self._desync()  # a level the book could not take: stay unsynchronized, fetch a snapshot
            raise
        self.ticker.reset()
        self._crc = None
        self.synced = True
        self.seq_id = seq_id
        self.timestamp = ts
        self.ticker.seen(ts)
        self.windows.back(ts)

    def on_snapshot(
        self,
        seq_id: int | None,
        ts: int,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        checksum: int | None,
    ) -> Status:
        """A snapshot pushed in the stream (``action: snapshot``)."""
        if self.synced and self.bridged and seq_id is not None and self.seq_id is not None and seq_id <= self.seq_id:
            return Status.STALE  # e.g. the second connection of an overlap: the book is already there
        self._load(seq_id, ts, bids, asks)
        self.bridged = True
        self.buffer.clear()
        self.need_snapshot = False
        if checksum and not self._verify(checksum):
            self._desync()
            return CHECKSUM
        fault = self.book.fault(self.max_levels)
        if fault is not None:
            self._desync()
            return _FAULT_STATUS[fault]
        return Status.SYNCED

    def on_rest_snapshot(
        self, seq_id: int | None, ts: int, bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]
    ) -> Status:
        """A REST snapshot, bridged to the buffered updates by sequence ids."""
        self.snapshot_inflight = False
        if self.synced:
            return Status.STALE  # the stream synchronized the book meanwhile (a pushed snapshot)
        buffered = list(self.buffer)
        if seq_id is None and any(u[0] is not None for u in buffered):
            # a stream with sequence ids cannot be bridged to a snapshot without one: never seat it
            # by time; ask again (a pushed snapshot may synchronize meanwhile)
            self.need_snapshot = True
            return Status.SNAPSHOT_TOO_OLD
        self.buffer.clear()
        if seq_id is not None and buffered and buffered[0][1] is not None and seq_id < buffered[0][1]:
            self.buffer.extend(buffered)
            self.need_snapshot = True
            return Status.SNAPSHOT_TOO_OLD
        self._load(seq_id, ts, bids, asks)
        self.bridged = False
        self.need_snapshot = False
        fault = self.book.fault(self.max_levels)
        if fault is not None:  # a crossed or too deep snapshot: keep the updates, fetch another
            self._desync()
            self.buffer.extend(buffered)
            return _FAULT_STATUS[fault]
        for u in buffered:
            if seq_id is not None and u[0] is not None:
                if u[0] <= seq_id:
                    continue  # covered by the snapshot
            elif u[2] <= ts:
                continue  # no sequence ids (recordings before 2023): covered by the snapshot's time
            st = self.on_update(*u)
            if st is not APPLIED and st is not Status.STALE:
                return st  # the buffer does not bridge: the book dropped and wants another snapshot
        return Status.SYNCED if self.bridged else Status.SNAPSHOT_PENDING

    def _verify(self, checksum: int) -> bool:
        if self._crc is None:
            self._crc = self.book.crc32_checksum(self.checksum_levels)
        self.checksums_verified += 1
        return self._crc == checksum

    def _buffer(
        self,
        seq_id: int | None,
        prev_seq_id: int | None,
        ts: int,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        checksum: int | None,
    ) -> Status:
        buf = self.buffer
        last = buf[-1][0] if buf else None
        if last is not None and seq_id is not None and prev_seq_id is not None and prev_seq_id != last:
            buf.clear()  # the buffer itself broke: a snapshot must bridge from here
        if len(buf) == buf.maxlen:
            self.buffer_drops += 1
        buf.append((seq_id, prev_seq_id, ts, bids, asks, checksum))  # replayed through the generic apply
        if not self.snapshot_inflight:
            self.need_snapshot = True
        return Status.BUFFERED

    def on_update(
        self,
        seq_id: int | None,
        prev_seq_id: int | None,
        ts: int,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        checksum: int | None,
        quads: bool = False,
        short_prices: bool = False,
    ) -> Status:
        """Apply one update. ``quads``: the levels are (price, qty, _, _) 4-tuples; ``short_prices``:
        every price has at most 15 characters (both as in ``Book.apply_quads``)."""
        if not self.synced:
            return self._buffer(seq_id, prev_seq_id, ts, bids, asks, checksum)
        cur = self.seq_id
        if seq_id is not None and prev_seq_id is not None and cur is not None:
            if self.bridged:
                if prev_seq_id != cur:
                    if seq_id <= cur:
                        return Status.STALE  # a duplicate (overlapping connections)
                    self._desync()
                    self._buffer(seq_id, prev_seq_id, ts, bids, asks, checksum)
                    return Status.GAP
            else:  # the first update after a REST snapshot: prevSeqId <= snapshot seqId < seqId
                if seq_id <= cur:
                    return Status.STALE
                if prev_seq_id > cur:
                    self._desync()
                    self._buffer(seq_id, prev_seq_id, ts, bids, asks, checksum)
                    return Status.GAP
                self.bridged = True
        elif not self.bridged:
            self.bridged = True  # no sequence ids to bridge with (see the class docstring)
        book = self.book
        ticker = self.ticker
        try:
            ticker.before(book, ts, cur if cur is not None else self.timestamp)
            if quads:
                touched = book.apply_quads(bids, asks, self.checksum_levels, short_prices)
            else:
                touched = book.apply(bids, asks, self.checksum_levels)
        except Exception:
            self._desync()  # a level the book could not take: never keep a half-applied book
            raise
        if touched:
            self._crc = None
        # a real checksum is verified on EVERY update (the cached one while the top is unchanged);
        # 0 or absent means the venue sends none
        if checksum and not self._verify(checksum):
            self._desync()
            return CHECKSUM
        fault = book.fault(self.max_levels)
        if fault is not None:
            self._desync()
            return _FAULT_STATUS[fault]
        self.seq_id = seq_id
        self.timestamp = ts
        ticker.after(book, ts, seq_id if seq_id is not None else ts)
        return APPLIED
