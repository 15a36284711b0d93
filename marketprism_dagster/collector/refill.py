"""Refill source gaps from the venues' history (DESIGN 6b, issue 11).

``Refiller.fill(market, window)`` walks the venue's history endpoint for one ``Window`` of missing data
(``venues/history.py``: the venue declares its ``histories`` and the pure page mappings), page by page,
through the live collector's ``RestClient``: the same per-host ``RateLimiter`` (the venue's weight budget
and weight header), 429/418 Retry-After waits, 5xx retries. On top of that it keeps to the endpoint's own
request limit (``History.min_interval_s`` between pages) and retries a page that still failed with
``Backoff``. Every record the window wants (``Window.wants``: ids or times strictly inside the gap, so a
refilled record never shares an identity with a live one) is handed to ``publish``: the collector's own
publishing path, so refilled records carry the live identities as Nats-Msg-Id and a refill run twice
stores nothing twice.

``Refiller.repair(market, gap)`` refills one ``source_gap`` record and publishes the gap again with its
outcome: state ``repaired`` and ``recovered`` = the records published, or ``unrecoverable`` with the reason
(the venue keeps no history of the type, the window is beyond its retention, ids the venue no longer
serves). A refill that cannot reach the venue leaves the gap ``open`` (nothing is published); the
automatic worker tries it again later.

``Refiller.offer`` / ``Refiller.run`` are the automatic path: the collector offers every ``source_gap`` it
publishes; open gaps of the refillable causes (``AUTO_CAUSES``) are queued (bounded; overflow counted and
logged) and refilled one at a time after ``delay_s`` (the venue's history may lag its stream a little).
A stopping collector ``save``s the gaps it has not refilled (``pending_path``); the next start queues them
again (a planned restart's successor reads the file at its own next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from marketprism_dagster import records
from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.gaps import AUTO_CAUSES, OPEN, REPAIRED, UNRECOVERABLE
from marketprism_dagster.collector.rest import RestClient, RestError
from marketprism_dagster.timeutil import DAY_MS, now_ms
from marketprism_dagster.venues.base import VenueAdapter
from marketprism_dagster.venues.history import History, Page, PageResult, Window, history_for

log = structlog.get_logger(__name__)

# gap causes a refill is started for automatically: trade-id jumps, missed polls, and the windows in which the
# collector saw nothing (a disconnect, its own downtime); book gaps cannot be refilled (no venue keeps them)
PAGE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError, msgspec.DecodeError)
MAX_PAGES = 100_000  # a walk that does not end (a venue ignoring its cursor) stops here, the gap stays open
QUEUE_SIZE = 10_000

Publish = Callable[[str, list[Any]], list[Any]]  # (market, records) -> the records the publisher rejected (full)


def pending_path(data_dir: str | Path, shard: str) -> Path:
    """Where a stopping collector leaves the gaps it had not refilled yet (read back at its next start)."""
    return Path(data_dir) / "collector" / f"refill-pending-{shard}.jsonl"


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str  # repaired | unrecoverable | open (the venue could not be read: nothing published)
    recovered: int
    detail: str
    pages: int = 0


def window_of(gap: Any) -> Window:
    """The ``Window`` of a ``source_gap`` record (ids as the venue numbers them; '' = unknown)."""
    first, last = gap.first_missing_id, gap.last_missing_id
    by_id = first.isdigit() and last.isdigit()
    return Window(
        data_type=gap.gap_data_type,
        symbol=gap.exchange_symbol,
        after_ms=int(gap.timestamp),
        before_ms=int(gap.end_time),
        first_id=int(first) if by_id else None,
        last_id=int(last) if by_id else None,
    )


class Refiller:
    def __init__(
        self,
        rest: RestClient,
        adapters: Mapping[str, VenueAdapter],
        publish: Publish,
        *,
        clock: Callable[[], int] = now_ms,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 10.0),
        page_attempts: int = 6,
        delay_s: float = 2.0,
        retry_s: float = 60.0,
        gap_attempts: int = 3,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_event: Callable[[str, str, int], None] | None = None,
        path: Path | None = None,
    ) -> None:
        self.rest = rest
        self.adapters = adapters
        self.publish = publish
        self.clock = clock
        self._backoff = backoff
        self.page_attempts = page_attempts
        self.delay_s = delay_s
        self.retry_s = retry_s
        self.gap_attempts = gap_attempts
        self._sleep = sleep
        self._on_event = on_event  # (market, event, n): counted in the collector's adapter-event metric
        self._queue: list[tuple[float, int, int, str, Any]] = []  # heap: (due monotonic, seq, attempt, market, gap)
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._logged: set[str] = set()
        self.dropped = 0  # gaps offered while the queue was full
        self.done: list[tuple[str, Any, Outcome]] = []  # the latest outcomes (bounded), for tests and the API
        self.busy = False
        self.path = path  # the pending gaps across restarts (None: not kept)
        self._current: tuple[str, Any] | None = None  # the gap being refilled

    # ------------------------------------------------------------ one window
    async def fill(self, market: str, window: Window) -> Outcome:
        """Walk the history of ``window`` and publish what it wants; never raises for venue trouble."""
        adapter = self.adapters.get(market)
        if adapter is None:
            return Outcome(UNRECOVERABLE, 0, f"market {market} is not collected here")
        hist = history_for(adapter, window.data_type)
        if hist is None:
            return Outcome(UNRECOVERABLE, 0, f"{adapter.venue} keeps no history of {window.data_type}")
        if not adapter.instruments:
            return Outcome(OPEN, 0, f"the instruments of {market} are not loaded yet")
        inst = adapter.instruments.get(window.symbol)
        if inst is None:
            return Outcome(UNRECOVERABLE, 0, f"{window.symbol} is not an instrument of {market}")
        now = self.clock()
        if hist.retention_ms is not None and window.before_ms <= now - hist.retention_ms:
            days = hist.retention_ms / DAY_MS
            return Outcome(UNRECOVERABLE, 0, f"beyond the venue's retention of {window.data_type} ({days:g} days)")
        try:
            page: Page | None = getattr(adapter, hist.first)(window, inst)
        except PAGE_ERRORS as exc:
            return Outcome(OPEN, 0, f"cannot build the history request: {exc!r}")
        seen: set[str] = set()
        recovered = pages = 0
        while page is not None:
            if pages >= MAX_PAGES:
                return Outcome(OPEN, recovered, f"history walk stopped after {pages} pages", pages)
            try:
                body, received_at = await self._get(market, page)
            except RestError as exc:
                return Outcome(OPEN, recovered, f"history request failed: {exc}", pages)
            pages += 1
            try:
                result: PageResult = getattr(adapter, hist.page)(window, inst, page, body, received_at)
            except PAGE_ERRORS as exc:
                self._bad_page(market, hist, exc, body)
                return Outcome(OPEN, recovered, f"history answer unreadable: {exc!r}", pages)
            for event, n in result.events.items():
                self._event(market, event, n)
            keep = []
            for r in result.records:
                ident = records.msg_id(r)
                if ident not in seen and window.wants(r):
                    seen.add(ident)
                    keep.append(r)
            if keep:
                recovered += await self._publish(market, keep)
            page = result.next
            if page is not None and hist.min_interval_s > 0:
                await self._sleep(hist.min_interval_s)
        return self._judge(window, recovered, pages)

    @staticmethod
    def _judge(window: Window, recovered: int, pages: int) -> Outcome:
        wanted = window.missing_ids
        if wanted is not None:
            if recovered < wanted:
                return Outcome(
                    UNRECOVERABLE, recovered, f"the venue served {recovered} of the {wanted} missing ids", pages
                )
            return Outcome(REPAIRED, recovered, f"ids {window.first_id}..{window.last_id} refilled", pages)
        return Outcome(REPAIRED, recovered, f"{recovered} points refilled from history", pages)

    async def _get(self, market: str, page: Page) -> tuple[bytes, int]:
        """One page through the shared RestClient; a page it gave up on (non-permanent) is asked again with backoff."""
        backoff = self._backoff()
        for attempt in range(1, self.page_attempts + 1):
            try:
                return await self.rest.get(market, page.url, page.weight)
            except RestError as exc:
                if exc.permanent or attempt == self.page_attempts:
                    raise
                delay = backoff.next()
                log.warning("collector.refill_retry", market=market, url=page.url, error=str(exc), retry_in_s=delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _publish(self, market: str, recs: list[Any]) -> int:
        """Publish through the collector's path; records a full buffer rejected are offered again (bounded)."""
        pending = recs
        for _ in range(100):
            rejected = self.publish(market, pending)
            if not rejected:
                return len(recs)
            pending = rejected
            await self._sleep(0.1)
        return len(recs) - len(pending)

    def _bad_page(self, market: str, hist: History, exc: Exception, body: bytes) -> None:
        self._event(market, "refill_parse_error", 1)
        key = f"{market}:{hist.data_type}:{type(exc).__name__}"
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "collector.refill_bad_answer", market=market, path=hist.path, error=repr(exc), sample=body[:200]
            )

    def _event(self, market: str, event: str, n: int) -> None:
        if self._on_event is not None and n:
            self._on_event(market, event, n)

    # ------------------------------------------------------------ one gap record
    async def repair(self, market: str, gap: Any) -> Outcome:
        """Refill one ``source_gap`` record; publish it again as ``repaired`` / ``unrecoverable`` (not when open)."""
        outcome = await self.fill(market, window_of(gap))
        if outcome.state != OPEN:
            done = msgspec.structs.replace(
                gap, state=outcome.state, recovered=outcome.recovered, detail=outcome.detail, received_at=self.clock()
            )
            await self._publish(market, [done])
        self._event(market, f"refill_{outcome.state}", 1)
        if outcome.recovered:
            self._event(market, "refill_recovered", outcome.recovered)
        log.info(
            "collector.refill",
            market=market,
            symbol=gap.symbol,
            data_type=gap.gap_data_type,
            cause=gap.cause,
            state=outcome.state,
            recovered=outcome.recovered,
            pages=outcome.pages,
            detail=outcome.detail,
        )
        self.done.append((market, gap, outcome))
        del self.done[:-100]
        return outcome

    # ------------------------------------------------------------ automatic
    def wants(self, market: str, record: Any) -> bool:
        """An open gap of a refillable cause in a market collected here. A type the venue keeps no history of
        (liquidations) is taken too: its refill publishes it ``unrecoverable`` with that reason, so no gap of a
        missed feed stays open (book gaps are unrecoverable from the start)."""
        if type(record) is not records.SourceGap:
            return False
        gap: Any = record
        return gap.state == OPEN and gap.cause in AUTO_CAUSES and market in self.adapters

    def offer(self, market: str, recs: list[Any]) -> None:
        """Queue the open, refillable gaps among ``recs`` (the records a collector just published)."""
        for r in recs:
            if not self.wants(market, r):
                continue
            if len(self._queue) >= QUEUE_SIZE:
                self.dropped += 1
                self._event(market, "refill_queue_full", 1)
                if "queue_full" not in self._logged:
                    self._logged.add("queue_full")
                    log.warning("collector.refill_queue_full", size=QUEUE_SIZE, market=market)
                continue
            self._push(time.monotonic() + self.delay_s, 1, market, r)

    def _push(self, due: float, attempt: int, market: str, gap: Any) -> None:
        heapq.heappush(self._queue, (due, next(self._seq), attempt, market, gap))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self.busy else 0)

    def save(self) -> int:
        """Write the gaps not refilled yet (queued, or interrupted mid-refill) for the next start; returns how many.
        A failed write is logged: those gaps stay open in the store (the source_gap check reports them)."""
        if self.path is None:
            return 0
        items = sorted(self._queue)
        pending = [(m, g) for _, _, _, m, g in items]
        if self._current is not None:
            pending.insert(0, self._current)
        try:
            if not pending:
                self.path.unlink(missing_ok=True)
                return 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            lines = [json.dumps({"market": m, "gap": records.encode(g).decode()}) for m, g in pending]
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("collector.refill_save_failed", path=str(self.path), count=len(pending), error=repr(exc))
            return 0
        log.info("collector.refill_pending_saved", path=str(self.path), count=len(pending))
        return len(pending)

    def restore(self) -> int:
        """Queue the gaps a previous run left (its ``save``) and remove the file; unreadable lines are counted."""
        if self.path is None:
            return 0
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("collector.refill_restore_failed", path=str(self.path), error=repr(exc))
            return 0
        n = bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                gap = records.decode(item["gap"], "source_gap")
                market = str(item["market"])
            except (ValueError, KeyError, TypeError, msgspec.DecodeError):
                bad += 1
                continue
            self._push(time.monotonic() + self.delay_s, 1, market, gap)
            n += 1
        if bad:
            self._event("", "refill_pending_unreadable", bad)
            log.warning("collector.refill_pending_unreadable", path=str(self.path), lines=bad)
        with contextlib.suppress(OSError):
            self.path.unlink()
        log.info("collector.refill_pending_restored", path=str(self.path), count=n)
        return n

    async def run(self) -> None:
        """Refill queued gaps one at a time, each once it is due; an open outcome is tried again later. Gaps a
        previous run left are queued first (``restore``)."""
        self.restore()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, attempt, market, gap = self._queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            heapq.heappop(self._queue)
            self.busy = True
            self._current = (market, gap)
            try:
                outcome = await self.repair(market, gap)
            except Exception as exc:  # a bug must not end the worker: the gap stays open, counted and logged
                self._event(market, "refill_failed", 1)
                log.exception("collector.refill_failed", market=market, error=repr(exc))
                outcome = Outcome(OPEN, 0, repr(exc))
            finally:
                self.busy = False
                self._current = None
            if outcome.state == OPEN and attempt < self.gap_attempts:
                self._push(time.monotonic() + self.retry_s * attempt, attempt + 1, market, gap)
