"""A thin asynchronous JetStream publisher: a bounded window of in-flight acks, never blocking the caller.

nats-py's ``js.publish`` waits for each PubAck (one round trip per record). This publisher
instead sends every message with core NATS ``PUB`` and a reply subject under one wildcard
ack inbox, keeps up to ``max_inflight`` acks outstanding, and matches the PubAcks as they
arrive. Every message carries ``Nats-Msg-Id`` (the record identity), so a retry after a
timeout, an error reply or a reconnect is safe: JetStream drops the copy and answers
``"duplicate": true``, which is counted.

``submit`` is synchronous and never waits: it appends to a bounded buffer and returns False
(counted in ``stats.dropped``) when the buffer is full, e.g. while NATS is down. A pump task
drains the buffer while the connection is up and the ack window has room.

An error reply (no responders, a stream without a leader while a cluster elects one) is retried
with capped exponential backoff for ``retry_for_s`` (default 2 minutes) from the message's first
error before it is given up on (``stats.failed``). ``take_pending`` hands back every message not
yet acknowledged (the collector spills them to disk at shutdown) and ``restore`` queues them again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.nats_raw import remove, status_of, subscribe_raw

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
RETRY_INITIAL_S = 0.05  # a message's first retry; doubling up to retry_backoff_max_s
BATCH = 256  # messages per write to the connection's buffer
# publish latency (submit -> PubAck) histogram bucket upper bounds, seconds
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class _Item:
    subject: str
    payload: bytes
    msg_id: str
    submitted: float  # monotonic time of submit (latency origin)
    attempts: int = 0
    sent_at: float = 0.0
    not_before: float = 0.0
    first_error: float | None = None  # monotonic time of the first error reply (start of the retry bound)


@dataclass
class PublishStats:
    """Counters read by /metrics at scrape time (plain ints: cheap on the hot path)."""

    submitted: int = 0
    sent: int = 0  # PUBs written, retries included
    acked: int = 0  # PubAcks that stored the message (duplicates excluded)
    duplicates: int = 0  # PubAcks with duplicate=true
    errors: dict[str, int] = field(default_factory=dict)  # error replies by code ("503", "no_responders", ...)
    timeouts: int = 0  # acks not received within ack_timeout_s (then retried)
    retries: int = 0
    dropped: int = 0  # rejected by submit: buffer full
    failed: int = 0  # gave up: error replies for longer than retry_for_s
    restored: int = 0  # queued again from a previous run's spill (not counted in submitted)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def hpub_head(subject: str, reply: str, msg_id: str, payload_len: int) -> bytes:
    """An HPUB command up to its payload: protocol line and the Nats-Msg-Id header block."""
    hdr = f"NATS/1.0\r\n{MSG_ID_HEADER}: {msg_id}\r\n\r\n"
    n = len(hdr) if hdr.isascii() else len(hdr.encode())
    return f"HPUB {subject} {reply} {n} {n + payload_len}\r\n{hdr}".encode()


class JetStreamPublisher:
    """Publish to JetStream with a bounded ack window, retries with the same Msg-Id, bounded buffering."""

    def __init__(
        self,
        nc: NATS,
        *,
        max_inflight: int = 4096,
        buffer_size: int = 200_000,
        ack_timeout_s: float = 5.0,
        retry_for_s: float = 120.0,
        retry_backoff_max_s: float = 2.0,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.nc = nc
        self.max_inflight = max_inflight
        self.buffer_size = buffer_size
        self.ack_timeout_s = ack_timeout_s
        self.retry_for_s = retry_for_s  # error replies are retried this long before a message is given up on
        self.retry_backoff_max_s = retry_backoff_max_s
        self._retry_delays = Backoff(RETRY_INITIAL_S, retry_backoff_max_s, jitter=0)  # per message: its attempts
        self.on_failed = on_failed  # (subject, reason) for a message given up on
        self.stats = PublishStats()
        self._buffer: deque[_Item] = deque()
        self._retry: deque[_Item] = deque()
        self._inflight: dict[str, _Item] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._ack_sub: Subscription | None = None
        self._ack_sid: int | None = None
        self._closed = False
        self._gave_up_codes: set[str] = set()
        # nats-py exposes no batched publish; write HPUB commands into its outgoing buffer directly
        # when the (private, stable since 2.0) methods are there, else fall back to nc.publish.
        self._fast = hasattr(nc, "_send_command") and hasattr(nc, "_flush_pending")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> JetStreamPublisher:
        self._prefix = self.nc.new_inbox() + "."
        # PubAcks straight from the protocol parser (nats_raw): no Msg object, queue or callback task per ack
        self._ack_sub, self._ack_sid = await subscribe_raw(self.nc, self._prefix + "*", self._on_ack)
        self._tasks = [
            asyncio.create_task(self._pump(), name="publisher.pump"),
            asyncio.create_task(self._sweep(), name="publisher.sweep"),
        ]
        return self

    async def close(self, flush_timeout: float = 5.0) -> bool:
        """Flush what can be flushed within the timeout, then stop. True when nothing was left behind."""
        flushed = await self.flush(flush_timeout)
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self._unsubscribe_acks()
        if not flushed:
            log.warning("publisher.closed_with_pending", pending=self.pending)
        return flushed

    async def _unsubscribe_acks(self) -> None:
        if self._ack_sid is not None:
            remove(self.nc, self._ack_sid)
            self._ack_sid = None
        if self._ack_sub is not None:
            with contextlib.suppress(Exception):
                await self._ack_sub.unsubscribe()
            self._ack_sub = None

    async def flush(self, timeout: float) -> bool:
        """Wait until every submitted message is acknowledged (or given up on). False on timeout."""
        if self.pending == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ hot path

    @property
    def started(self) -> bool:
        """The pump runs (``start`` was called, ``close`` not yet)."""
        return bool(self._tasks)

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._retry) + len(self._inflight)

    def oldest_pending(self) -> float | None:
        """Submit time (monotonic) of the oldest message not yet acknowledged or given up on; None if none."""
        times = [item.submitted for item in self._inflight.values()]
        times += [item.submitted for item in self._retry]
        if self._buffer:
            times.append(self._buffer[0].submitted)  # the buffer is in submit order
        return min(times) if times else None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._retry)

    def submit(self, subject: str, payload: bytes, msg_id: str) -> bool:
        """Queue one message; never waits. False (and counted) when the buffer is full."""
        if "\r" in msg_id or "\n" in msg_id:
            msg_id = msg_id.replace("\r", " ").replace("\n", " ")
        if len(self._buffer) + len(self._retry) >= self.buffer_size:
            self.stats.dropped += 1
            return False
        self._buffer.append(_Item(subject, payload, msg_id, time.monotonic()))
        self.stats.submitted += 1
        if self._idle.is_set():
            self._idle.clear()
        self._wake.set()
        return True

    def take_pending(self) -> list[tuple[str, bytes, str]]:
        """Remove and return (subject, payload, msg_id) of every message not yet acknowledged, oldest submit
        first. Call it once the pump is stopped (after ``close``)."""
        items = sorted([*self._inflight.values(), *self._retry, *self._buffer], key=lambda item: item.submitted)
        self._inflight.clear()
        self._retry.clear()
        self._buffer.clear()
        self._idle.set()
        return [(item.subject, item.payload, item.msg_id) for item in items]

    def restore(self, entries: list[tuple[str, bytes, str]]) -> None:
        """Queue messages a previous run could not publish (its spill), ahead of anything submitted later and
        regardless of the buffer bound (they were within it when spilled). Same Msg-Ids: copies are dropped."""
        now = time.monotonic()
        self._buffer.extendleft(_Item(subject, payload, msg_id, now) for subject, payload, msg_id in reversed(entries))
        self.stats.restored += len(entries)
        if entries:
            self._idle.clear()
            self._wake.set()

    def requeue_inflight(self) -> None:
        """After a reconnect: resend everything whose ack may have been lost (dedup makes it safe)."""
        if not self._inflight:
            return
        items = list(self._inflight.values())
        self._inflight.clear()
        self.stats.retries += len(items)
        self._retry.extendleft(reversed(items))
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _pump(self) -> None:
        nc = self.nc
        inflight = self._inflight
        buffer = self._buffer
        retry = self._retry
        prefix = self._prefix
        while not self._closed:
            if not nc.is_connected:
                await self._wait_wake(0.1)
                continue
            now = time.monotonic()
            while len(inflight) < self.max_inflight and nc.is_connected:
                batch: list[tuple[str, _Item]] = []
                room = min(self.max_inflight - len(inflight), BATCH)
                while len(batch) < room:
                    if retry and retry[0].not_before <= now:
                        item = retry.popleft()
                    elif buffer:
                        item = buffer.popleft()
                    else:
                        break
                    token = prefix + str(next(self._tokens))
                    item.attempts += 1
                    item.sent_at = now
                    inflight[token] = item
                    batch.append((token, item))
                if not batch:
                    break
                try:
                    await self._write(batch)
                except Exception as exc:  # connection closed between the check and the write
                    for token, item in reversed(batch):
                        inflight.pop(token, None)
                        retry.appendleft(item)
                    log.warning("publisher.write_failed", error=repr(exc), count=len(batch))
                    break
                self.stats.sent += len(batch)
                await asyncio.sleep(0)  # let acks in
                now = time.monotonic()
            self._check_idle()
            if retry and not buffer and len(inflight) < self.max_inflight:
                await self._wait_wake(max(0.0, min(0.1, retry[0].not_before - time.monotonic())))
            else:
                await self._wait_wake(0.25)

    async def _write(self, batch: list[tuple[str, _Item]]) -> None:
        """Write HPUB commands for a batch: one buffer append and one flush kick instead of one per message."""
        nc = self.nc
        if not self._fast:
            for token, item in batch:
                await nc.publish(item.subject, item.payload, reply=token, headers={MSG_ID_HEADER: item.msg_id})
            return
        parts: list[bytes] = []
        add = parts.extend
        for token, item in batch:  # one join for the batch: head, payload, CRLF per message
            payload = item.payload
            add((hpub_head(item.subject, token, item.msg_id, len(payload)), payload, b"\r\n"))
        chunk = b"".join(parts)
        nc.stats["out_msgs"] += len(batch)
        await nc._send_command(chunk)
        await nc._flush_pending()

    async def _wait_wake(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _check_idle(self) -> None:
        if not self._buffer and not self._retry and not self._inflight:
            self._idle.set()

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """One PubAck (or error reply) on the ack inbox, as raw bytes from the parser."""
        item = self._inflight.pop(subject.decode(), None)
        if item is None:
            return  # late ack of a message already timed out and resent
        if len(self._inflight) == self.max_inflight - 1 or not self._inflight:
            self._wake.set()
        stats = self.stats
        if not data:
            st = status_of(headers)
            status = st[0] if st is not None else None
            self._retry_later(item, "no_responders" if status == "503" else f"status_{status}")
            return
        # an ordinary PubAck is {"stream":"S","seq":N}: only an error reply, a duplicate or anything unexpected
        # is parsed
        if b"error" in data or b"duplicate" in data or not data.startswith(b"{") or b'"seq":' not in data:
            try:
                ack = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._retry_later(item, "bad_ack")
                return
            if not isinstance(ack, dict):
                self._retry_later(item, "bad_ack")
                return
            err = ack.get("error")
            if err is not None:
                code = err.get("err_code") or err.get("code") if isinstance(err, dict) else None
                self._retry_later(item, str(code or "unknown"))
                return
            if ack.get("duplicate"):
                stats.duplicates += 1
            else:
                stats.acked += 1
        else:
            stats.acked += 1
        stats.observe_latency(time.monotonic() - item.submitted)
        if not self._inflight and not self._buffer and not self._retry:
            self._idle.set()

    def _retry_later(self, item: _Item, code: str) -> None:
        self.stats.count_error(code)
        now = time.monotonic()
        if item.first_error is None:
            item.first_error = now
        if now - item.first_error >= self.retry_for_s:
            self.stats.failed += 1
            # logged once per error code (a stream gone for good fails every message); all are counted
            emit = log.error if code not in self._gave_up_codes else log.debug
            self._gave_up_codes.add(code)
            emit(
                "publisher.gave_up",
                failed_total=self.stats.failed,
                subject=item.subject,
                msg_id=item.msg_id,
                code=code,
                attempts=item.attempts,
                retried_s=round(now - item.first_error, 1),
                fix="check the stream for this subject (nats stream info) or raise collector.publish_retry_s",
            )
            if self.on_failed is not None:
                self.on_failed(item.subject, code)
            self._check_idle()
            return
        self.stats.retries += 1
        item.not_before = now + self._retry_delays.delay(item.attempts - 1)
        self._retry.append(item)
        self._wake.set()

    async def _sweep(self) -> None:
        """Resend messages whose ack did not arrive in time (lost on a reconnect, server restart, ...)."""
        interval = max(0.05, self.ack_timeout_s / 4)
        while not self._closed:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - self.ack_timeout_s
            expired: list[str] = []
            for token, item in self._inflight.items():
                if item.sent_at > cutoff:
                    break  # insertion order is send order
                expired.append(token)
            if not expired:
                continue
            items = [self._inflight.pop(t) for t in expired]
            self.stats.timeouts += len(items)
            self.stats.retries += len(items)
            self._retry.extendleft(reversed(items))
            log.warning("publisher.ack_timeout", count=len(items), connected=self.nc.is_connected)
            self._wake.set()
