"""What the stored ``source_gap`` rows say about a time window: one read, pure summaries.

A gap is published once ``open`` and again ``repaired`` / ``unrecoverable`` with the same identity but
for its state (``records.py``: exchange, symbol, timestamp, gap_data_type, cause, first_missing_id,
state), so its rows are grouped by that identity and the gap's state is its most final one:
``repaired`` over ``unrecoverable`` over ``open``. ``read_gaps`` answers every data type of a window in
one statement; the seal's metadata (``hour_summary``), the ``source_gaps`` check (``check``) and
``marketprism integrity`` (``rows``) read its answer.

An hour's one-word verdict (docs/source_gaps.md):

* ``complete``: no source gap of the type touches the hour, or the type is numbered by the venue (trade
  ids) and every gap that touched it was refilled by id: the hour then holds the venue's own rows with
  their live identities, every id once, as if nothing had been missed (``source_gaps_repaired`` counts
  the refills);
* ``gaps_repaired``: gaps touched it and every one was refilled from a history that is not the live feed
  (settled funding rates, 5-minute open interest, DVOL candles: docs/venues.md);
* ``incomplete``: a gap is still open or unrecoverable (a book's unsynchronized window always is).

An hour that lost JetStream messages before the writer committed them and was refilled from the venues'
history over its whole time window (``hour_refill.py``, a ``ledger.lost.Marker``) is ``gaps_repaired`` at
best, trades included: the refill walked the history by time, not the ids of a known hole, and the lost
messages may have carried ``source_gap`` records of the hour that no one can read back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marketprism_dagster.collector.gaps import AUTO_CAUSES, OPEN, REPAIRED, UNRECOVERABLE
from marketprism_dagster.config import Settings
from marketprism_dagster.storage.base import Store
from marketprism_dagster.timeutil import HOUR_MS

COMPLETE, GAPS_REPAIRED, INCOMPLETE = "complete", "gaps_repaired", "incomplete"
ID_CAUSES = frozenset({"trade_id_jump", "disconnect", "downtime"})  # causes whose trade gaps carry ids


@dataclass(frozen=True, slots=True)
class Gap:
    """One gap (its rows grouped by identity) with its most final state."""

    exchange: str
    market_type: str
    symbol: str
    data_type: str
    cause: str
    start_ms: int
    end_ms: int
    first_id: str
    last_id: str
    state: str
    recovered: int
    detail: str
    detected_ms: int  # received_at of its first row: when the collector published it
    changed_ms: int = 0  # received_at of its newest row: when its state last changed

    @property
    def series(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    def overlap_ms(self, start_ms: int, end_ms: int) -> int:
        return max(0, min(self.end_ms, end_ms) - max(self.start_ms, start_ms))


def _ms(col: str) -> str:
    return f"toUnixTimestamp64Milli({col})"


def read_gaps(
    store: Store, settings: Settings, start_ms: int, end_ms: int, data_types: Iterable[str] | None = None
) -> list[Gap]:
    """Every gap whose window touches [start_ms, end_ms) (of ``data_types``, default all), one statement."""
    db = settings.storage.hot_database
    where = [
        f"timestamp < fromUnixTimestamp64Milli({int(end_ms)})",
        f"end_time >= fromUnixTimestamp64Milli({int(start_ms)})",
    ]
    if data_types is not None:
        types = sorted(set(data_types))
        if not types:
            return []
        where.append("gap_data_type IN (" + ", ".join("'" + t.replace("'", "") + "'" for t in types) + ")")
    rank = f"multiIf(state = '{REPAIRED}', 2, state = '{UNRECOVERABLE}', 1, 0)"
    sql = (
        "SELECT exchange, any(market_type), symbol, gap_data_type, cause, "
        f"{_ms('timestamp')}, {_ms('max(end_time)')}, first_missing_id, any(last_missing_id), "
        f"argMax(state, {rank}), max(recovered), argMax(detail, {rank}), {_ms('min(received_at)')}, "
        f"{_ms('max(received_at)')} "
        f"FROM `{db}`.`source_gap` FINAL WHERE {' AND '.join(where)} "
        "GROUP BY exchange, symbol, timestamp, gap_data_type, cause, first_missing_id "
        "ORDER BY exchange, symbol, gap_data_type, timestamp"
    )
    return [
        Gap(str(ex), str(mt), str(sym), str(dt), str(cause), int(t0), int(t1), str(fid), str(lid), str(state),
            int(rec), str(detail), int(det), int(changed))
        for ex, mt, sym, dt, cause, t0, t1, fid, lid, state, rec, detail, det, changed in store.query_rows(sql)
    ]


# ---------------------------------------------------------------------------- a sealed hour (pure)


@dataclass
class SymbolSource:
    """One series' gaps in one hour of one type."""

    trade_ids_continuous: bool | None = None  # trades only: no open or unrecoverable gap with ids
    repaired: int = 0
    recovered: int = 0
    open: int = 0
    unrecoverable: list[str] = field(default_factory=list)  # "cause: detail"
    book_unsynced_s: float | None = None  # books only: seconds without a valid book, clipped to the hour

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class HourSource:
    verdict: str
    by_symbol: dict[str, SymbolSource]

    def metadata(self) -> dict[str, Any]:
        repaired = sum(s.repaired for s in self.by_symbol.values())
        unrecoverable = [f"{k} {u}" for k, s in self.by_symbol.items() for u in s.unrecoverable]
        meta: dict[str, Any] = {
            "source": self.verdict,
            "source_gaps_repaired": repaired,
            "source_gaps_open": sum(s.open for s in self.by_symbol.values()),
            "source_unrecoverable": "; ".join(unrecoverable),
            "source_by_symbol": {k: s.as_dict() for k, s in sorted(self.by_symbol.items())},
        }
        continuous = [s.trade_ids_continuous for s in self.by_symbol.values() if s.trade_ids_continuous is not None]
        if continuous:
            meta["trade_ids_continuous"] = all(continuous)
        unsynced = [s.book_unsynced_s for s in self.by_symbol.values() if s.book_unsynced_s is not None]
        if unsynced:
            meta["book_unsynced_s"] = round(sum(unsynced), 3)
        return meta


def hour_summary(
    gaps: Iterable[Gap], data_type: str, hour_ms: int, hour_end_ms: int, symbols: Iterable[str] = (), *,
    is_book: bool = False, has_ids: bool = False, replaced: bool = False, accepted_loss: bool = False,
) -> HourSource:
    """The hour's source verdict for ``data_type``: per series (``exchange:symbol``, those with rows in the hour
    and those with gaps) whether trade ids are continuous, repaired gaps, unrecoverable ones and why, and the
    book's unsynchronized seconds. ``replaced``: the hour lost stream messages and was refilled from the venues'
    history by time (never ``complete`` then). ``accepted_loss``: an operator accepted lost stream messages that may
    have held the hour's records (``marketprism accept-loss``): ``incomplete``."""
    by_symbol: dict[str, SymbolSource] = {}

    def of(key: str) -> SymbolSource:
        if key not in by_symbol:
            by_symbol[key] = SymbolSource(
                trade_ids_continuous=True if has_ids else None, book_unsynced_s=0.0 if is_book else None
            )
        return by_symbol[key]

    for key in symbols:
        of(key)
    touched = False
    windows: dict[str, list[tuple[int, int]]] = {}
    for g in gaps:
        if g.data_type != data_type or g.start_ms >= hour_end_ms or g.end_ms < hour_ms:
            continue
        touched = True
        s = of(g.series)
        if g.state == REPAIRED:
            s.repaired += 1
            s.recovered += g.recovered
        elif g.state == UNRECOVERABLE:
            s.unrecoverable.append(f"{g.cause}: {g.detail}")
        else:
            s.open += 1
        if has_ids and g.state != REPAIRED and g.cause in ID_CAUSES and g.first_id:
            s.trade_ids_continuous = False
        if is_book:  # every book gap (unsynced, downtime) is time without a valid book
            windows.setdefault(g.series, []).append((max(g.start_ms, hour_ms), min(g.end_ms, hour_end_ms)))
    for key, spans in windows.items():
        by_symbol[key].book_unsynced_s = round(_union_ms(spans) / 1000, 3)
    if accepted_loss or any(s.open or s.unrecoverable for s in by_symbol.values()):
        verdict = INCOMPLETE
    elif not replaced and (not touched or (has_ids and all(s.trade_ids_continuous for s in by_symbol.values()))):
        verdict = COMPLETE  # nothing missed, or every missed id refilled with the venue's own rows
    else:
        verdict = GAPS_REPAIRED
    return HourSource(verdict, by_symbol)


def _union_ms(spans: list[tuple[int, int]]) -> int:
    """Milliseconds covered by the union of [start, end) spans (overlapping windows count once)."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            total += end - start
            reach = end if reach is None else max(reach, end)
    return total


# ---------------------------------------------------------------------------- the check (pure)


@dataclass(frozen=True)
class CheckVerdict:
    passed: bool
    severity: str  # ERROR | WARN
    description: str
    metadata: dict[str, Any]


def hours_touched(g: Gap) -> range:
    """The start of every UTC hour the gap's window touches (as ``read_gaps`` and ``hour_summary`` count it)."""
    return range(g.start_ms - g.start_ms % HOUR_MS, g.end_ms - g.end_ms % HOUR_MS + 1, HOUR_MS)


def stale_seals(gaps: Iterable[Gap], data_type: str, sealed_at: dict[int, int]) -> list[tuple[int, Gap]]:
    """The sealed hours whose metadata predates a gap of ``data_type`` touching them: (hour start, the first gap
    whose newest row came after the hour's seal). ``sealed_at``: hour start -> when its hot partition was last
    materialized (ms). A collector that restarts after the hours it missed were sealed records its downtime then."""
    out: dict[int, Gap] = {}
    for g in gaps:
        if g.data_type != data_type:
            continue
        for h in hours_touched(g):
            if h in sealed_at and g.changed_ms > sealed_at[h] and h not in out:
                out[h] = g
    return sorted(out.items())


def check(
    gaps: Iterable[Gap], data_type: str, *, now: int, grace_s: int, sealed_at: dict[int, int] | None = None
) -> CheckVerdict:
    """ERROR when a refillable gap (``collector/refill.py`` AUTO_CAUSES) is still open ``grace_s`` after it was
    detected; WARN for unrecoverable gaps, and for sealed hours whose metadata predates a gap touching them
    (``stale_seals``: re-materializing the partition brings its metadata up to date); else passed (gaps still
    inside the grace are listed)."""
    mine = [g for g in gaps if g.data_type == data_type]
    due = now - grace_s * 1000
    overdue = [g for g in mine if g.state == OPEN and g.cause in AUTO_CAUSES and g.detected_ms < due]
    pending = [g for g in mine if g.state == OPEN and not (g.cause in AUTO_CAUSES and g.detected_ms < due)]
    lost = [g for g in mine if g.state == UNRECOVERABLE]
    stale = stale_seals(mine, data_type, sealed_at or {})
    meta: dict[str, Any] = {
        "gaps": len(mine),
        "repaired": sum(1 for g in mine if g.state == REPAIRED),
        "open_overdue": [_label(g) for g in overdue[:20]],
        "open_within_grace": [_label(g) for g in pending[:20]],
        "unrecoverable": [_label(g) for g in lost[:20]],
        "grace_s": grace_s,
    }
    stale_note = ""
    if stale:
        meta["stale_seals"] = [f"{_iso(h)[:16]}: {_label(g)}" for h, g in stale[:20]]
        first = _iso(stale[0][0])[:16]
        stale_note = (
            f"the metadata of {_n(len(stale), 'sealed hour')} ({first}{' ...' if len(stale) > 1 else ''}) is out "
            f"of date: a gap touching it was recorded after the seal ({_label(stale[0][1])}); materialize hot "
            f"{data_type} partition {first} again to bring it up to date"
        )
    also = f"; {stale_note}" if stale_note else ""
    if overdue:
        return CheckVerdict(
            False, "ERROR",
            f"{_n(len(overdue), 'refillable gap')} still open over {grace_s} s after detection ({_label(overdue[0])}); "
            "is the collector's refill running? refill by hand: marketprism backfill --market M --type "
            f"{data_type} --from T --to T{also}",
            meta,
        )
    if lost:
        return CheckVerdict(
            False, "WARN",
            f"{_n(len(lost), 'unrecoverable gap')} ({_label(lost[0])}): no venue history can refill it{also}",
            meta,
        )
    if stale:
        return CheckVerdict(False, "WARN", stale_note, meta)
    return CheckVerdict(True, "ERROR", f"{_n(len(mine), 'gap')}, none open past the grace, none unrecoverable", meta)


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _label(g: Gap) -> str:
    ids = f" ids {g.first_id}..{g.last_id}" if g.first_id else ""
    return f"{g.series} {g.cause}{ids} ({g.detail})"


# ---------------------------------------------------------------------------- a listing, for the CLI


LIST_HEADER = ["market", "symbol", "type", "cause", "start", "end", "ids", "state", "recovered", "detail"]


def rows(gaps: Iterable[Gap]) -> list[tuple[Any, ...]]:
    """One row per gap for ``marketprism integrity``: open, repaired (recovered count), unrecoverable (reason)."""
    return [
        (g.exchange, g.symbol, g.data_type, g.cause, _iso(g.start_ms), _iso(g.end_ms),
         f"{g.first_id}..{g.last_id}" if g.first_id else "", g.state, g.recovered, g.detail)
        for g in gaps
    ]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
