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
a ``Marker``: the hour was refilled from the venue's history after the loss (``hour_refill.py``), or, for
a type no venue keeps a history of, an operator accepted the loss (``marketprism accept-loss``:
``plan_acceptance``), and the hour seals ``incomplete`` naming the range.

The seal's count rule for such an hour (``unledgered_allowance``): the table must hold every row the
ledger committed (the refill's rows were committed by the writer like live ones, so the ledger counts
them too), and may hold, beyond the ledger, at most one row per lost message (a writer that inserted a
range's rows and crashed before its ledger row, whose messages then aged out before the restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from marketprism_dagster.ledger.ranges import SeqRange

# Event time may run ahead of JetStream's stored time by the venue's and the NATS server's clock
# disagreement (NTP keeps both within a second; a minute leaves room for a badly kept one).
CLOCK_SKEW_MS = 60_000

GAP, ABSENT = "gap", "absent"
VENUE_HISTORY, ACCEPTED = "venue_history", "accepted"  # a marker's resolution: refilled, or the loss accepted


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
    """A ledger marker: ``stream`` seqs ``first..last`` were lost, and hour ``hour_ms`` of ``data_type`` was either
    refilled from the venues' history afterwards (``resolution`` VENUE_HISTORY: ``refilled`` records published
    and committed, ``held`` already in the table) or its loss was accepted by an operator (ACCEPTED: ``detail``
    is the operator's reason), so the lost range is accounted for in that hour of that type."""

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
    resolution: str = VENUE_HISTORY
    recorded_at_ms: int = 0  # when it was written (read back from the table; 0 before)

    def covers(self, lost: LostRange, data_type: str, hour_ms: int) -> bool:
        return (self.data_type == data_type and self.hour_ms == hour_ms
                and self.first <= lost.first and lost.last <= self.last)

    def label(self) -> str:
        head = f"{self.stream} seq {self.first}-{self.last}: {self.missing} messages lost from the stream"
        if self.resolution == ACCEPTED:
            when = datetime.fromtimestamp(self.recorded_at_ms / 1000, UTC).isoformat(timespec="seconds")
            return f"{head}, loss accepted by operator at {when}: {self.detail}"
        return f"{head}, hour replaced from venue history (+{self.refilled} refilled, {self.held} already held)"


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
        """Rows the table may hold beyond the ledger: at most one per accounted lost message (refilled or
        accepted alike)."""
        return sum(lost.missing for lost, _ in self.accounted)

    @property
    def accepted(self) -> list[Marker]:
        """The markers accounting for a range by an operator's acceptance: the hour is incomplete."""
        return [m for _, m in self.accounted if m.resolution == ACCEPTED]


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


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What accepting the loss of one (data type, hour) means: a new ACCEPTED marker per lost range that may hold
    the hour's records and no marker accounts for yet, the ranges already accepted, and those a refill from the
    venues' history accounts for (nothing to accept there)."""

    data_type: str
    hour_ms: int
    new: list[Marker]
    accepted: list[Marker]
    refilled: list[Marker]

    @property
    def nothing_lost(self) -> bool:
        """No lost range concerns the hour, or every one was refilled: there is no loss to accept."""
        return not self.new and not self.accepted


def plan_acceptance(stream: str, lost: Iterable[LostRange], markers: Iterable[Marker], data_type: str, hour_ms: int,
                    reason: str, now_ms: int) -> Acceptance:
    """The ACCEPTED markers of (type, hour) for ``stream``'s lost ranges: the same split as the seal's
    (``hour_loss``), so what is accepted is exactly what the seal would refuse the hour for."""
    loss = hour_loss(lost, markers, data_type, hour_ms)
    new = [Marker(stream, x.first, x.last, x.missing, data_type, hour_ms, 0, 0, reason, "", ACCEPTED, now_ms)
           for x in loss.unaccounted]
    refilled = [m for _, m in loss.accounted if m.resolution != ACCEPTED]
    return Acceptance(data_type, hour_ms, new, loss.accepted, refilled)
