"""Sequences a stream lost before the writer committed them, and which sealed hours they concern (pure).

A sequence is *lost* when JetStream no longer holds it (aged out past ``streams.<S>.max_age_s``, or
deleted) and no ledger range says it is in the tables. The ledger shows two kinds:

* a *gap* between committed ranges whose messages the seal's repair can no longer fetch;
* an *absent* stretch inside a committed range: the writer found the sequences already gone when it
  got to them (``writer.messages_expired_before_commit``) and committed the range without them, so the
  range's ``'*'`` row counts fewer messages than it spans.

Nobody knows what a lost message carried. What bounds it is time: every lost message was stored by
JetStream before the messages after it, and a committed range was committed after its messages were
stored, so a lost range's messages were all stored before the earliest commit of a later range
(``stored_before_ms``). A record's event time is at most its stored time plus the clocks' disagreement
(``CLOCK_SKEW_MS``), so a lost range cannot hold a record of an hour that starts after
``stored_before_ms + CLOCK_SKEW_MS``: those hours seal as if nothing was lost. It may hold a record of
any earlier hour (a late message, a replayed spill), so each earlier hour, per data type, needs
a ``Marker``: the hour was refilled from the venue's history after the loss (``hour_refill.py``).

The seal's count rule for such an hour (``unledgered_allowance``): the table must hold every row the
ledger committed (the refill's rows were committed by the writer like live ones, so the ledger counts
them too), and may hold, beyond the ledger, at most one row per lost message (a writer that inserted a
range's rows and crashed before its ledger row, whose messages then aged out before the restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from marketprism_dagster.ledger.ranges import SeqRange

# Event time may run ahead of JetStream's stored time by the venue's and the NATS server's clock
# disagreement (NTP keeps both within a second; a minute leaves room for a badly kept one).
CLOCK_SKEW_MS = 60_000

GAP, ABSENT = "gap", "absent"


@dataclass(frozen=True, slots=True)
class CommittedRange:
    """One committed range of a stream (its ``'*'`` ledger row): the messages it held and when it was committed."""

    first: int
    last: int
    messages: int
    committed_at_ms: int

    @property
    def absent(self) -> int:
        """Sequences of the range the stream no longer held when it was committed."""
        return max(0, self.last - self.first + 1 - self.messages)


@dataclass(frozen=True, slots=True)
class LostRange:
    """Sequences ``first..last`` of a stream of which ``missing`` never reached the tables."""

    first: int
    last: int
    missing: int
    stored_before_ms: int  # every lost message was stored before this (ms); 0 when unknown
    kind: str = GAP  # GAP: a ledger gap; ABSENT: inside a committed range

    def label(self) -> str:
        span = f"{self.first}-{self.last}"
        return f"{span} ({self.missing} lost)" if self.kind == ABSENT else f"{span} ({self.missing} messages)"

    def may_hold(self, hour_ms: int) -> bool:
        """Could a lost message carry a record whose event time is in the hour starting at ``hour_ms``?"""
        return self.stored_before_ms == 0 or hour_ms <= self.stored_before_ms + CLOCK_SKEW_MS


@dataclass(frozen=True, slots=True)
class Marker:
    """A ledger marker: ``stream`` seqs ``first..last`` were lost, and hour ``hour_ms`` of ``data_type`` was
    refilled from the venues' history afterwards (``refilled`` records published and committed, ``held`` already
    in the table), so the lost range is accounted for in that hour of that type."""

    stream: str
    first: int
    last: int
    missing: int
    data_type: str
    hour_ms: int
    refilled: int
    held: int
    detail: str = ""
    source_gaps: str = ""

    def covers(self, lost: LostRange, data_type: str, hour_ms: int) -> bool:
        return (self.data_type == data_type and self.hour_ms == hour_ms
                and self.first <= lost.first and lost.last <= self.last)

    def label(self) -> str:
        return (f"{self.stream} seq {self.first}-{self.last}: {self.missing} messages lost from the stream, hour "
                f"replaced from venue history (+{self.refilled} refilled, {self.held} already held)")


def absent_ranges(rows: Iterable[CommittedRange]) -> list[LostRange]:
    """The committed ranges whose ``'*'`` row counts fewer messages than the range spans (one per range)."""
    return [LostRange(r.first, r.last, r.absent, r.committed_at_ms, ABSENT) for r in rows if r.absent > 0]


def stored_before(rows: Iterable[CommittedRange], last_seq: int) -> int:
    """The earliest commit of a range after ``last_seq`` (ms), 0 when none: messages up to ``last_seq`` were
    stored before it."""
    return min((r.committed_at_ms for r in rows if r.first > last_seq), default=0)


def lost_gap(rows: Iterable[CommittedRange], gap: SeqRange) -> LostRange:
    """A ledger gap whose messages are gone, with the time they were stored before."""
    return LostRange(gap.first, gap.last, gap.count, stored_before(rows, gap.last), GAP)


def merge_lost(parts: Iterable[LostRange]) -> list[LostRange]:
    """Adjacent lost gap parts of one gap as one range (the repair fetches a gap in batch-sized parts)."""
    out: list[LostRange] = []
    for p in sorted(parts, key=lambda p: p.first):
        prev = out[-1] if out else None
        if prev is not None and prev.kind == p.kind == GAP and p.first == prev.last + 1:
            # the later part's messages were stored last: its bound holds for both (0, unknown, stays unknown)
            bound = 0 if 0 in (prev.stored_before_ms, p.stored_before_ms) else max(prev.stored_before_ms,
                                                                                   p.stored_before_ms)
            out[-1] = LostRange(prev.first, p.last, prev.missing + p.missing, bound, GAP)
        else:
            out.append(p)
    return out


def marked(first: int, last: int, marks: Iterable[Marker]) -> bool:
    """Does some marker (of any type and hour) name a range covering ``first..last``: a loss the ledger knows?"""
    return any(m.first <= first and last <= m.last for m in marks)


@dataclass(frozen=True, slots=True)
class HourLoss:
    """What the lost ranges mean for one (data type, hour): the ones a marker accounts for, the ones not."""

    accounted: list[tuple[LostRange, Marker]]
    unaccounted: list[LostRange]

    @property
    def unledgered_allowance(self) -> int:
        """Rows the table may hold beyond the ledger: at most one per accounted lost message."""
        return sum(lost.missing for lost, _ in self.accounted)


def hour_loss(lost: Iterable[LostRange], markers: Iterable[Marker], data_type: str, hour_ms: int) -> HourLoss:
    """Split the lost ranges that may hold records of the hour into accounted for (a marker of this type and
    hour covers them) and not; ranges that cannot hold the hour's records are in neither."""
    mine = [m for m in markers if m.data_type == data_type and m.hour_ms == hour_ms]
    accounted: list[tuple[LostRange, Marker]] = []
    unaccounted: list[LostRange] = []
    for r in lost:
        if not r.may_hold(hour_ms):
            continue
        marker = next((m for m in mine if m.covers(r, data_type, hour_ms)), None)
        if marker is None:
            unaccounted.append(r)
        else:
            accounted.append((r, marker))
    return HourLoss(accounted, unaccounted)
