"""The hot writer process: JetStream durable consumers -> hot tables, exactly once in effect.

One asyncio task per stream fetches from its durable consumer, keeps messages in sequence
order (``consumer.StreamBuffer``), and commits contiguous ranges through ``ingest``; the
store runs in one worker thread (chDB serializes sessions per process anyway), so fetching,
heartbeats and HTTP stay responsive while a batch is inserted. When the store is unavailable
the stream stops fetching and retries the same prepared batch with capped backoff; its
messages stay unacknowledged in JetStream. SIGTERM (or ``stop``) finishes the batch in hand.

Entry point for the CLI and Dagster: ``run_writer(settings, stop=..., heartbeat=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect, ensure_stream, ensure_streams
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.ledger.queries import resume_point
from marketprism_dagster.serving import stop_on_signals
from marketprism_dagster.storage import StoreUnavailable, init_schema, open_store
from marketprism_dagster.storage.base import Store
from marketprism_dagster.writer.consumer import (
    DurableReader,
    StreamBuffer,
    Taken,
    read_range,
)
from marketprism_dagster.writer.deadletter import ensure_dead_letter_stream, publish_dead_letters
from marketprism_dagster.writer.epoch import EpochSwitch, archived_name, check_epoch, created_of
from marketprism_dagster.writer.http import WriterHttp
from marketprism_dagster.writer.ingest import (
    BatchResult,
    Poison,
    PreparedBatch,
    commit_prepared,
    ensure_writer_tables,
    prepare_batch,
)
from marketprism_dagster.writer.lease import WriterLease
from marketprism_dagster.writer.metrics import WriterMetrics

log = structlog.get_logger(__name__)
T = TypeVar("T")

MIN_BACKOFF_S = 0.25
HAND_OVER_PERIOD_S = 0.25
# A commit that fails this many times with an error other than StoreUnavailable is rejected by the
# store, not waiting for it: the range is split in halves (each committed on its own) until the
# messages the store refuses are single; those are dead-lettered with the store's error.
REJECTED_AFTER_ERRORS = 3
# Dead letters that cannot be published after this many attempts stop the writer (the run fails and
# alerts; a restart re-creates the dead-letter stream): the batch stays unacknowledged in JetStream.
DEAD_LETTER_ATTEMPTS = 6


async def still_held(js: Any, stream: str, seq: int) -> bool:
    """Whether the stream still holds ``seq`` (any answer but "not found" counts as held: never call a message
    absent on a doubt)."""
    try:
        await js.get_msg(stream, seq=seq)
    except NotFoundError:
        return False
    except Exception:
        return True
    return True


async def add_read(buf: StreamBuffer, msgs: list[StreamMessage], js: Any) -> tuple[list[StreamMessage], bool]:
    """Add a catch-up read (``read_range`` from ``buf.expected``) to the buffer: (the messages added, whether the
    read was short).

    A sequence the read skipped is marked absent (committed without it: ``ledger.lost``) only when the stream
    no longer holds it. From a skipped sequence the stream still holds nothing more is added (the read was short:
    it is read again next time): never commit past a message JetStream still has."""
    prev = buf.watermark
    for i, sm in enumerate(msgs):
        if sm.seq > prev + 1:
            if await still_held(js, buf.stream, prev + 1):
                log.warning("writer.catch_up_short_read", stream=buf.stream, missing_from=prev + 1, next_read=sm.seq)
                return msgs[:i], True
            buf.mark_absent(prev + 1, sm.seq - 1)
        buf.add(sm.seq, sm, None)
        prev = sm.seq
    return msgs, False


async def first_held_hole(js: Any, stream: str, taken: Taken) -> int | None:
    """The first sequence of a stretch ``taken`` spans without a message (committed as absent) that the stream
    still holds, or None. A range may skip only what JetStream no longer has; checked before every commit of a
    range with holes (rare: messages that expired before the writer got to them)."""
    if len(taken.messages) == taken.last_seq - taken.first_seq + 1:
        return None  # no hole: the usual case, decided without a look at the messages
    have = {m.seq for m in taken.messages}
    for seq in range(taken.first_seq, taken.last_seq + 1):
        if seq not in have and (seq == taken.first_seq or seq - 1 in have) and await still_held(js, stream, seq):
            return seq
    return None


class BatchRejected(Exception):
    """The store keeps refusing a batch with the same kind of error: retrying it unchanged cannot succeed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class WriterFailure(Exception):
    """The writer cannot go on; the message names the cause and the fix."""


@dataclass
class StreamState:
    name: str
    reader: DurableReader
    buffer: StreamBuffer
    recovery_end: int | None  # ranges starting at or below this are committed in recovery mode (a crash)
    horizon: int = 0  # sequences up to this are covered by an intent already written (see ``ingest``)
    last_seq: int = 0
    first_seq: int = 0
    acked_seq: int = 0
    avg_msg_bytes: float = 512.0
    catching_up: bool = False
    epoch: int = 0  # ledger epoch (a deleted and recreated stream starts the next one)
    created: str = ""  # the stream's creation time on the server: its identity
    reset: str | None = None  # why the stream on the server is no longer the ledger's (a new epoch is due)


class WriterService:
    """One writer process. ``http_port`` is the bound port once ``started`` is set."""

    def __init__(self, settings: Settings, *, heartbeat: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.heartbeat = heartbeat
        self.metrics = WriterMetrics()
        self.http = WriterHttp(self.health, self.metrics.render)
        self.started = asyncio.Event()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self.store_ok = True
        self.dead_letter_error: str | None = None  # the last dead-letter publish failure, until one succeeds
        self.lease: WriterLease | None = None
        self.streams: dict[str, StreamState] = {}
        self.nc: NATS | None = None
        self.store: Store | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer-store")

    @property
    def http_port(self) -> int | None:
        return self.http.port

    # ------------------------------------------------------------------ store thread

    async def _in_store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _after_batch(self) -> None:
        yield_fn = getattr(self.store, "yield_to_waiters", None)
        if yield_fn is not None:
            yield_fn()

    def _backoff(self) -> Backoff:
        """The writer's retry delays: 0.25 s doubling to writer.max_backoff_s, without jitter (one writer)."""
        return Backoff(MIN_BACKOFF_S, self.settings.writer.max_backoff_s, jitter=0)

    async def _store_call(self, stop: asyncio.Event, what: str, fn: Callable[..., T], *args: Any,
                          reject_after: int | None = None, **kwargs: Any) -> T | None:
        """Run a store operation, retrying with capped backoff while the store is unavailable.

        Returns None only when ``stop`` was set while waiting (the caller then gives up the batch).
        With ``reject_after``, that many errors other than StoreUnavailable raise BatchRejected.
        """
        retry = self._backoff()
        errors = 0
        while True:
            backoff = retry.next()
            try:
                out = await self._in_store(fn, *args, **kwargs)
            except StoreUnavailable as exc:
                self._store_down("store_unavailable", what, exc, backoff)
            except Exception as exc:  # a failed insert must not kill the writer; retry is safe (tokens)
                errors += 1
                if reject_after is not None and errors >= reject_after:
                    self.metrics.failures.labels("store_rejected").inc()
                    raise BatchRejected(exc) from exc
                self._store_down("store_error", what, exc, backoff)
            else:
                if not self.store_ok:
                    log.info("writer.store_available_again", operation=what)
                self.store_ok = True
                self.metrics.store_up.set(1)
                return out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            if stop.is_set():
                return None

    def _store_down(self, reason: str, what: str, exc: BaseException, backoff: float) -> None:
        self.metrics.failures.labels(reason).inc()
        self.metrics.store_up.set(0)
        if self.store_ok:
            log.warning("writer.store_unavailable", operation=what, reason=reason, error=str(exc)[:300],
                        retry_in_s=backoff)
        else:
            log.debug("writer.store_still_unavailable", operation=what, error=str(exc)[:200], retry_in_s=backoff)
        self.store_ok = False

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.nc = await connect(s.nats.url, name="marketprism-writer", reconnected_cb=self._on_reconnected)
        js = self.nc.jetstream()
        try:
            await ensure_streams(js, s)
            await ensure_dead_letter_stream(js, s)
            self.lease = WriterLease(js, s)
            await self.lease.acquire()  # WriterLocked: another writer runs on these durable consumers
            self.store = store = await self._in_store(open_store, s)
            self.metrics.store_opens.set_function(lambda: float(getattr(store, "opens", 0)))
            hold = getattr(self.store, "hold", None)
            holding = hold() if hold is not None else contextlib.nullcontext()
            with holding:
                if await self._store_call(stop, "init_schema", self._init_store) is None:
                    return
                for name in s.streams:
                    info = await js.stream_info(name)
                    created, last = created_of(info), int(info.state.last_seq or 0)
                    switch = await self._store_call(stop, "stream_epoch", self._check_epoch, name, created, last)
                    if switch is None:
                        return
                    self._epoch_started(name, switch)
                    rp = await self._store_call(stop, "resume_point", resume_point, self.store, s, name)
                    if rp is None:
                        return
                    reader = DurableReader(js, s, name, self.nc)
                    await reader.start()
                    buf = StreamBuffer(name, rp.watermark)
                    self.streams[name] = StreamState(name, reader, buf, rp.intent_last_seq,
                                                     horizon=rp.intent_last_seq or rp.watermark,
                                                     epoch=switch.epoch.number, created=created)
                    self.metrics.committed_seq.labels(name).set(rp.watermark)
                    self.metrics.epoch.labels(name).set(switch.epoch.number)
                    log.info("writer.resume", stream=name, watermark=rp.watermark, in_flight_until=rp.intent_last_seq,
                             epoch=switch.epoch.number)
                await self.http.start(s.writer.health_host, s.writer.health_port)
                self.lease.health_url = f"http://{s.writer.health_host}:{self.http.port}/health"
                log.info("writer.started", health_port=self.http.port, streams=list(self.streams))
                await self._refresh_all()
                self.started.set()
                tasks = [asyncio.create_task(self._stream_loop(st, js, stop), name=f"writer.{st.name}")
                         for st in self.streams.values()]
                for t in tasks:  # one stream that cannot go on stops the others (they finish their batch)
                    t.add_done_callback(lambda t: stop.set() if not t.cancelled() and t.exception() else None)
                results: list[Any] = []
                helpers = [asyncio.create_task(self._monitor(stop), name="writer.monitor"),
                           asyncio.create_task(self._hand_over(stop), name="writer.hand_over"),
                           asyncio.create_task(self.lease.keep(stop), name="writer.lease")]
                try:
                    results = await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    for h in helpers:
                        h.cancel()
                    for h in helpers:
                        with contextlib.suppress(asyncio.CancelledError):
                            await h
                    for t in tasks:
                        t.cancel()
                await self._in_store(self._close_store)
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
                if self.lease.lost is not None:
                    raise WriterFailure(f"the writer stopped: {self.lease.lost} on the durable consumers "
                                        f"{s.writer.durable_prefix}_* (two writers must never share them)")
        finally:
            await self.http.stop()
            if self.lease is not None:
                await self.lease.release()
            for st in self.streams.values():
                await st.reader.stop()
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self._executor.shutdown(wait=True)
            log.info("writer.stopped")

    async def _on_reconnected(self) -> None:
        """A new connection: pull requests held by the old server session are gone, ask again."""
        forgotten = {st.name: st.reader.forget_requests() for st in self.streams.values()}
        log.info("writer.nats_reconnected", open_requests_dropped=forgotten)

    def _check_epoch(self, stream: str, created: str, last_seq: int) -> EpochSwitch:
        assert self.store is not None
        return check_epoch(self.store, self.settings, stream, created, last_seq)

    def _epoch_started(self, stream: str, switch: EpochSwitch) -> None:
        if switch.reset is None:
            return
        self.metrics.stream_resets.labels(stream).inc()
        prev = switch.previous
        log.error("writer.stream_reset", stream=stream, reason=switch.reset, new_epoch=switch.epoch.number,
                  old_watermark=switch.previous_watermark,
                  old_ledger_rows_kept_as=archived_name(stream, prev.number) if prev else None,
                  hint="the stream was deleted and recreated (nats stream rm, or storage: memory and a NATS "
                       "restart); its new messages are committed from sequence 1 in a new ledger epoch. Messages "
                       "the old stream held beyond the old watermark are gone with it; check the "
                       "ledger_gaps and seal results of the hours around the reset")

    async def _new_epoch(self, st: StreamState, js: Any, stop: asyncio.Event) -> bool:
        """The stream on the server is not the ledger's any more: commit what the old one delivered,
        start a new ledger epoch and a new durable on the new stream. False when stopped meanwhile."""
        s = self.settings
        while (taken := st.buffer.take(self._batch_limit(st))) is not None:
            if not await self._commit(st, taken, js, stop):
                return False
        if st.buffer.pending:
            log.error("writer.stream_reset_lost_buffered", stream=st.name, count=len(st.buffer.pending),
                      first=min(st.buffer.pending), reason="not contiguous with the watermark; the old stream is gone")
            self.metrics.failures.labels("lost_in_stream_reset").inc(len(st.buffer.pending))
        await st.reader.stop()
        try:
            try:
                info = await js.stream_info(st.name)
            except NotFoundError:
                await ensure_stream(js, st.name, s.streams[st.name])  # as the writer does at start
                info = await js.stream_info(st.name)
        except Exception as exc:
            log.warning("writer.stream_reset_waiting_for_nats", stream=st.name, error=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MIN_BACKOFF_S * 4)
            return not stop.is_set()
        created, last = created_of(info), int(info.state.last_seq or 0)
        switch = await self._store_call(stop, "stream_epoch", self._check_epoch, st.name, created, last)
        if switch is None:
            return False
        if switch.reset is None and st.epoch == switch.epoch.number:  # the old stream after all
            switch = EpochSwitch(switch.epoch, reset=st.reset, previous=None, previous_watermark=st.buffer.watermark)
        self._epoch_started(st.name, switch)
        rp = await self._store_call(stop, "resume_point", resume_point, self.store, s, st.name)
        if rp is None:
            return False
        reader = DurableReader(js, s, st.name, self.nc)  # type: ignore[arg-type]
        await reader.start()
        st.reader = reader
        st.buffer = StreamBuffer(st.name, rp.watermark)
        st.recovery_end = rp.intent_last_seq
        st.horizon = rp.intent_last_seq or rp.watermark
        st.epoch, st.created, st.reset = switch.epoch.number, created, None
        st.last_seq, st.first_seq, st.acked_seq = last, int(info.state.first_seq or 0), 0
        self.metrics.committed_seq.labels(st.name).set(rp.watermark)
        self.metrics.epoch.labels(st.name).set(st.epoch)
        return True

    def _init_store(self) -> bool:
        assert self.store is not None
        init_schema(self.store, self.settings)
        ensure_writer_tables(self.store, self.settings)
        return True

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ per stream

    def _credit(self, st: StreamState) -> int:
        """Messages the durable may deliver now: max_ack_pending less the unacked deliveries held, byte-bounded."""
        room = self.settings.streams[st.name].max_ack_pending - st.buffer.delivered_count()
        by_bytes = 2 * self._batch_limit(st) - len(st.buffer.pending)
        return max(0, min(room, by_bytes))

    def _batch_limit(self, st: StreamState) -> int:
        w = self.settings.writer
        return max(1, min(w.batch_size, int(w.batch_max_bytes // max(st.avg_msg_bytes, 1.0))))

    async def _absorb(self, st: StreamState) -> int:
        """Move the deliveries received so far into the buffer; ack redeliveries already committed."""
        buf = st.buffer
        deliveries = st.reader.drain()
        if not deliveries:
            return 0
        watermark = buf.watermark
        skipped = 0
        size = 0
        for d in deliveries:
            size += len(d.message.data)
            if d.seq <= watermark:
                skipped += 1
            buf.add(d.seq, d.message, d.reply)
        st.avg_msg_bytes = 0.8 * st.avg_msg_bytes + 0.2 * (size / len(deliveries))
        st.catching_up = False
        if skipped:
            self.metrics.skipped.labels(st.name).inc(skipped)
        if buf.stale_ack is not None:
            # AckPolicy.ALL on a sequence <= watermark only covers committed sequences
            await st.reader.ack(buf.stale_ack)
            buf.stale_ack = None
        return len(deliveries)

    async def _linger(self, st: StreamState, target: int, stop: asyncio.Event) -> None:
        """Wait (``writer.linger_ms``, up to ``linger_max_ms`` for a small range) for a full range. Every commit
        costs several INSERTs with a fixed cost each and creates parts chDB must merge, so at low rates
        committing each trickle of messages costs far more CPU than the rows; a full range is committed at once."""
        buf = st.buffer
        if not buf.pending or buf.ready_count(target) >= target:
            return
        w = self.settings.writer
        started = time.monotonic()
        deadline = started + w.linger_ms / 1000
        # at low rates a range after linger_ms is a handful of rows: keep waiting (up to linger_max_ms) until it
        # holds linger_min_messages, so the fixed per-statement cost is paid once a second, not five times
        low_rate_deadline = started + max(w.linger_ms, w.linger_max_ms) / 1000
        while not stop.is_set() and buf.ready_count(target) < target:
            now = time.monotonic()
            if now >= deadline and buf.ready_count(w.linger_min_messages) >= w.linger_min_messages:
                return
            left = (deadline if now < deadline else low_rate_deadline) - now
            if left <= 0:
                return
            await st.reader.wait(left)
            await st.reader.request(self._credit(st))
            await self._absorb(st)

    async def _stream_loop(self, st: StreamState, js: Any, stop: asyncio.Event) -> None:
        """Commit ranges in order, one at a time; deliveries keep flowing (several pull requests
        outstanding) while a range is inserted, and the next full range is decoded meanwhile."""
        w = self.settings.writer
        buf = st.buffer
        reader = st.reader
        ahead: tuple[Taken, asyncio.Future[PreparedBatch]] | None = None
        while not stop.is_set():
            if st.reset is not None:
                if ahead is not None:
                    ahead[1].cancel()
                    ahead = None
                if not await self._new_epoch(st, js, stop):
                    break
                buf, reader = st.buffer, st.reader
                continue
            await reader.request(self._credit(st))
            await self._absorb(st)
            limit = self._batch_limit(st)
            prepared: asyncio.Future[PreparedBatch] | None = None
            taken: Taken | None
            if ahead is not None and ahead[0].first_seq == buf.expected:
                taken, prepared = ahead
            else:
                await self._linger(st, min(limit, self.settings.streams[st.name].max_ack_pending), stop)
                taken = buf.take(limit)
            ahead = None
            if taken is not None and (held := await first_held_hole(js, st.name, taken)) is not None:
                log.error("writer.range_skips_held_messages", stream=st.name, first=taken.first_seq,
                          last=taken.last_seq, messages=len(taken.messages), held=held,
                          action="not committed; the skipped messages are read again")
                self.metrics.failures.labels("range_skips_held").inc()
                buf.forget_absent()
                if prepared is not None:
                    prepared.cancel()
                continue
            if taken is None:
                timeout = 0.05 if (st.catching_up or buf.pending) else w.fetch_timeout_s
                arrived = await reader.wait(timeout)
                got = await self._absorb(st)
                if buf.ready_count(1) == 0 and ((not arrived and got == 0) or buf.has_hole()):
                    await self._catch_up(st, js, limit)
                continue
            commit = asyncio.create_task(self._commit(st, taken, js, stop, prepared))
            while not commit.done():
                await reader.request(self._credit(st))
                waiter = asyncio.create_task(reader.wait(1.0))
                await asyncio.wait({commit, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                await self._absorb(st)
                start = taken.last_seq + 1
                if ahead is None and not stop.is_set() and buf.ready_count(limit, start) >= limit:
                    nxt = buf.take(limit, start)
                    if nxt is not None:
                        ahead = (nxt, asyncio.ensure_future(asyncio.to_thread(
                            prepare_batch, st.name, nxt.messages, nxt.first_seq, nxt.last_seq, st.epoch)))
            if not await commit:
                break  # stopped while the store was unavailable: the batch stays unacked
        if ahead is not None:
            ahead[1].cancel()

    async def _catch_up(self, st: StreamState, js: Any, limit: int) -> None:
        """The next sequence is not deliverable by the durable right now: read it from the stream."""
        buf = st.buffer
        await self._refresh_stream(st, js)
        if st.reset is not None or st.last_seq < buf.expected:
            return
        if st.first_seq > buf.expected:
            lost = st.first_seq - buf.expected
            log.error("writer.messages_expired_before_commit", stream=st.name, first_missing=buf.expected,
                      count=lost, hint="raise streams.<S>.max_age_s / max_bytes or keep the writer running")
            self.metrics.failures.labels("expired_in_stream").inc(lost)
            buf.mark_absent(buf.expected, st.first_seq - 1)
            return
        msgs, short = await add_read(buf, await read_range(js, st.name, buf.expected, limit), js)
        if short:
            self.metrics.failures.labels("catch_up_short_read").inc()
        if msgs:
            st.catching_up = True
            log.info("writer.catch_up", stream=st.name, first=msgs[0].seq, last=msgs[-1].seq, count=len(msgs))

    async def _commit(self, st: StreamState, taken: Taken, js: Any, stop: asyncio.Event,
                      ahead: asyncio.Future[PreparedBatch] | None = None, *, batch: PreparedBatch | None = None,
                      recover: bool = False) -> bool:
        t0 = time.perf_counter()
        if batch is not None:
            prepared: PreparedBatch = batch
        elif ahead is not None:
            prepared = await ahead
        else:
            prepared = await asyncio.to_thread(prepare_batch, st.name, taken.messages, taken.first_seq, taken.last_seq,
                                               st.epoch)
        if prepared.poison and not await self._dead_letter(st, prepared, js, stop):
            return False
        recovery = recover or (st.recovery_end is not None and taken.first_seq <= st.recovery_end)
        if not await self._lease_valid(stop):
            return False
        # a batch without rows cannot be refused for its content: only the store itself is failing then;
        # a part of a refused range is split again at its first error, a single message gets the full count
        reject_after = (None if not prepared.tables
                        else 1 if recover and len(taken.messages) > 1 else REJECTED_AFTER_ERRORS)
        try:
            result: BatchResult | None = await self._store_call(
                stop, "commit", self._commit_in_store, st, prepared, recovery, reject_after=reject_after)
        except BatchRejected as exc:
            return await self._commit_rejected(st, taken, js, stop, exc.error)
        if result is None:
            return False
        t1 = time.perf_counter()
        self.metrics.visible_delay.observe_batch(
            st.name, [r.timestamp for tb in prepared.tables.values() for r in tb.records], int(time.time() * 1000))
        ack = st.buffer.latest_ack(taken)
        if ack is not None:
            await st.reader.ack(ack)
        st.buffer.committed(taken)
        log.debug("writer.batch", stream=st.name, first=taken.first_seq, last=taken.last_seq,
                  messages=len(taken.messages), prepare_ms=round((t1 - t0 - result.insert_seconds) * 1000, 1),
                  store_ms=round(result.insert_seconds * 1000, 1))
        if recovery:
            if st.recovery_end is not None and taken.last_seq >= st.recovery_end:
                st.recovery_end = None
            self.metrics.recovered.labels(st.name).inc()
            log.info("writer.recovered_in_flight_range", stream=st.name, first=taken.first_seq, last=taken.last_seq,
                     rows=result.rows, already_present=result.skipped_existing)
        self._count(st, result)
        return True

    async def _lease_valid(self, stop: asyncio.Event) -> bool:
        """Commit only while the lease is certainly ours (NATS away for long: wait; taken over: stop)."""
        lease = self.lease
        while lease is not None and not lease.valid():
            if lease.lost is not None or stop.is_set():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        return True

    async def _commit_rejected(self, st: StreamState, taken: Taken, js: Any, stop: asyncio.Event,
                               error: BaseException) -> bool:
        """The store refuses ``taken``: commit its halves on their own (in recovery mode: the refused
        attempts may have inserted some tables), down to single messages, which are dead-lettered."""
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")[:600]
        msgs = taken.messages
        if len(msgs) > 1:
            h = len(msgs) // 2
            left = Taken(taken.first_seq, msgs[h].seq - 1, msgs[:h], None)
            right = Taken(msgs[h].seq, taken.last_seq, msgs[h:], None)
            log.warning("writer.batch_rejected_split", stream=st.name, first=taken.first_seq, last=taken.last_seq,
                        messages=len(msgs), error=reason[:300])
            return (await self._commit(st, left, js, stop, recover=True)
                    and await self._commit(st, right, js, stop, recover=True))
        poison = [Poison(m, "store_rejected", f"the store refused the row: {reason}") for m in msgs]
        log.error("writer.message_rejected_by_store", stream=st.name, seq=taken.first_seq, error=reason[:300],
                  hint="dead-lettered with the store's error; fix the table or the row and republish it")
        dead = PreparedBatch(st.name, taken.first_seq, taken.last_seq, len(msgs), poison=poison, epoch=st.epoch)
        return await self._commit(st, taken, js, stop, batch=dead, recover=True)

    def _commit_in_store(self, st: StreamState, prepared: PreparedBatch, recovery: bool) -> BatchResult:
        """One range into the store; a new intent only when the range passes the declared horizon."""
        assert self.store is not None
        intent = prepared.last_seq > st.horizon
        horizon = prepared.last_seq + self.settings.writer.batch_size
        result = commit_prepared(self.store, self.settings, prepared, recovery=recovery, intent=intent,
                                 horizon=horizon)
        if intent:
            st.horizon = horizon
        self._after_batch()
        return result

    async def _dead_letter(self, st: StreamState, prepared: PreparedBatch, js: Any, stop: asyncio.Event) -> bool:
        """Publish the batch's dead letters; bounded: a dead-letter stream that keeps refusing stops the writer
        (WriterFailure) with the batch unacknowledged, instead of blocking the stream without end."""
        retry = self._backoff()
        attempts = 0
        dl = self.settings.writer.dead_letter_stream
        while not stop.is_set():
            try:
                await publish_dead_letters(js, self.settings, st.name, prepared.poison)
                break
            except Exception as exc:
                attempts += 1
                error = f"{type(exc).__name__}: {exc}"[:300]
                self.dead_letter_error = error
                self.metrics.failures.labels("dead_letter_publish").inc()
                self.metrics.dead_letter_up.set(0)
                if attempts >= DEAD_LETTER_ATTEMPTS:
                    log.error("writer.dead_letter_unavailable", stream=st.name, attempts=attempts, error=error,
                              first_seq=prepared.first_seq, last_seq=prepared.last_seq)
                    raise WriterFailure(
                        f"{len(prepared.poison)} dead letters of {st.name} seq {prepared.first_seq}-"
                        f"{prepared.last_seq} could not be published to the stream {dl} after {attempts} attempts "
                        f"({error}). The range stays unacknowledged in JetStream and the writer stopped. Fix: check "
                        f"the stream {dl} (nats stream info {dl}: it must exist, take 'deadletter.>' and have room; "
                        f"no other stream may take those subjects), then start the writer again (it re-creates {dl})"
                    ) from exc
                backoff = retry.next()
                log.warning("writer.dead_letter_publish_failed", stream=st.name, error=error, retry_in_s=backoff)
                with contextlib.suppress(Exception):  # the stream may have been deleted: create it as at start
                    await ensure_dead_letter_stream(js, self.settings)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
        else:
            return False
        if self.dead_letter_error is not None:
            log.info("writer.dead_letter_available_again", stream=st.name)
        self.dead_letter_error = None
        self.metrics.dead_letter_up.set(1)
        for p in prepared.poison:
            self.metrics.dead_letters.labels(p.kind).inc()
            log.warning("writer.dead_letter", stream=st.name, seq=p.message.seq, subject=p.message.subject,
                        kind=p.kind, reason=p.reason[:300])
        return True

    def _count(self, st: StreamState, result: BatchResult) -> None:
        m = self.metrics
        m.batches.labels(st.name).inc()
        m.messages.labels(st.name).inc(result.messages)
        m.batch_size.labels(st.name).observe(result.messages)
        m.insert_latency.labels(st.name).observe(result.insert_seconds)
        for table, n in result.rows_by_table.items():
            m.rows.labels(table).inc(n)
        m.committed_seq.labels(st.name).set(result.last_seq)
        self.last_batch_at = time.time()

    # ------------------------------------------------------------------ monitoring

    async def _refresh_stream(self, st: StreamState, js: Any) -> None:
        try:
            info = await js.stream_info(st.name)
        except NotFoundError:
            self._reset_seen(st, "the stream no longer exists on the server")
            return
        except Exception as exc:
            log.debug("writer.stream_info_failed", stream=st.name, error=str(exc))
            return
        created = created_of(info)
        if st.created and created != st.created:
            self._reset_seen(st, f"the stream was recreated at {created} (the ledger's was created at {st.created})")
            return
        st.last_seq = int(info.state.last_seq or 0)
        st.first_seq = int(info.state.first_seq or 0)

    def _reset_seen(self, st: StreamState, reason: str) -> None:
        if st.reset is None:
            log.warning("writer.stream_reset_detected", stream=st.name, reason=reason, watermark=st.buffer.watermark)
        st.reset = reason

    async def _refresh_all(self) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        for st in self.streams.values():
            await self._refresh_stream(st, js)
            try:
                ci = await st.reader.info()
                st.acked_seq = int(ci.ack_floor.stream_seq or 0) if ci.ack_floor else 0
            except Exception as exc:
                log.debug("writer.consumer_info_failed", stream=st.name, error=str(exc))
            # acked = what the durable acknowledged, but committed ranges count even before their ack lands
            acked = max(st.acked_seq, min(st.buffer.watermark, st.last_seq))
            self.metrics.lag.labels(st.name).set(max(0, st.last_seq - acked))

    async def _monitor(self, stop: asyncio.Event) -> None:
        period = self.settings.writer.monitor_interval_s
        while not stop.is_set():
            await self._refresh_all()
            if self.heartbeat is not None and self.nc is not None and self.nc.is_connected:
                try:
                    self.heartbeat()
                except Exception as exc:
                    log.warning("writer.heartbeat_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    async def _hand_over(self, stop: asyncio.Event) -> None:
        """Let other processes (queries, the seal) into the embedded store even while no batch flows."""
        if getattr(self.store, "yield_to_waiters", None) is None:
            return
        while not stop.is_set():
            try:
                await self._in_store(self._after_batch)
            except Exception as exc:
                log.debug("writer.hand_over_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HAND_OVER_PERIOD_S)

    def health(self) -> tuple[dict[str, Any], bool]:
        nats_ok = self.nc is not None and self.nc.is_connected
        resetting = any(st.reset is not None for st in self.streams.values())
        ok = (nats_ok and self.store_ok and self.started.is_set() and not resetting
              and self.dead_letter_error is None)
        consumers = {}
        for st in self.streams.values():
            st.last_seq = max(st.last_seq, st.buffer.watermark)  # committed sequences exist
            acked = max(st.acked_seq, min(st.buffer.watermark, st.last_seq))
            consumers[st.name] = {
                "lag": max(0, st.last_seq - acked),
                "acked_seq": acked,
                "committed_seq": st.buffer.watermark,
                "last_seq": st.last_seq,
                "buffered": len(st.buffer.pending),
                "epoch": st.epoch,
                "stream_reset": st.reset,
            }
        body = {
            "status": "healthy" if ok else "unhealthy",
            "timestamp": datetime.now(UTC).isoformat(),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "consumers": consumers,
            "store": "ok" if self.store_ok else "unavailable",
            "nats": "connected" if nats_ok else "disconnected",
            "dead_letters": "ok" if self.dead_letter_error is None else f"failing: {self.dead_letter_error}",
            "last_batch_at": (datetime.fromtimestamp(self.last_batch_at, UTC).isoformat()
                              if self.last_batch_at else None),
        }
        return body, ok


async def run_writer(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    on_started: Callable[[WriterService], None] | None = None,
) -> None:
    """Run the hot writer until ``stop`` is set (or, without ``stop``, until SIGTERM / SIGINT).

    ``heartbeat`` is called every ``writer.monitor_interval_s`` while the NATS connection is up
    (a store outage is backpressure, not death: the writer keeps its messages unacked and
    waits). ``on_started`` receives the service once /health answers (``.http_port``).
    """
    signals = contextlib.ExitStack()
    if stop is None:
        stop = asyncio.Event()
        signals.enter_context(stop_on_signals(stop))
    with signals:
        service = WriterService(settings, heartbeat=heartbeat)
        runner = asyncio.create_task(service.run(stop))
        if on_started is not None:
            started = asyncio.create_task(service.started.wait())
            await asyncio.wait({runner, started}, return_when=asyncio.FIRST_COMPLETED)
            if service.started.is_set():
                on_started(service)
            started.cancel()
        await runner
