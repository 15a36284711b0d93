"""Accept a loss no venue history can refill (``marketprism accept-loss``): the hour then seals ``incomplete``.

Messages JetStream no longer holds and the writer never committed are lost (``ledger.lost``). The seal of
each hour they may hold refuses ``aged_out`` until a ledger marker accounts for them: a refill from the
venues' history (``hour_refill.py``) for the types a venue keeps one of. For the others (liquidations, order
books, ``source_gap``) nothing can refill the hour, and without this command it never seals, so its day never
replicates to cold. Accepting writes, per lost range and (type, hour), a marker whose resolution is
``accepted`` and whose detail is the operator's reason (``ledger.lost.plan_acceptance``: the seal's own split
of the lost ranges, ``hour_loss``, so exactly the ranges the seal refuses the hour for are accepted). The
seal then accounts for the range as for a refill (the count rule alike) and says the hour is ``incomplete``,
naming the range, the reason and when it was accepted.

Refused (nothing written): a type some enabled market keeps a history of, unless forced (the refill is the
right tool); an hour no unaccounted lost range concerns; an hour older than the hot TTL. Accepting again
writes nothing new (the ranges are already accepted; a repeated insert is one row by the markers' insert token
and key).

Lost ranges here are those the ledger and JetStream's first sequence show (a gap below it, a committed range
that held fewer messages than it spans); a ledger gap JetStream still holds is the seal's to repair, never
accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marketprism_dagster.config import Settings
from marketprism_dagster.hour_refill import history_markets
from marketprism_dagster.ledger.lost import (
    Acceptance,
    LostRange,
    Marker,
    absent_ranges,
    lost_gap,
    merge_lost,
    plan_acceptance,
)
from marketprism_dagster.ledger.queries import committed_rows, markers, write_markers
from marketprism_dagster.ledger.ranges import SeqRange, gaps_between, merge_ranges
from marketprism_dagster.sealing import gone_part, oldest_sealable_ms
from marketprism_dagster.storage.base import Store
from marketprism_dagster.timeutil import HOUR_MS

HEADER = ["type", "hour", "lost", "action"]


@dataclass
class AcceptPlan:
    """What ``accept-loss`` found for one type over its hours, before any write."""

    data_type: str
    stream: str
    hours: list[Acceptance]
    history: list[str] = field(default_factory=list)  # enabled markets keeping a history of the type
    in_stream: list[SeqRange] = field(default_factory=list)  # ledger gaps JetStream still holds (the seal repairs)
    too_old: list[int] = field(default_factory=list)  # hours older than the hot TTL: never sealed

    @property
    def new(self) -> list[Marker]:
        return [m for a in self.hours for m in a.new]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def refusal(plan: AcceptPlan, *, force: bool) -> str | None:
    """Why nothing may be written (the cause and the fix), or None."""
    t = plan.data_type
    if plan.too_old:
        return (f"hour {_iso(plan.too_old[0])} of {t} is older than the hot TTL (storage.hot_ttl_days): it is never "
                "sealed, so there is nothing to accept; choose hours the hot table still holds")
    if plan.history and not force:
        h = plan.hours[0].hour_ms
        return (f"{t} is kept in the venues' history ({', '.join(plan.history)}): refill the hour instead of "
                f"accepting its loss: materialize the hot partition {_iso(h)} (it refills from venue history and "
                f"seals) or run marketprism backfill --market {plan.history[0]} --type {t} --from {_iso(h)} "
                f"--to {_iso(h + HOUR_MS)}; add --force only when the history cannot refill it (beyond the venue's "
                "retention)")
    empty = [a.hour_ms for a in plan.hours if a.nothing_lost]
    if empty:
        refilled = any(a.refilled for a in plan.hours if a.nothing_lost)
        why = ("every lost range that may hold its records was refilled from venue history" if refilled
               else "no lost range may hold its records")
        return (f"nothing is lost in hour {_iso(empty[0])} of {t}"
                f"{f' (and {len(empty) - 1} more hours)' if len(empty) > 1 else ''}: {why}, so its seal needs no "
                "acceptance (if it refuses, its message says why; marketprism repair --from H seals it); accept only "
                "the hours the seal refuses aged_out (narrow --hour/--to)")
    return None


def rows(plan: AcceptPlan, *, dry_run: bool) -> list[tuple[Any, ...]]:
    """One row per lost range and hour: what is (or would be) accepted, already accepted, refilled."""
    out: list[tuple[Any, ...]] = []
    for a in plan.hours:
        hour = _iso(a.hour_ms)
        for m in a.new:
            out.append((plan.data_type, hour, _range(m), "would accept" if dry_run else "accepted"))
        for m in a.accepted:
            when = datetime.fromtimestamp(m.recorded_at_ms / 1000, UTC).isoformat(timespec="seconds")
            out.append((plan.data_type, hour, _range(m), f"already accepted at {when}: {m.detail}"))
        for m in a.refilled:
            out.append((plan.data_type, hour, _range(m), "refilled from venue history"))
        if a.nothing_lost and not a.refilled:
            out.append((plan.data_type, hour, "", "nothing lost"))
    return out


def _range(m: Marker) -> str:
    return f"{m.stream} seq {m.first}-{m.last} ({m.missing} messages)"


def hours_between(first_ms: int, last_ms: int) -> list[int]:
    """The hour starts from ``first_ms``'s hour through ``last_ms``'s (inclusive)."""
    start = first_ms - first_ms % HOUR_MS
    return list(range(start, last_ms - last_ms % HOUR_MS + 1, HOUR_MS))


# ---------------------------------------------------------------------------- I/O


async def stream_lost(store: Store, settings: Settings, stream: str, js: Any) -> tuple[list[LostRange], list[SeqRange]]:
    """``stream``'s lost ranges (ledger gaps below JetStream's first sequence, committed ranges that held fewer
    messages than they span) and the ledger gaps JetStream still holds."""
    rows_ = committed_rows(store, settings, stream)
    first_in_stream = int((await js.stream_info(stream)).state.first_seq)
    lost: list[LostRange] = []
    kept: list[SeqRange] = []
    for gap in gaps_between(merge_ranges(SeqRange(r.first, r.last) for r in rows_)):
        gone, rest = gone_part(gap, first_in_stream)
        if gone is not None:
            lost.append(lost_gap(rows_, gone))
        if rest is not None:
            kept.append(rest)
    return merge_lost(lost) + absent_ranges(rows_), kept


async def plan(store: Store, settings: Settings, data_type: str, hours: Sequence[int], reason: str, js: Any, *,
               now: int) -> AcceptPlan:
    """Read the ledger, the markers and JetStream's first sequence; plan the markers of every hour (no write)."""
    stream = settings.stream_for(data_type) or ""
    lost, kept = await stream_lost(store, settings, stream, js)
    marks = markers(store, settings, stream) if lost else []
    oldest = oldest_sealable_ms(settings, now)
    return AcceptPlan(
        data_type, stream, [plan_acceptance(stream, lost, marks, data_type, h, reason, now) for h in hours],
        history=history_markets(settings, data_type), in_stream=kept, too_old=[h for h in hours if h < oldest],
    )


def accept(store: Store, settings: Settings, p: AcceptPlan, *, now: int) -> list[Marker]:
    """Write the plan's new markers (one row each, however often this runs); the markers written."""
    write_markers(store, settings, p.new, now)
    return p.new
