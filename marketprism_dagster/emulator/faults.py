"""Fault injection: the spec grammar, the schedule and the ledger of fired faults.

Grammar (``--faults`` on the CLI, ``EmulatorConfig.faults`` in Python)::

    spec    := rule ("," rule)*
    rule    := KIND ["@" target] (":" KEY "=" VALUE)*
    target  := VENUE | DURATION          a DURATION here is short for after=DURATION

    KIND    := disconnect | stall | gap | bad_checksum | duplicate | malformed | reorder
             | shutdown_notice | rest_5xx | rest_429 | rest_timeout | rest_code_200
             | book_snapshot_stale | book_snapshot_ahead | drop_trades
    VENUE   := a server name, market id or alias of a registered venue server (registry.py;
               ``marketprism emulate --help`` lists them) | all (default)
    KEY     := at=N        arm at the N-th data frame (WS kinds) or request (REST kinds) of the venue
               every=N     arm at N, 2N, 3N, ...
               after=DUR   arm once DUR after the emulator started
               period=DUR  arm every DUR after the emulator started
               count=K     at/after: fire on K consecutive eligible events (default 1);
                           every/period: stop after K fires (default: no limit);
                           drop_trades: the length of each dropped range in trade messages
                           (default 500)
               for=DUR     stall length / REST timeout length / how long a connection keeps
                           streaming after its shutdown notice (default 3s / 30s / 3s)
               path=TEXT   REST kinds: only requests whose path contains TEXT
               n=N         book_snapshot_ahead: how many updates the snapshot is ahead (default 5,
                           at most 100)
               code=TEXT   rest_code_200: the venue's error code (one its module declares in
                           ``fault_codes``; default: the venue's choice)
               topic=TEXT  drop_trades: only trade streams whose topic contains TEXT (the venue's
                           topic names: see its module; default: every trade stream of the venue)
    DURATION:= NUMBER ("ms" | "s" | "m")?   (bare number = seconds)

With no at/every/after/period a rule arms at the first event (``at=1``). An armed rule fires
on the next *eligible* frame: ``gap`` only on sequenced book updates (frames flagged
``FLAG_SEQ``), ``bad_checksum`` only on frames flagged ``FLAG_CHECKSUM``, the other WS kinds
on any data frame; REST kinds on any matching request (the book_snapshot kinds only on the
path the venue declares for them). Counting is per venue server across its connections;
control frames (acks, pongs, heartbeats, notices) are never counted. The kinds of
``VENUE_KINDS`` exist only on the servers whose module declares them (``ServerSpec.fault_kinds``;
a spec naming another venue is an error, ``all`` narrows to them).

``drop_trades`` counts differently: its events are trade *messages* as the venue generates
them (each one aggregate), of the streams matching ``topic``, whoever is subscribed;
``at``/``every``/``after``/``period`` arm a *range* and ``count=N`` (default 500) is the range's
length in messages (with ``every`` or ``period`` a new range starts each time; there is no
limit on the number of ranges). The trades of a range are generated and remembered as usual
(the history endpoints serve them: see history.py) but never sent to any connection: no frame,
no notice, no other signal. The gap is exact: per stream, consecutive trade ids go missing.
Each range is logged once when it starts and once when it ends, and kept in
``FaultLedger.dropped`` (``Emulator.dropped_trades``) as :class:`DroppedTrades` with its topic
and the first and last dropped trade id (the ids the venue module passes to
:meth:`VenueFaults.drop_trade`). ``faults_fired["drop_trades"][venue]`` counts ranges per
stream (a range that spans two symbols' streams counts twice).

What each kind does to the one connection it fires on: ``disconnect`` aborts the TCP
connection; ``stall`` stops sending for ``for`` seconds; ``gap`` drops the frame;
``duplicate`` sends it twice; ``malformed`` sends a truncated, unparseable frame instead;
``reorder`` sends it after the next frame; ``bad_checksum`` sends it through the venue's
payload transform (``ServerSpec.frame_faults``: a checksum that does not match).
``shutdown_notice`` sends the venue's notice (``Conn.shutdown_notice``) before the frame, keeps
streaming on that connection for ``for`` seconds (a new connection receives the same frames
meanwhile), then closes it with WebSocket close code 1001. ``rest_5xx``, ``rest_429`` and
``rest_code_200`` answer with the venue's error body (``fault_response`` of the venue module:
5xx, 429 with Retry-After, HTTP 200 with an error code); ``rest_timeout`` holds the answer for
``for``.

The REST order book kinds (synth mode) answer a real book state that a client bridging
snapshot and stream must handle: ``book_snapshot_stale`` serves a past state, older than the
first update of the most recent book subscription of that instrument (the client must fetch
again); ``book_snapshot_ahead`` moves the book ``n`` updates on, answers that state and delays
those ``n`` updates to the stream, so the snapshot is newer than anything the client has
received (it must drop the covered updates as they arrive and bridge on the next one). The
venue's handler applies them (``context.REQUEST_FAULT``).

Example: ``disconnect@5s,gap@<server>:every=1000,stall@<server>:at=50:for=3s,rest_5xx:count=2``.

Every fired fault is logged (structlog event ``emulator.fault`` with kind, venue, detail)
and counted in :class:`FaultLedger` (``Emulator.faults_fired[kind][venue]``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from . import registry

log = structlog.get_logger()

WS_KINDS = frozenset({"disconnect", "stall", "gap", "bad_checksum", "duplicate", "malformed", "reorder",
                      "shutdown_notice", "drop_trades"})
# applied where the venue generates trades (before any connection), not per connection frame
GENERATOR_KINDS = frozenset({"drop_trades"})
DROP_TRADES_DEFAULT = 500
BOOK_SNAPSHOT_KINDS = frozenset({"book_snapshot_stale", "book_snapshot_ahead"})
REST_KINDS = frozenset({"rest_5xx", "rest_429", "rest_timeout", "rest_code_200"}) | BOOK_SNAPSHOT_KINDS
KINDS = WS_KINDS | REST_KINDS
# kinds that exist only on the servers whose module declares them (ServerSpec.fault_kinds)
VENUE_KINDS = frozenset({"bad_checksum", "rest_code_200", "book_snapshot_stale", "book_snapshot_ahead",
                         "shutdown_notice", "drop_trades"})
MAX_AHEAD = 100
EVERY_VENUE = ("all", "*")

# frame flags: what a data frame is, for fault eligibility
FLAG_SEQ = 1  # sequenced book update: a missing one is a detectable gap
FLAG_CHECKSUM = 2  # carries a book checksum

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


class FaultSpecError(ValueError):
    """A fault spec that does not follow the grammar (message names the part and the fix)."""


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise FaultSpecError(f"bad duration {text!r}: use e.g. 500ms, 5s, 2m or a number of seconds")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


@dataclass(frozen=True, slots=True)
class FaultRule:
    kind: str
    venues: tuple[str, ...] = ()  # empty: every venue server
    at: int | None = None
    every: int | None = None
    after: float | None = None
    period: float | None = None
    count: int | None = None
    duration: float | None = None
    path: str | None = None
    n: int | None = None
    code: str | None = None
    topic: str | None = None
    text: str = ""

    @property
    def is_rest(self) -> bool:
        return self.kind in REST_KINDS

    def hold_seconds(self) -> float:
        if self.duration is not None:
            return self.duration
        return 30.0 if self.kind == "rest_timeout" else 3.0

    def updates_ahead(self) -> int:
        return self.n if self.n is not None else 5


def _parse_rule(text: str) -> FaultRule:
    head, *options = text.strip().split(":")
    kind, _, target = head.partition("@")
    kind = kind.strip()
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} in {text!r}: allowed {', '.join(sorted(KINDS))}")
    values: dict[str, Any] = {}
    venues = tuple(registry.servers())
    names = registry.names()
    target = target.strip()
    if target and target not in EVERY_VENUE:
        if target in names:
            venues = names[target]
        elif _DURATION.match(target):
            values["after"] = parse_duration(target)
        else:
            raise FaultSpecError(
                f"bad target {target!r} in {text!r}: a venue ({', '.join([*EVERY_VENUE, *names])}) or a duration"
            )
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise FaultSpecError(f"bad option {option!r} in {text!r}: use KEY=VALUE")
        try:
            if key in ("at", "every", "count", "n"):
                number = int(value)
                if number < 1:
                    raise ValueError(value)
                values[key] = number
            elif key in ("after", "period", "for"):
                values["duration" if key == "for" else key] = parse_duration(value)
            elif key == "path":
                values["path"] = value
            elif key == "topic":
                if kind != "drop_trades":
                    raise FaultSpecError(f"bad option topic={value} in {text!r}: only drop_trades takes a topic")
                values["topic"] = value
            elif key == "code":
                if kind != "rest_code_200":
                    raise FaultSpecError(f"bad option code={value} in {text!r}: only rest_code_200 takes a code")
                values["code"] = value
            else:
                raise FaultSpecError(
                    f"unknown option {key!r} in {text!r}: allowed at, every, after, period, count, for, path, n, code, "
                    "topic"
                )
        except ValueError as exc:
            if isinstance(exc, FaultSpecError):
                raise
            raise FaultSpecError(f"bad value {value!r} for {key} in {text!r}: a positive integer") from exc
    if "n" in values and (kind != "book_snapshot_ahead" or values["n"] > MAX_AHEAD):
        raise FaultSpecError(f"bad option n={values['n']} in {text!r}: only book_snapshot_ahead takes n "
                             f"(1..{MAX_AHEAD} updates)")
    if kind in VENUE_KINDS:
        allowed = registry.supporting(kind)
        narrowed = tuple(v for v in venues if v in allowed)
        if not narrowed:
            raise FaultSpecError(f"fault {kind!r} in {text!r} does not exist on {target}: use one of "
                                 f"{', '.join(allowed)} (or no venue)")
        venues = narrowed
        specs = [registry.server(v) for v in venues]
        if "path" not in values:
            values["path"] = next((s.fault_paths[kind] for s in specs if kind in s.fault_paths), None)
        codes = [code for s in specs for code in s.fault_codes]
        if "code" in values and values["code"] not in codes:
            raise FaultSpecError(f"bad option code={values['code']} in {text!r}: rest_code_200 on "
                                 f"{', '.join(venues)} takes one of {', '.join(codes)}")
    return FaultRule(kind=kind, venues=venues, text=text.strip(), **values)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The parsed fault spec."""

    rules: tuple[FaultRule, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        if not spec or not spec.strip():
            return cls()
        return cls(tuple(_parse_rule(part) for part in spec.split(",") if part.strip()))

    def for_venue(self, venue: str) -> tuple[FaultRule, ...]:
        return tuple(rule for rule in self.rules if not rule.venues or venue in rule.venues)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    kind: str
    venue: str
    detail: str
    at_event: int
    monotonic: float


@dataclass
class DroppedTrades:
    """One range of trades a ``drop_trades`` fault kept off one stream (still in the history)."""

    venue: str
    topic: str
    first_id: int
    last_id: int
    messages: int = 0
    done: bool = False


@dataclass
class FaultLedger:
    """Every fired fault, counted per kind and venue (thread-safe: tests read it from outside)."""

    events: list[FaultEvent] = field(default_factory=list)
    dropped: list[DroppedTrades] = field(default_factory=list)
    _counts: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, venue: str, detail: str, at_event: int) -> None:
        with self._lock:
            self.events.append(FaultEvent(kind, venue, detail, at_event, time.monotonic()))
            per_venue = self._counts.setdefault(kind, {})
            per_venue[venue] = per_venue.get(venue, 0) + 1
        log.warning("emulator.fault", kind=kind, venue=venue, detail=detail, at_event=at_event)

    def drop_trade(self, venue: str, topic: str, first_id: int, last_id: int, open_ranges: dict[str, DroppedTrades],
                   at_event: int) -> None:
        """Extend (or start) the open range of ``topic`` with one dropped trade message."""
        current = open_ranges.get(topic)
        if current is None:
            current = open_ranges[topic] = DroppedTrades(venue, topic, first_id, last_id)
            with self._lock:
                self.dropped.append(current)
            self.record("drop_trades", venue, f"{topic} first_id={first_id}", at_event)
        with self._lock:
            current.last_id = last_id
            current.messages += 1

    def close_ranges(self, open_ranges: dict[str, DroppedTrades]) -> None:
        """A drop_trades range is complete: log each stream's exact gap once."""
        for item in open_ranges.values():
            with self._lock:
                item.done = True
            log.warning("emulator.fault_range_done", kind="drop_trades", venue=item.venue, topic=item.topic,
                        first_id=item.first_id, last_id=item.last_id, messages=item.messages)
        open_ranges.clear()

    def dropped_ranges(self) -> list[DroppedTrades]:
        with self._lock:
            return [DroppedTrades(d.venue, d.topic, d.first_id, d.last_id, d.messages, d.done) for d in self.dropped]

    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> venue -> number of times fired."""
        with self._lock:
            return {kind: dict(per) for kind, per in self._counts.items()}

    def total(self, kind: str, venue: str | None = None) -> int:
        with self._lock:
            per = self._counts.get(kind, {})
            return per.get(venue, 0) if venue else sum(per.values())


def first_due(rule: FaultRule, t0: float) -> tuple[int | None, float | None]:
    """When a rule first arms: (event count, wall time); a rule with neither arms at the first event."""
    due_count = rule.at or rule.every
    due_time = t0 + rule.after if rule.after is not None else t0 + rule.period if rule.period is not None else None
    if due_count is None and due_time is None:
        due_count = 1
    return due_count, due_time


class _RuleState:
    __slots__ = ("due_count", "due_time", "fired", "pending", "rule")

    def __init__(self, rule: FaultRule, t0: float) -> None:
        self.rule = rule
        self.fired = 0
        self.pending = 0
        self.due_count, self.due_time = first_due(rule, t0)

    @property
    def limit(self) -> int | None:
        rule = self.rule
        if rule.every is not None or rule.period is not None:
            return rule.count
        return rule.count or 1

    def exhausted(self) -> bool:
        limit = self.limit
        return limit is not None and self.fired >= limit

    def tick(self, n: int, now: float) -> None:
        rule = self.rule
        if self.due_count is not None and n >= self.due_count:
            if rule.every is not None:
                self.pending += 1
                self.due_count += rule.every
            else:
                self.pending = (self.limit or 1) - self.fired
                self.due_count = None
        if self.due_time is not None and now >= self.due_time:
            if rule.period is not None:
                self.pending += 1
                self.due_time += rule.period
            else:
                self.pending = (self.limit or 1) - self.fired
                self.due_time = None


class _DropState:
    """Schedule of one drop_trades rule: arms ranges of ``count`` trade messages."""

    def __init__(self, rule: FaultRule, t0: float) -> None:
        self.rule = rule
        self.seen = 0  # trade messages of matching topics
        self.remaining = 0  # messages still to drop in the current range
        self.length = rule.count or DROP_TRADES_DEFAULT
        self.due_count, self.due_time = first_due(rule, t0)
        self.open: dict[str, DroppedTrades] = {}

    def matches(self, topic: str) -> bool:
        return self.rule.topic is None or self.rule.topic in topic

    def tick(self, now: float) -> None:
        rule = self.rule
        if self.due_count is not None and self.seen >= self.due_count:
            self.remaining = self.length
            self.due_count = self.due_count + rule.every if rule.every is not None else None
        if self.due_time is not None and now >= self.due_time:
            self.remaining = self.length
            self.due_time = self.due_time + rule.period if rule.period is not None else None


def _eligible(kind: str, flags: int) -> bool:
    if kind == "gap":
        return bool(flags & FLAG_SEQ)
    if kind == "bad_checksum":
        return bool(flags & FLAG_CHECKSUM)
    return True


class VenueFaults:
    """Runtime schedule of one venue server: asked once per data frame and per REST request."""

    def __init__(self, venue: str, plan: FaultPlan, ledger: FaultLedger, t0: float | None = None,
                 transforms: Mapping[str, Callable[[bytes], bytes]] | None = None) -> None:
        self.venue = venue
        self.ledger = ledger
        self.transforms = dict(transforms or {})  # WS kind -> the venue's payload transform
        start = time.monotonic() if t0 is None else t0
        rules = plan.for_venue(venue)
        self._ws = [_RuleState(r, start) for r in rules if not r.is_rest and r.kind not in GENERATOR_KINDS]
        self._drops = [_DropState(r, start) for r in rules if r.kind == "drop_trades"]
        self._rest = [_RuleState(r, start) for r in rules if r.is_rest]
        self._ws_timed = any(s.due_time is not None for s in self._ws)
        self._rest_timed = any(s.due_time is not None for s in self._rest)
        self.frames = 0
        self.requests = 0

    @property
    def ws_active(self) -> bool:
        return bool(self._ws)

    @property
    def drops_active(self) -> bool:
        """A drop_trades rule exists: generators must ask :meth:`drop_trade` about each trade message."""
        return bool(self._drops)

    def on_frame(self, flags: int, detail: str) -> list[FaultRule]:
        """Count one outgoing data frame; return the rules that fire on it (already recorded)."""
        self.frames += 1
        if not self._ws:
            return []
        now = time.monotonic() if self._ws_timed else 0.0
        fired: list[FaultRule] = []
        for state in self._ws:
            if state.exhausted():
                continue
            state.tick(self.frames, now)
            if state.pending > 0 and _eligible(state.rule.kind, flags):
                state.pending -= 1
                state.fired += 1
                fired.append(state.rule)
                self.ledger.record(state.rule.kind, self.venue, detail, self.frames)
        return fired

    def drop_trade(self, topic: str, first_id: int, last_id: int) -> bool:
        """Count one generated trade message of ``topic``; True = keep it off the stream (recorded).

        ``first_id``/``last_id``: the first and last trade id the message carries (the same id
        twice for a message that carries one).
        """
        dropped = False
        for state in self._drops:
            if not state.matches(topic):
                continue
            state.seen += 1
            state.tick(time.monotonic() if state.due_time is not None else 0.0)
            if state.remaining > 0:
                state.remaining -= 1
                dropped = True
                self.ledger.drop_trade(self.venue, topic, first_id, last_id, state.open, state.seen)
                if state.remaining == 0:
                    self.ledger.close_ranges(state.open)
        return dropped

    def on_request(self, path: str) -> FaultRule | None:
        """Count one REST request; return the REST fault to apply to it, if any (recorded)."""
        self.requests += 1
        now = time.monotonic() if self._rest_timed else 0.0
        chosen: FaultRule | None = None
        for state in self._rest:
            if state.exhausted():
                continue
            state.tick(self.requests, now)
            if chosen is None and state.pending > 0 and (state.rule.path is None or state.rule.path in path):
                state.pending -= 1
                state.fired += 1
                chosen = state.rule
                self.ledger.record(state.rule.kind, self.venue, path, self.requests)
        return chosen
