"""Seal a closed hour of one data type: prove from the writer's ledger that every JetStream
message of the hour is in the hot table, repairing interior gaps from JetStream first.

The proof, for stream S of the type and hour H (event time):

0. the hour is still inside the hot TTL with an hour to spare: hot rows expire
   ``storage.hot_ttl_days`` after they were received, so an older hour may have lost rows and the
   ledger could "prove" an emptied table (0 = 0) whose replication would then wipe cold;
1. the hour is closed: now >= end of H + ``seal.grace_s``;
2. boundary B = the first message S stored at or after max(cutoff, now - seal.writer_slack_s)
   (binary search over the stream by stored time). A message of H published within the grace,
   or late but before that horizon, has seq < B;
3. the ledger's committed ranges of S reach B - 1 and have no gaps. An interior gap
   (the writer moved past it without committing) is fetched from JetStream
   and committed through the writer's own ``commit_batch`` (same dedup tokens, same ledger
   rows), so a repeated repair inserts nothing twice. An uncommitted tail means the writer is
   still behind: refuse and retry later (committing it here would race the writer);
4. the rows the ledger says were inserted for (type, H) are in the table.

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

from marketprism_dagster.config import Settings
from marketprism_dagster.integrity import SeqRange, committed_ranges, gaps_between, now_ms, time_where
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.schema import LEDGER_TABLE

log = structlog.get_logger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# An hour (or day) is sealed or replicated only while its first rows have at least this long left
# in hot: covers the seal's own duration and received_at slightly before the event time.
TTL_MARGIN_MS = HOUR_MS


class SealRefused(Exception):
    """The hour cannot be sealed (yet): the message says why and what to do.

    ``retryable`` is False when retrying can never help (the hour is older than the hot TTL)."""

    def __init__(self, message: str, report: SealReport | None = None, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.report = report
        self.retryable = retryable


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
    proof: str = "ledger+jetstream"

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
            "repaired_ranges": ", ".join(self.repaired_ranges),
            "proof": self.proof,
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
        from nats.js.errors import NotFoundError

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


async def fetch_range(js: Any, stream: str, gap: SeqRange) -> list[Any]:
    """The messages gap.first..gap.last as the writer's StreamMessage; raises SealRefused if any is gone."""
    from nats.js.errors import NotFoundError

    from marketprism_dagster.writer.ingest import StreamMessage

    out = []
    for seq in range(gap.first, gap.last + 1):
        try:
            m = await js.get_msg(stream, seq=seq)
        except NotFoundError:
            raise SealRefused(
                f"{stream} seq {seq} is no longer in JetStream (aged out or deleted): the gap "
                f"{gap.first}-{gap.last} cannot be repaired; the hour stays unsealed"
            ) from None
        out.append(StreamMessage(seq=int(m.seq), subject=str(m.subject), data=m.data or b"", headers=m.headers))
    return out


async def repair_gaps(js: Any, store: Store, settings: Settings, stream: str, gaps: list[SeqRange]) -> int:
    """Fetch and commit the missing ranges through the writer's commit path; returns messages committed."""
    from marketprism_dagster.writer.ingest import commit_batch

    done = 0
    step = settings.writer.batch_size
    for gap in gaps:
        for start in range(gap.first, gap.last + 1, step):
            part = SeqRange(start, min(gap.last, start + step - 1))
            messages = await fetch_range(js, stream, part)
            commit_batch(store, settings, stream, messages)
            done += len(messages)
            log.info("seal.repaired", stream=stream, first_seq=part.first, last_seq=part.last)
    return done


def _ledger_rows(store: Store, settings: Settings, data_type: str, hour_ms: int) -> int:
    value = store.query_value(
        f"SELECT sum(rows) FROM `{settings.storage.ledger_database}`.`{LEDGER_TABLE}` FINAL "
        f"WHERE data_type = '{data_type}' AND hour = toDateTime({hour_ms // 1000}, 'UTC')"
    )
    return int(value or 0)


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


# A writer found behind the seal's boundary is waited for while it makes progress (the seal's own
# store use may have held it up), re-checked every CATCH_UP_POLL_S; it is refused (and retried by
# Dagster later) once the writer's committed sequence has not moved for CATCH_UP_STALL_S, or after
# CATCH_UP_MAX_S in all (a writer that far behind is caught up by the next retry).
CATCH_UP_POLL_S = 0.5
CATCH_UP_STALL_S = 3.0
CATCH_UP_MAX_S = 60.0


@dataclass
class StreamProof:
    """What the seal proved for one stream at one moment; shared by every data type of the stream."""

    stream: str
    boundary_seq: int | None = None
    committed_through: int | None = None
    repaired_ranges: list[str] = field(default_factory=list)
    repaired_messages: int = 0
    proof: str = "ledger+jetstream"

    def apply(self, report: SealReport) -> SealReport:
        report.boundary_seq, report.committed_through = self.boundary_seq, self.committed_through
        report.repaired_ranges, report.repaired_messages = list(self.repaired_ranges), self.repaired_messages
        report.proof = self.proof
        return report


def _hour_open(settings: Settings, data_type: str, h: int, now: int) -> SealRefused | None:
    """Why hour ``h`` of ``data_type`` cannot be sealed at ``now`` (beyond the hot TTL, not closed yet)."""
    stream = settings.stream_for(data_type) or ""
    report = SealReport(data_type=data_type, stream=stream, hour_ms=h)
    oldest = oldest_sealable_ms(settings, now)
    if h < oldest:
        log.warning("seal.beyond_hot_ttl", data_type=data_type, hour=_iso(h), oldest_sealable=_iso(oldest))
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


def _committed_last(store: Store, settings: Settings, stream: str) -> int:
    value = store.query_value(
        f"SELECT max(last_seq) FROM `{settings.storage.ledger_database}`.`{LEDGER_TABLE}` "
        f"WHERE stream = '{stream}' AND data_type = '*'"
    )
    return int(value or 0)


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
        now_committed = _committed_last(store, settings, stream)
        if now_committed > committed:
            committed, moved_at = now_committed, time.monotonic()
    return committed


async def prove_stream(store: Store, settings: Settings, stream: str, h: int, js: Any, now: int) -> StreamProof:
    """Steps 2-3 of the proof for ``stream`` (the hour ``h`` is closed); raises SealRefused (report None)."""
    proof = StreamProof(stream)
    cutoff = h + HOUR_MS + settings.seal.grace_s * 1000
    ranges = committed_ranges(store, settings, stream)
    if js is not None:
        # Every message stored before max(cutoff, now - writer_slack_s) must be committed: that
        # covers the hour's messages within the grace and the late ones stored since.
        horizon = max(cutoff, now - settings.seal.writer_slack_s * 1000)
        b, js_first, _ = await boundary_seq(js, stream, horizon)
        proof.boundary_seq = b
        # an empty stream reports first_seq 0: nothing before seq 1 is owed
        committed_last = ranges[-1].last if ranges else max(js_first, 1) - 1
        if committed_last < b - 1 and await _wait_for_writer(store, settings, stream, b - 1, committed_last) >= b - 1:
            ranges = committed_ranges(store, settings, stream)
            committed_last = ranges[-1].last if ranges else committed_last
        if committed_last < b - 1:
            raise SealRefused(
                f"the hot writer has committed {stream} through seq {committed_last} but messages up to "
                f"seq {b - 1} were stored before {_iso(horizon)}; the writer is behind (or stopped): "
                "retry when it catches up (check the writer run in the Dagster UI)"
            )
        # Interior gaps (anywhere: late messages of the hour may sit past the boundary) are safe to
        # repair: the writer has moved past them and will never commit them itself.
        interior = gaps_between(ranges)
        if interior:
            proof.repaired_ranges = [f"{g.first}-{g.last}" for g in interior]
            proof.repaired_messages = await repair_gaps(js, store, settings, stream, interior)
            ranges = committed_ranges(store, settings, stream)
            left = gaps_between(ranges)
            if left:
                raise SealRefused(f"{stream} still has gaps after repair: {left}")
    else:
        proof.proof = "ledger"
        gaps = gaps_between(ranges)
        if gaps:
            raise SealRefused(
                f"{stream} has {len(gaps)} ledger gaps ({gaps[0].first}-{gaps[0].last}, ...) and no JetStream "
                "connection to repair them; check nats.url and retry"
            )
        last_commit = store.query_value(
            f"SELECT toUnixTimestamp64Milli(max(committed_at)) FROM `{settings.storage.ledger_database}`."
            f"`{LEDGER_TABLE}` WHERE stream = '{stream}'"
        )
        if not last_commit or int(last_commit) < cutoff:
            raise SealRefused(
                f"the hot writer has committed nothing for {stream} since {_iso(cutoff)}; without JetStream "
                "the hour cannot be proven complete: retry with NATS reachable"
            )
    proof.committed_through = ranges[-1].last if ranges else None
    return proof


def count_hour(store: Store, settings: Settings, report: SealReport) -> SealReport:
    """Step 4: the rows the ledger says were inserted for (type, hour) are in the table."""
    data_type, h = report.data_type, report.hour_ms
    with store.session():  # embedded: the writer cannot commit between the ledger and the table counts
        for _attempt in range(3):
            ledger_before = _ledger_rows(store, settings, data_type, h)
            raw, final, symbols, lo, hi = _table_stats(store, settings, data_type, h)
            ledger_after = _ledger_rows(store, settings, data_type, h)
            if ledger_before == ledger_after:
                break
            time.sleep(0.2)  # a server store: the writer committed a late row meanwhile; measure again
    report.ledger_rows, report.rows_raw, report.rows = ledger_after, raw, final
    report.symbols, report.min_ts_ms, report.max_ts_ms = symbols, lo, hi
    report.dedup_count = max(0, ledger_after - final)
    if raw > ledger_after:
        raise SealRefused(
            f"{data_type} hour {_iso(h)} holds {raw} rows but the ledger accounts for {ledger_after}: rows were "
            "inserted outside the writer; inspect them before sealing",
            report,
        )
    if raw < ledger_after and raw != final:
        raise SealRefused(
            f"{data_type} hour {_iso(h)}: the ledger committed {ledger_after} rows, the table holds {raw} "
            f"({final} distinct): {ledger_after - raw} rows are missing",
            report,
        )
    log.info("seal.sealed", data_type=data_type, hour=_iso(h), rows=final, repaired=report.repaired_messages)
    return report


async def seal_hours(
    store: Store,
    settings: Settings,
    data_types: list[str],
    hour: datetime | int,
    js: Any = None,
    *,
    now: int | None = None,
) -> dict[str, SealReport | SealRefused]:
    """Seal ``hour`` of several data types at once: each stream is proven once for all its types (one
    ledger read, one boundary search, one repair). Returns each type's report or its refusal."""
    now = now_ms() if now is None else now
    h = hour_start_ms(hour)
    out: dict[str, SealReport | SealRefused] = {}
    proofs: dict[str, StreamProof | SealRefused] = {}
    for data_type in data_types:
        refused = _hour_open(settings, data_type, h, now)
        if refused is not None:
            out[data_type] = refused
            continue
        stream = settings.stream_for(data_type)
        assert stream is not None  # Settings validation guarantees a stream per type
        report = SealReport(data_type=data_type, stream=stream, hour_ms=h)
        if stream not in proofs:
            try:
                proofs[stream] = await prove_stream(store, settings, stream, h, js, now)
            except SealRefused as exc:
                proofs[stream] = exc
        proof = proofs[stream]
        if isinstance(proof, SealRefused):
            out[data_type] = SealRefused(str(proof), report, retryable=proof.retryable)
            continue
        try:
            out[data_type] = count_hour(store, settings, proof.apply(report))
        except SealRefused as exc:
            out[data_type] = exc
    return out


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
