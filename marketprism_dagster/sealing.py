"""Seal a closed hour of one data type: prove from the writer's ledger that every JetStream
message of the hour is in the hot table, repairing interior gaps from JetStream first.

A seal is four steps, each a small function: ``prove`` (read the ledger and JetStream),
``repair`` (write the gaps the proof found), ``count`` (read the ledger's and the table's rows
for the hour), ``verdict`` (decide). The decisions (``hour_verdict``, ``proof_verdict``,
``repair_verdict``, ``verdict``) are pure functions of what the I/O steps measured.

The proof, for stream S of the type and hour H (event time):

0. the hour is still inside the hot TTL with an hour to spare: hot rows expire
   ``storage.hot_ttl_days`` after they were received, so an older hour may have lost rows and the
   ledger could "prove" an emptied table (0 = 0) whose replication would then wipe cold;
1. the hour is closed: now >= end of H + ``seal.grace_s``;
2. boundary B = the first message S stored at or after max(cutoff, now - seal.writer_slack_s)
   (binary search over the stream by stored time). A message of H published within the grace,
   or late but before that horizon, has seq < B;
3. the ledger's committed ranges of S reach B - 1 and have no gaps. An interior gap
   (the writer moved past it without committing) is fetched from JetStream and committed
   through the writer's own ``commit_batch`` in recovery mode (an identity already in the
   table is never inserted again), so a repeated repair inserts nothing twice; the report says
   what the repair wrote (``repaired_ranges``, ``repaired_messages``, ``repaired_rows``). An
   uncommitted tail means the writer is still behind: refuse and retry later (committing it
   here would race the writer);
3b. sequences JetStream no longer holds (a gap below the stream's first sequence, or a range the
   writer committed without messages that had aged out: ``ledger.lost``) are *lost*. A lost range
   that may hold records of H (it was stored before H started, plus the clock skew, or later) must
   be accounted for by a ledger marker of (type, H): the hour was refilled from the venues' history
   after the loss (``hour_refill.py``). Without one the type is refused ``aged_out`` naming the
   range; with one it is sealed and its report names the range and the refill. For a type no venue keeps a
   history of, an operator may accept the loss instead (``marketprism accept-loss``, ``accept_loss.py``): its
   marker accounts for the range the same way and the hour seals with source ``incomplete``, naming the range,
   the operator's reason and when it was accepted. A lost range
   stored before H started cannot hold H's records and does not concern H (later hours seal as usual);
4. the rows the ledger says were inserted for (type, H) are in the table; beyond them the table may
   hold at most one row per accounted lost message (``ledger.lost.HourLoss.unledgered_allowance``).

Without a JetStream connection step 2 is skipped and the proof rests on the ledger alone
(``proof = "ledger"`` in the report).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.js.errors import NotFoundError

from marketprism_dagster.config import Settings
from marketprism_dagster.integrity import now_ms, time_where
from marketprism_dagster.ledger.lost import (
    ABSENT,
    ACCEPTED,
    CommittedRange,
    HourLoss,
    LostRange,
    Marker,
    absent_ranges,
    hour_loss,
    lost_gap,
    marked,
    merge_lost,
)
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.ledger.queries import (
    committed_ranges,
    committed_rows,
    hour_rows,
    last_commit_ms,
    markers,
    watermark,
)
from marketprism_dagster.ledger.ranges import SeqRange, gaps_between, merge_ranges
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.source_gaps import INCOMPLETE, HourSource, hour_summary, read_gaps
from marketprism_dagster.storage.base import Store
from marketprism_dagster.writer.ingest import commit_batch

log = structlog.get_logger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# An hour (or day) is sealed or replicated only while its first rows have at least this long left
# in hot: covers the seal's own duration and received_at slightly before the event time.
TTL_MARGIN_MS = HOUR_MS


class SealRefused(Exception):
    """The hour cannot be sealed (yet): the message says why and what to do.

    ``retryable`` is False when retrying can never help (the hour is older than the hot TTL). ``aged_out`` is
    True when messages that may hold the hour's records are no longer in JetStream (``lost``: those ranges):
    only the venues' history can refill the hour (``hour_refill.py``), which then marks them accounted for."""

    def __init__(
        self, message: str, report: SealReport | None = None, *, retryable: bool = True, aged_out: bool = False,
        lost: list[LostRange] | None = None,
    ) -> None:
        super().__init__(message)
        self.report = report
        self.retryable = retryable
        self.aged_out = aged_out
        self.lost = lost or []


def oldest_sealable_ms(settings: Settings, now: int) -> int:
    """The earliest hour or day start that hot still holds completely at ``now`` (the hot TTL counts
    from received_at, so the first rows of an hour H expire from H + hot_ttl_days)."""
    return now - settings.storage.hot_ttl_days * DAY_MS + TTL_MARGIN_MS


@dataclass
class SealReport:
    data_type: str
    stream: str
    hour_ms: int
    rows: int = 0
    rows_raw: int = 0
    ledger_rows: int = 0
    dedup_count: int = 0
    symbols: list[str] = field(default_factory=list)
    min_ts_ms: int | None = None
    max_ts_ms: int | None = None
    boundary_seq: int | None = None
    committed_through: int | None = None
    repaired_ranges: list[str] = field(default_factory=list)
    repaired_messages: int = 0
    repaired_rows: int = 0  # rows of this type the repair wrote into the hot table
    proof: str = "ledger+jetstream"
    source: HourSource | None = None  # what the stored source_gap rows say of the hour (venue types only)
    lost: list[str] = field(default_factory=list)  # lost ranges accounted for (refilled from venue history, accepted)
    accepted: list[str] = field(default_factory=list)  # of those, the ones an operator accepted as lost
    unledgered_rows: int = 0  # rows beyond the ledger's, allowed by the accounted lost messages

    @property
    def hour(self) -> datetime:
        return datetime.fromtimestamp(self.hour_ms / 1000, UTC)

    def metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_raw": self.rows_raw,
            "ledger_rows": self.ledger_rows,
            "dedup_count": self.dedup_count,
            "symbols": ", ".join(self.symbols),
            "symbol_count": len(self.symbols),
            "min_event_time": _iso(self.min_ts_ms),
            "max_event_time": _iso(self.max_ts_ms),
            "boundary_seq": self.boundary_seq,
            "committed_through": self.committed_through,
            "repaired_messages": self.repaired_messages,
            "repaired_rows": self.repaired_rows,
            "repaired_ranges": ", ".join(self.repaired_ranges),
            "proof": self.proof,
            **({"lost_ranges": "; ".join(self.lost), "unledgered_rows": self.unledgered_rows} if self.lost else {}),
            **({"lost_accepted": "; ".join(self.accepted), "source": INCOMPLETE} if self.accepted else {}),
            **(self.source.metadata() if self.source is not None else {}),
        }


def _iso(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def hour_start_ms(hour: datetime | int) -> int:
    ms = hour if isinstance(hour, int) else int(hour.timestamp() * 1000)
    return ms - ms % HOUR_MS


async def boundary_seq(js: Any, stream: str, cutoff_ms: int) -> tuple[int, int, int]:
    """(first seq stored at or after ``cutoff_ms`` (last + 1 if none), stream first seq, last seq)."""
    info = await js.stream_info(stream)
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    if last == 0 or last < first:
        return last + 1, first, last

    async def stored_ms(seq: int) -> tuple[int, int] | None:
        try:
            msg = await js.get_msg(stream, seq=seq, next=True)
        except NotFoundError:
            return None
        return int(msg.seq), int(msg.time.timestamp() * 1000)

    # Invariant: stored seqs < lo were stored before the cutoff, stored seqs >= hi at or after it.
    lo, hi = first, last + 1
    while lo < hi:
        mid = (lo + hi) // 2
        found = await stored_ms(mid)  # the first stored seq >= mid (mid <= last, which is stored)
        if found is None:
            hi = mid
            continue
        seq, t = found
        if t >= cutoff_ms:
            hi = mid
        else:
            lo = seq + 1
    return lo, first, last


async def fetch_range(js: Any, stream: str, gap: SeqRange) -> list[StreamMessage] | None:
    """The messages gap.first..gap.last as StreamMessages; None as soon as one is gone (aged out or deleted)."""
    out = []
    for seq in range(gap.first, gap.last + 1):
        try:
            m = await js.get_msg(stream, seq=seq)
        except NotFoundError:
            return None
        out.append(StreamMessage(seq=int(m.seq), subject=str(m.subject), data=m.data or b"", headers=m.headers))
    return out


# A writer found behind the seal's boundary is waited for while it makes progress (the seal's own
# store use may have held it up), re-checked every CATCH_UP_POLL_S; it is refused (and retried by
# Dagster later) once the writer's committed sequence has not moved for CATCH_UP_STALL_S, or after
# CATCH_UP_MAX_S in all (a writer that far behind is caught up by the next retry).
CATCH_UP_POLL_S = 0.5
CATCH_UP_STALL_S = 3.0
CATCH_UP_MAX_S = 60.0


# ---------------------------------------------------------------------------- what each step found


@dataclass
class StreamProof:
    """Steps 2-3 for one stream at one moment (shared by every data type of the stream), before repair."""

    stream: str
    cutoff_ms: int
    proof: str = "ledger+jetstream"
    horizon_ms: int | None = None  # JetStream: messages stored before it must be committed
    boundary_seq: int | None = None  # the first message stored at or after the horizon
    committed_last: int = 0  # the last committed sequence (after waiting for the writer); 0: none
    committed_through: int | None = None  # the same, None when the ledger holds no range of the stream
    gaps: list[SeqRange] = field(default_factory=list)  # between committed ranges
    last_commit_ms: int | None = None  # ledger only: the writer's newest commit of the stream
    first_in_stream: int | None = None  # JetStream's first sequence: every earlier one is gone
    rows: list[CommittedRange] = field(default_factory=list)  # the committed ranges ('*' rows)
    absent: list[LostRange] = field(default_factory=list)  # committed ranges the stream held fewer messages of


@dataclass
class Repair:
    """What the repair wrote: the gaps it filled from JetStream, and the rows it inserted per data type."""

    ranges: list[SeqRange] = field(default_factory=list)
    messages: int = 0
    rows_by_type: dict[str, int] = field(default_factory=dict)
    gaps_left: list[SeqRange] = field(default_factory=list)
    committed_through: int | None = None
    lost: list[LostRange] = field(default_factory=list)  # gap parts JetStream no longer holds (not committed)


@dataclass(frozen=True)
class HourCounts:
    """Step 4's measurements for (type, hour): the ledger's rows and the table's."""

    ledger_rows: int
    rows_raw: int  # rows physically stored (before ReplacingMergeTree merges duplicates)
    rows: int  # distinct rows (FINAL)
    symbols: list[str] = field(default_factory=list)
    min_ts_ms: int | None = None
    max_ts_ms: int | None = None


# ---------------------------------------------------------------------------- verdicts (pure)


def hour_verdict(settings: Settings, data_type: str, h: int, now: int) -> SealRefused | None:
    """Steps 0-1: why hour ``h`` of ``data_type`` cannot be sealed at ``now`` (beyond the hot TTL, not closed)."""
    stream = settings.stream_for(data_type) or ""
    report = SealReport(data_type=data_type, stream=stream, hour_ms=h)
    oldest = oldest_sealable_ms(settings, now)
    if h < oldest:
        ttl_days = settings.storage.hot_ttl_days
        first_ok = -(-oldest // HOUR_MS) * HOUR_MS
        return SealRefused(
            f"hour {_iso(h)} of {data_type} is older than the hot TTL (storage.hot_ttl_days={ttl_days}): its hot "
            f"rows expire from {_iso(h + ttl_days * DAY_MS)}, so hot can no longer prove it complete and replicating "
            "it would overwrite cold with less; the hour is not sealed and cold is left as it is. Seal and repair "
            f"only hours from {_iso(first_ok)} on (marketprism repair --from {_iso(first_ok)[:16]})",
            report,
            retryable=False,
        )
    cutoff = h + HOUR_MS + settings.seal.grace_s * 1000
    if now < cutoff:
        return SealRefused(
            f"hour {_iso(h)} of {data_type} closes at {_iso(cutoff)} (end + seal.grace_s={settings.seal.grace_s} s); "
            "it is sealed automatically a few minutes after that",
            report,
        )
    return None


def proof_verdict(p: StreamProof) -> str | None:
    """Why the stream's proof fails, or None (interior gaps with JetStream are left to the repair)."""
    if p.boundary_seq is not None:
        if p.committed_last < p.boundary_seq - 1:
            return (
                f"the hot writer has committed {p.stream} through seq {p.committed_last} but messages up to "
                f"seq {p.boundary_seq - 1} were stored before {_iso(p.horizon_ms)}; the writer is behind (or "
                "stopped): retry when it catches up (check the writer run in the Dagster UI)"
            )
        return None
    if p.gaps:
        return (
            f"{p.stream} has {len(p.gaps)} ledger gaps ({p.gaps[0].first}-{p.gaps[0].last}, ...) and no JetStream "
            "connection to repair them; check nats.url and retry"
        )
    if p.last_commit_ms is None or p.last_commit_ms < p.cutoff_ms:
        return (
            f"the hot writer has committed nothing for {p.stream} since {_iso(p.cutoff_ms)}; without JetStream "
            "the hour cannot be proven complete: retry with NATS reachable"
        )
    return None


def repair_verdict(stream: str, r: Repair) -> str | None:
    return f"{stream} still has gaps after repair: {r.gaps_left}" if r.gaps_left else None


def lost_verdict(stream: str, data_type: str, h: int, lost: list[LostRange]) -> str | None:
    """Step 3b: why lost ranges that may hold records of (type, hour) and no marker accounts for refuse the seal."""
    if not lost:
        return None
    first = lost[0]
    if first.kind == ABSENT:
        what = (f"the writer committed {stream} seq {first.first}-{first.last} without {first.missing} messages that "
                "were no longer in JetStream (aged out or deleted)")
    else:
        what = (f"{stream} seq {first.first} is no longer in JetStream (aged out or deleted): the ledger gap "
                f"{first.first}-{first.last} cannot be repaired")
    more = f" (lost: {', '.join(x.label() for x in lost)})" if len(lost) > 1 else ""
    return (
        f"{what}{more}; it may have held {data_type} records of {_iso(h)}, so the hour stays unsealed until it is "
        "refilled from the venues' history (materializing the hot partition does that, for the types a venue "
        "keeps a history of) or, for a type no venue keeps a history of, until an operator accepts the loss: "
        f"marketprism accept-loss --type {data_type} --hour {_iso(h)[:16]} --reason TEXT (the hour then seals "
        "'incomplete', naming the range)"
    )


def unaccounted_gaps(gaps: list[SeqRange], lost: list[LostRange]) -> list[SeqRange]:
    """The gaps no lost range covers (left by the repair for another reason: the writer is behind)."""
    return [g for g in gaps if not any(x.first <= g.first and g.last <= x.last for x in lost)]


def verdict(data_type: str, h: int, c: HourCounts, allowance: int = 0) -> str | None:
    """Step 4's verdict: None when the table holds every row the ledger committed for the hour, else why not.

    More rows than the ledger: rows came from outside the writer, beyond ``allowance`` (one per lost message
    a marker accounts for: ``HourLoss.unledgered_allowance``). Fewer: missing, unless the table's distinct
    rows equal what it stores (the writer counted a duplicate the table merged away)."""
    if c.rows_raw > c.ledger_rows + allowance:
        lost = f" and {allowance} lost messages" if allowance else ""
        return (
            f"{data_type} hour {_iso(h)} holds {c.rows_raw} rows but the ledger accounts for {c.ledger_rows}{lost}: "
            "rows were inserted outside the writer; inspect them before sealing"
        )
    if c.rows_raw < c.ledger_rows and c.rows_raw != c.rows:
        return (
            f"{data_type} hour {_iso(h)}: the ledger committed {c.ledger_rows} rows, the table holds {c.rows_raw} "
            f"({c.rows} distinct): {c.ledger_rows - c.rows_raw} rows are missing"
        )
    return None


def fill_report(
    report: SealReport, p: StreamProof, r: Repair | None, c: HourCounts | None, loss: HourLoss | None = None
) -> SealReport:
    """The report of one type's seal: the stream's proof and repair, the type's counts, the lost ranges a refill
    from venue history accounts for."""
    report.boundary_seq, report.proof = p.boundary_seq, p.proof
    report.committed_through = r.committed_through if r is not None else p.committed_through
    if r is not None:
        report.repaired_ranges = [f"{g.first}-{g.last}" for g in r.ranges]
        report.repaired_messages = r.messages
        report.repaired_rows = r.rows_by_type.get(report.data_type, 0)
    if c is not None:
        report.ledger_rows, report.rows_raw, report.rows = c.ledger_rows, c.rows_raw, c.rows
        report.symbols, report.min_ts_ms, report.max_ts_ms = c.symbols, c.min_ts_ms, c.max_ts_ms
        report.dedup_count = max(0, c.ledger_rows - c.rows)
    if loss is not None and loss.accounted:
        report.lost = [m.label() for _, m in loss.accounted]
        report.accepted = [m.label() for m in loss.accepted]
        resolutions = {m.resolution for _, m in loss.accounted}
        report.proof += "".join(f"+{r}" if r != ACCEPTED else "+accepted_loss" for r in sorted(resolutions))
        if c is not None:
            report.unledgered_rows = max(0, c.rows_raw - c.ledger_rows)
    return report


# ---------------------------------------------------------------------------- prove, repair, count (I/O)


async def _wait_for_writer(store: Store, settings: Settings, stream: str, upto: int, committed: int) -> int:
    """Wait while the writer commits towards ``upto`` (letting it into the store); the last committed seq."""
    yield_fn = getattr(store, "yield_to_waiters", None)  # embedded: hand the store to the waiting writer
    moved_at = started = time.monotonic()
    while (
        committed < upto
        and time.monotonic() - moved_at < CATCH_UP_STALL_S
        and time.monotonic() - started < CATCH_UP_MAX_S
    ):
        if yield_fn is not None:
            yield_fn()
        await asyncio.sleep(CATCH_UP_POLL_S)
        now_committed = watermark(store, settings, stream)
        if now_committed > committed:
            committed, moved_at = now_committed, time.monotonic()
    return committed


async def prove(store: Store, settings: Settings, stream: str, h: int, js: Any, now: int) -> StreamProof:
    """Steps 2-3 for ``stream`` (the hour ``h`` is closed): what the ledger and JetStream say; no verdict."""
    cutoff = h + HOUR_MS + settings.seal.grace_s * 1000
    p = StreamProof(stream, cutoff)
    p.rows = committed_rows(store, settings, stream)
    ranges = merge_ranges(SeqRange(r.first, r.last) for r in p.rows)
    if js is not None:
        # Every message stored before max(cutoff, now - writer_slack_s) must be committed: that
        # covers the hour's messages within the grace and the late ones stored since.
        p.horizon_ms = max(cutoff, now - settings.seal.writer_slack_s * 1000)
        b, js_first, _ = await boundary_seq(js, stream, p.horizon_ms)
        p.boundary_seq, p.first_in_stream = b, js_first
        # an empty stream reports first_seq 0: nothing before seq 1 is owed
        committed_last = ranges[-1].last if ranges else max(js_first, 1) - 1
        if committed_last < b - 1 and await _wait_for_writer(store, settings, stream, b - 1, committed_last) >= b - 1:
            p.rows = committed_rows(store, settings, stream)
            ranges = merge_ranges(SeqRange(r.first, r.last) for r in p.rows)
            committed_last = ranges[-1].last if ranges else committed_last
        p.committed_last = committed_last
    else:
        p.proof = "ledger"
        p.committed_last = ranges[-1].last if ranges else 0
        p.last_commit_ms = last_commit_ms(store, settings, stream)
    # Interior gaps (anywhere: late messages of the hour may sit past the boundary) are safe to
    # repair: the writer has moved past them and will never commit them itself.
    p.gaps = gaps_between(ranges)
    p.committed_through = ranges[-1].last if ranges else None
    p.absent = absent_ranges(p.rows)
    return p


def gone_part(gap: SeqRange, first_in_stream: int | None) -> tuple[SeqRange | None, SeqRange | None]:
    """(the part of ``gap`` below the stream's first sequence: gone; the rest, to fetch)."""
    if first_in_stream is None or gap.first >= first_in_stream:
        return None, gap
    if gap.last < first_in_stream:
        return gap, None
    return SeqRange(gap.first, first_in_stream - 1), SeqRange(first_in_stream, gap.last)


async def repair(js: Any, store: Store, settings: Settings, p: StreamProof) -> Repair:
    """Fetch the proof's gaps from JetStream and commit them through the writer's commit path (recovery
    mode: an identity already in the table is not written again), then re-read the ledger.

    A gap part JetStream no longer holds (below its first sequence, or a message of it deleted) is lost: it is
    not committed, so it stays a ledger gap whose later ranges bound when its messages were stored
    (``ledger.lost``); ``Repair.lost`` lists such parts."""
    r = Repair()
    repaired: list[SeqRange] = []
    lost: list[LostRange] = []
    step = settings.writer.batch_size
    for whole in p.gaps:
        gone, gap = gone_part(whole, p.first_in_stream)
        if gone is not None:
            lost.append(lost_gap(p.rows, gone))
        if gap is None:
            continue
        for start in range(gap.first, gap.last + 1, step):
            part = SeqRange(start, min(gap.last, start + step - 1))
            messages = await fetch_range(js, p.stream, part)
            if messages is None:
                lost.append(lost_gap(p.rows, part))
                continue
            result = commit_batch(store, settings, p.stream, messages)
            repaired.append(part)
            r.messages += len(messages)
            for data_type, n in result.inserted_by_table.items():
                r.rows_by_type[data_type] = r.rows_by_type.get(data_type, 0) + n
            log.info("seal.repaired", stream=p.stream, first_seq=part.first, last_seq=part.last,
                     rows=sum(result.inserted_by_table.values()))
    for x in lost:
        log.warning("seal.lost_range", stream=p.stream, first_seq=x.first, last_seq=x.last,
                    stored_before=_iso(x.stored_before_ms or None))
    ranges = committed_ranges(store, settings, p.stream)
    r.ranges = merge_ranges(repaired)
    r.lost = merge_lost(lost)
    r.gaps_left = unaccounted_gaps(gaps_between(ranges), r.lost)
    r.committed_through = ranges[-1].last if ranges else None
    return r


def _table_stats(
    store: Store, settings: Settings, data_type: str, hour_ms: int
) -> tuple[int, int, list[str], Any, Any]:
    db = settings.storage.hot_database
    where = time_where(hour_ms, hour_ms + HOUR_MS)
    raw = int(store.query_value(f"SELECT count() FROM `{db}`.`{data_type}` WHERE {where}") or 0)
    final, symbols, lo, hi = store.query_rows(
        "SELECT count(), arraySort(groupUniqArray(concat(exchange, ':', symbol))), "
        "if(count() = 0, NULL, toUnixTimestamp64Milli(min(timestamp))), "
        "if(count() = 0, NULL, toUnixTimestamp64Milli(max(timestamp))) "
        f"FROM `{db}`.`{data_type}` FINAL WHERE {where}"
    )[0]
    return raw, int(final), [str(s) for s in symbols or []], lo, hi


def count(store: Store, settings: Settings, data_type: str, h: int) -> HourCounts:
    """Step 4's measurements: the ledger's rows for (type, hour) and the table's, read consistently."""
    with store.session():  # embedded: the writer cannot commit between the ledger and the table counts
        for _attempt in range(3):
            ledger_before = hour_rows(store, settings, data_type, h)
            raw, final, symbols, lo, hi = _table_stats(store, settings, data_type, h)
            ledger_after = hour_rows(store, settings, data_type, h)
            if ledger_before == ledger_after:
                break
            time.sleep(0.2)  # a server store: the writer committed a late row meanwhile; measure again
    return HourCounts(ledger_after, raw, final, symbols, lo, hi)


# ---------------------------------------------------------------------------- prove -> repair -> count -> verdict


@dataclass
class _StreamSeal:
    proof: StreamProof
    repair: Repair | None = None
    refused: SealRefused | None = None
    lost: list[LostRange] = field(default_factory=list)  # the stream's lost ranges (gaps gone, absent seqs)
    markers: list[Marker] = field(default_factory=list)  # the hour's markers (read only when something is lost)


async def _seal_stream(store: Store, settings: Settings, stream: str, h: int, js: Any, now: int) -> _StreamSeal:
    """Prove the stream, then repair its gaps from JetStream when the proof asks for it; the lost ranges and
    the hour's markers that may account for them."""
    done = _StreamSeal(await prove(store, settings, stream, h, js, now))
    p = done.proof
    if js is None and p.gaps:  # without JetStream a gap is lost only if a marker already says so
        known = markers(store, settings, stream)
        gone = [lost_gap(p.rows, g) for g in p.gaps if marked(g.first, g.last, known)]
        p.gaps = unaccounted_gaps(p.gaps, gone)
        done.lost.extend(gone)
    reason = proof_verdict(p)
    if reason is None and p.gaps:
        done.repair = await repair(js, store, settings, p)
        done.lost.extend(done.repair.lost)
        reason = repair_verdict(stream, done.repair)
    if reason is not None:
        done.refused = SealRefused(reason)
        return done
    done.lost.extend(p.absent)
    if any(x.may_hold(h) for x in done.lost):
        done.markers = markers(store, settings, stream, h)
    return done


async def seal_hours(
    store: Store,
    settings: Settings,
    data_types: list[str],
    hour: datetime | int,
    js: Any = None,
    *,
    now: int | None = None,
) -> dict[str, SealReport | SealRefused]:
    """Seal ``hour`` of several data types at once: each stream is proven (and repaired) once for all its
    types (one ledger read, one boundary search, one repair). Returns each type's report or its refusal."""
    now = now_ms() if now is None else now
    h = hour_start_ms(hour)
    out: dict[str, SealReport | SealRefused] = {}
    streams: dict[str, _StreamSeal] = {}
    for data_type in data_types:
        refused = hour_verdict(settings, data_type, h, now)
        if refused is not None:
            if not refused.retryable:
                log.warning("seal.beyond_hot_ttl", data_type=data_type, hour=_iso(h),
                            oldest_sealable=_iso(oldest_sealable_ms(settings, now)))
            out[data_type] = refused
            continue
        stream = settings.stream_for(data_type)
        assert stream is not None  # Settings validation guarantees a stream per type
        if stream not in streams:
            streams[stream] = await _seal_stream(store, settings, stream, h, js, now)
        sealed = streams[stream]
        report = SealReport(data_type=data_type, stream=stream, hour_ms=h)
        if sealed.refused is not None:
            out[data_type] = SealRefused(
                str(sealed.refused), report, retryable=sealed.refused.retryable, aged_out=sealed.refused.aged_out
            )
            continue
        loss = hour_loss(sealed.lost, sealed.markers, data_type, h)
        lost_reason = lost_verdict(stream, data_type, h, loss.unaccounted)
        if lost_reason is not None:
            fill_report(report, sealed.proof, sealed.repair, None)
            out[data_type] = SealRefused(lost_reason, report, aged_out=True, lost=loss.unaccounted)
            continue
        counts = count(store, settings, data_type, h)
        fill_report(report, sealed.proof, sealed.repair, counts, loss)
        reason = verdict(data_type, h, counts, loss.unledgered_allowance)
        if reason is not None:
            out[data_type] = SealRefused(reason, report)
            continue
        out[data_type] = report
    add_source(store, settings, h, [r for r in out.values() if isinstance(r, SealReport)])
    for r in out.values():
        if isinstance(r, SealReport):
            log.info("seal.sealed", data_type=r.data_type, hour=_iso(h), rows=r.rows, repaired=r.repaired_messages,
                     repaired_rows=r.repaired_rows, source=r.source.verdict if r.source else None,
                     accepted_loss=len(r.accepted))
    return out


def add_source(store: Store, settings: Settings, h: int, reports: list[SealReport]) -> None:
    """Each venue type's source verdict for the hour, from one read of the source_gap rows touching it."""
    venue = [r for r in reports if RECORD_TYPES[r.data_type].venue_type]
    if not venue:
        return
    gaps = read_gaps(store, settings, h, h + HOUR_MS, [r.data_type for r in venue])
    for r in venue:
        rt = RECORD_TYPES[r.data_type]
        has_ids = any(c.name == "trade_id" for c in rt.columns)
        r.source = hour_summary(gaps, r.data_type, h, h + HOUR_MS, r.symbols, is_book=rt.is_book, has_ids=has_ids,
                                replaced=bool(r.lost), accepted_loss=bool(r.accepted))


async def seal_hour(
    store: Store,
    settings: Settings,
    data_type: str,
    hour: datetime | int,
    js: Any = None,
    *,
    now: int | None = None,
) -> SealReport:
    """Seal ``hour`` (datetime or ms) of ``data_type``; raises SealRefused when it cannot be proven."""
    result = (await seal_hours(store, settings, [data_type], hour, js, now=now))[data_type]
    if isinstance(result, SealRefused):
        raise result
    return result
