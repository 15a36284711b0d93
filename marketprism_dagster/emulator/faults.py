"""Fault injection: the spec grammar, the schedule and the ledger of fired faults.

Grammar (``--faults`` on the CLI, ``EmulatorConfig.faults`` in Python)::

    spec    := rule ("," rule)*
    rule    := KIND ["@" target] (":" KEY "=" VALUE)*
    target  := VENUE | DURATION          a DURATION here is short for after=DURATION

    KIND    := disconnect | stall | gap | bad_checksum | duplicate | malformed | reorder
             | rest_5xx | rest_429 | rest_timeout
    VENUE   := binance_spot | binance_derivatives | binance (both) | okx | okx_spot
             | okx_derivatives (both mean the shared OKX server) | deribit
             | deribit_derivatives | all (default)
    KEY     := at=N        arm at the N-th data frame (WS kinds) or request (REST kinds) of the venue
               every=N     arm at N, 2N, 3N, ...
               after=DUR   arm once DUR after the emulator started
               period=DUR  arm every DUR after the emulator started
               count=K     at/after: fire on K consecutive eligible events (default 1);
                           every/period: stop after K fires (default: no limit)
               for=DUR     stall length / REST timeout length (default 3s / 30s)
               path=TEXT   REST kinds: only requests whose path contains TEXT
    DURATION:= NUMBER ("ms" | "s" | "m")?   (bare number = seconds)

With no at/every/after/period a rule arms at the first event (``at=1``). An armed rule fires
on the next *eligible* frame: ``gap`` only on sequenced book updates (Binance depth diffs,
OKX books updates, Deribit book changes), ``bad_checksum`` only on OKX books frames, the
other WS kinds on any data frame; REST kinds on any matching request. Counting is per venue
server across its connections; control frames (acks, pongs, heartbeats) are never counted.

What each kind does to the one connection it fires on: ``disconnect`` aborts the TCP
connection; ``stall`` stops sending for ``for`` seconds; ``gap`` drops the frame;
``bad_checksum`` sends it with a wrong checksum; ``duplicate`` sends it twice;
``malformed`` sends a truncated, unparseable frame instead; ``reorder`` sends it after the
next frame. ``rest_5xx`` answers 503 (OKX/Deribit: 500 with the venue's error body),
``rest_429`` answers 429 with Retry-After, ``rest_timeout`` holds the answer for ``for``.

Example: ``disconnect@5s,gap@binance_derivatives:every=1000,bad_checksum@okx:at=200,
stall@okx:at=50:for=3s,rest_5xx@binance_spot:count=2``.

Every fired fault is logged (structlog event ``emulator.fault`` with kind, venue, detail)
and counted in :class:`FaultLedger` (``Emulator.faults_fired[kind][venue]``).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger()

WS_KINDS = frozenset({"disconnect", "stall", "gap", "bad_checksum", "duplicate", "malformed", "reorder"})
REST_KINDS = frozenset({"rest_5xx", "rest_429", "rest_timeout"})
KINDS = WS_KINDS | REST_KINDS
VENUES = ("binance_spot", "binance_derivatives", "okx", "deribit")
VENUE_ALIASES: dict[str, tuple[str, ...]] = {
    "all": VENUES,
    "*": VENUES,
    "binance": ("binance_spot", "binance_derivatives"),
    "binance_spot": ("binance_spot",),
    "binance_derivatives": ("binance_derivatives",),
    "binance_usdm": ("binance_derivatives",),
    "okx": ("okx",),
    "okx_spot": ("okx",),
    "okx_derivatives": ("okx",),
    "deribit": ("deribit",),
    "deribit_derivatives": ("deribit",),
}

# frame flags: what a data frame is, for fault eligibility
FLAG_SEQ = 1  # sequenced book update: a missing one is a detectable gap
FLAG_CHECKSUM = 2  # carries an OKX checksum

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
    venues: tuple[str, ...] = VENUES
    at: int | None = None
    every: int | None = None
    after: float | None = None
    period: float | None = None
    count: int | None = None
    duration: float | None = None
    path: str | None = None
    text: str = ""

    @property
    def is_rest(self) -> bool:
        return self.kind in REST_KINDS

    def hold_seconds(self) -> float:
        if self.duration is not None:
            return self.duration
        return 30.0 if self.kind == "rest_timeout" else 3.0


def _parse_rule(text: str) -> FaultRule:
    head, *options = text.strip().split(":")
    kind, _, target = head.partition("@")
    kind = kind.strip()
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} in {text!r}: allowed {', '.join(sorted(KINDS))}")
    values: dict[str, Any] = {}
    venues = VENUES
    target = target.strip()
    if target:
        if target in VENUE_ALIASES:
            venues = VENUE_ALIASES[target]
        elif _DURATION.match(target):
            values["after"] = parse_duration(target)
        else:
            raise FaultSpecError(
                f"bad target {target!r} in {text!r}: a venue ({', '.join(VENUE_ALIASES)}) or a duration"
            )
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise FaultSpecError(f"bad option {option!r} in {text!r}: use KEY=VALUE")
        try:
            if key in ("at", "every", "count"):
                number = int(value)
                if number < 1:
                    raise ValueError(value)
                values[key] = number
            elif key in ("after", "period", "for"):
                values["duration" if key == "for" else key] = parse_duration(value)
            elif key == "path":
                values["path"] = value
            else:
                raise FaultSpecError(
                    f"unknown option {key!r} in {text!r}: allowed at, every, after, period, count, for, path"
                )
        except ValueError as exc:
            if isinstance(exc, FaultSpecError):
                raise
            raise FaultSpecError(f"bad value {value!r} for {key} in {text!r}: a positive integer") from exc
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
        return tuple(rule for rule in self.rules if venue in rule.venues)


@dataclass(frozen=True, slots=True)
class FaultEvent:
    kind: str
    venue: str
    detail: str
    at_event: int
    monotonic: float


@dataclass
class FaultLedger:
    """Every fired fault, counted per kind and venue (thread-safe: tests read it from outside)."""

    events: list[FaultEvent] = field(default_factory=list)
    _counts: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, venue: str, detail: str, at_event: int) -> None:
        with self._lock:
            self.events.append(FaultEvent(kind, venue, detail, at_event, time.monotonic()))
            per_venue = self._counts.setdefault(kind, {})
            per_venue[venue] = per_venue.get(venue, 0) + 1
        log.warning("emulator.fault", kind=kind, venue=venue, detail=detail, at_event=at_event)

    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> venue -> number of times fired."""
        with self._lock:
            return {kind: dict(per) for kind, per in self._counts.items()}

    def total(self, kind: str, venue: str | None = None) -> int:
        with self._lock:
            per = self._counts.get(kind, {})
            return per.get(venue, 0) if venue else sum(per.values())


class _RuleState:
    __slots__ = ("due_count", "due_time", "fired", "pending", "rule")

    def __init__(self, rule: FaultRule, t0: float) -> None:
        self.rule = rule
        self.fired = 0
        self.pending = 0
        self.due_count: int | None = rule.at or rule.every
        self.due_time: float | None = None
        if rule.after is not None:
            self.due_time = t0 + rule.after
        elif rule.period is not None:
            self.due_time = t0 + rule.period
        if self.due_count is None and self.due_time is None:
            self.due_count = 1

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


def _eligible(kind: str, flags: int) -> bool:
    if kind == "gap":
        return bool(flags & FLAG_SEQ)
    if kind == "bad_checksum":
        return bool(flags & FLAG_CHECKSUM)
    return True


class VenueFaults:
    """Runtime schedule of one venue server: asked once per data frame and per REST request."""

    def __init__(self, venue: str, plan: FaultPlan, ledger: FaultLedger, t0: float | None = None) -> None:
        self.venue = venue
        self.ledger = ledger
        start = time.monotonic() if t0 is None else t0
        rules = plan.for_venue(venue)
        self._ws = [_RuleState(r, start) for r in rules if not r.is_rest]
        self._rest = [_RuleState(r, start) for r in rules if r.is_rest]
        self._ws_timed = any(s.due_time is not None for s in self._ws)
        self._rest_timed = any(s.due_time is not None for s in self._rest)
        self.frames = 0
        self.requests = 0

    @property
    def ws_active(self) -> bool:
        return bool(self._ws)

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
