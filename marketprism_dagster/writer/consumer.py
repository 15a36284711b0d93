"""JetStream side of the writer: the durable pull consumer, a catch-up reader and the in-order buffer.

The durable consumer (``{writer.durable_prefix}_{stream}``, deliver all, AckPolicy.ALL) is
created once and never reset. Its delivery state is not trusted for *position*: the ledger
is (see ``ingest``). The buffer keeps delivered messages by stream sequence and hands out
contiguous ranges starting right after the watermark. When the next sequence is not in the
buffer although the stream holds it (after a crash the previous process's deliveries stay
pending until ack_wait, and max_ack_pending can stall the durable), a short-lived ephemeral
consumer (deliver by start sequence, no acks) reads it straight from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from marketprism_dagster.config import Settings
from marketprism_dagster.writer.ingest import StreamMessage
from marketprism_dagster.writer.pull import Delivery, RawPullConsumer, reply_sequence

log = structlog.get_logger(__name__)


class ConsumerConflict(Exception):
    """The durable exists with a configuration the writer cannot use; it is never reset silently."""


def durable_name(settings: Settings, stream: str) -> str:
    return f"{settings.writer.durable_prefix}_{stream}"


def durable_config(settings: Settings, stream: str) -> js_api.ConsumerConfig:
    name = durable_name(settings, stream)
    return js_api.ConsumerConfig(
        name=name,
        durable_name=name,
        description="MarketPrism hot writer (ledger-ordered, ack-all after commit)",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.ALL,
        ack_wait=float(settings.nats.ack_wait_s),
        max_ack_pending=settings.streams[stream].max_ack_pending,
        max_deliver=-1,
        replay_policy=js_api.ReplayPolicy.INSTANT,
    )


# Fields that define what the consumer delivers and how acks work: a difference means the
# durable belongs to something else (or an older writer), and changing it would reset it.
_FIXED = ("deliver_policy", "ack_policy", "filter_subject", "filter_subjects", "opt_start_seq", "opt_start_time",
          "deliver_subject")
# Fields JetStream lets us update in place without touching the delivery state.
_TUNABLE = ("ack_wait", "max_ack_pending")


async def ensure_durable(js: JetStreamContext, settings: Settings, stream: str) -> str:
    """Create the durable if missing; update tunables; refuse (ConsumerConflict) on anything else."""
    wanted = durable_config(settings, stream)
    name = wanted.durable_name or ""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        await js.add_consumer(stream, wanted)
        log.info("writer.consumer_created", stream=stream, consumer=name)
        return "created"
    cur = info.config
    bad = []
    for f in _FIXED:
        a, b = getattr(cur, f, None), getattr(wanted, f, None)
        if (a or None) != (b or None):
            bad.append(f"{f}={a!r} (want {b!r})")
    if bad:
        raise ConsumerConflict(
            f"durable consumer {name} on stream {stream} exists with {', '.join(bad)}. The writer never resets or "
            f"recreates it (that would lose or replay data). If it is a leftover, back it up and delete it "
            f"(nats consumer rm {stream} {name}); or set writer.durable_prefix to use another name."
        )
    changed = [f for f in _TUNABLE if round(float(getattr(cur, f) or 0), 3) != round(float(getattr(wanted, f) or 0), 3)]
    if changed:
        cfg = cur
        for f in changed:
            setattr(cfg, f, getattr(wanted, f))
        await js.add_consumer(stream, cfg)  # JetStream treats a create with the same name as an update
        log.info("writer.consumer_updated", stream=stream, consumer=name, fields=changed)
        return "updated"
    return "verified"


def _to_stream_message(m: Msg, seq: int) -> StreamMessage:
    return StreamMessage(seq=seq, subject=m.subject, data=m.data, headers=dict(m.headers) if m.headers else None)


@dataclass(slots=True)
class Pending:
    message: StreamMessage
    delivery: str | None  # the durable delivery's ack subject, None when read by the catch-up reader


@dataclass
class Taken:
    """A contiguous range ready to commit."""

    first_seq: int
    last_seq: int
    messages: list[StreamMessage]
    ack: str | None  # ack subject of the durable delivery with the highest sequence in the range


@dataclass
class StreamBuffer:
    """Delivered messages by sequence, handed out as contiguous ranges after the watermark."""

    stream: str
    watermark: int
    pending: dict[int, Pending] = field(default_factory=dict)
    absent: list[tuple[int, int]] = field(default_factory=list)  # ranges the stream no longer holds
    stale_ack: str | None = None  # highest delivery at or below the watermark, still to ack
    delivered: int = 0  # pending entries that hold a durable delivery (unacked on the server)
    # every sequence in watermark+1 .. run_end is in ``pending`` (entries are removed only by ``committed``, which
    # moves the watermark past them): ``_ready`` walks only beyond it, instead of from the watermark every call
    run_end: int = -1

    def add(self, seq: int, message: StreamMessage, delivery: str | None) -> None:
        if seq <= self.watermark:
            if delivery is not None and (self.stale_ack is None or reply_sequence(self.stale_ack) < seq):
                self.stale_ack = delivery
            return
        cur = self.pending.get(seq)
        if cur is None:
            self.pending[seq] = Pending(message, delivery)
            if delivery is not None:
                self.delivered += 1
        elif delivery is not None:
            if cur.delivery is None:
                self.delivered += 1
            self.pending[seq] = Pending(message, delivery)

    def mark_absent(self, lo: int, hi: int) -> None:
        if hi >= lo:
            self.absent.append((lo, hi))

    def forget_absent(self) -> None:
        """Drop every absent stretch (one turned out to be held: what it covers is read again)."""
        self.absent = []

    @property
    def expected(self) -> int:
        return self.watermark + 1

    def _absent_until(self, seq: int) -> int | None:
        for lo, hi in self.absent:
            if lo <= seq <= hi:
                return hi
        return None

    def has_hole(self) -> bool:
        """Messages are waiting but the next sequence is not among them."""
        return bool(self.pending) and self.expected not in self.pending and self._absent_until(self.expected) is None

    def _ready(self, limit: int, start: int | None = None) -> tuple[int, int | None]:
        """(messages ready, last sequence ready) from ``start`` (default ``expected``), at most ``limit`` messages."""
        seq = self.expected if start is None else start
        if not self.absent and seq >= self.expected:
            return self._ready_run(limit, seq)
        n = 0
        last: int | None = None
        pending = self.pending
        while n < limit:
            if seq in pending:
                n += 1
                last = seq
                seq += 1
                continue
            hi = self._absent_until(seq)
            if hi is None:
                break
            last = hi
            seq = last + 1
        return n, last

    def _ready_run(self, limit: int, seq: int) -> tuple[int, int | None]:
        """``_ready`` without absent ranges: the run of pending sequences from ``seq``, extended from ``run_end``."""
        pending = self.pending
        end = max(self.run_end, self.watermark)
        if seq > end + 1:  # beyond the known run: walk from ``seq`` itself (a range prepared ahead)
            end = seq - 1
            while end - seq + 1 < limit and end + 1 in pending:
                end += 1
        else:
            while end - seq + 1 < limit and end + 1 in pending:
                end += 1
            self.run_end = end
        n = min(limit, end - seq + 1)
        return (n, seq + n - 1) if n > 0 else (0, None)

    def ready_count(self, limit: int, start: int | None = None) -> int:
        return self._ready(limit, start)[0]

    def take(self, limit: int, start: int | None = None) -> Taken | None:
        """The next contiguous range from ``expected`` (or from ``start``, to prepare a range ahead of a commit)."""
        n, last = self._ready(limit, start)
        if last is None:
            return None
        first = self.expected if start is None else start
        msgs: list[StreamMessage] = []
        ack: str | None = None
        pending = self.pending
        for seq in range(first, last + 1) if n else ():
            p = pending.get(seq)
            if p is None:
                continue
            msgs.append(p.message)
            if p.delivery is not None:
                ack = p.delivery
        return Taken(first, last, msgs, ack)

    def latest_ack(self, taken: Taken) -> str | None:
        """The newest delivery among the range's last messages (a redelivery may have replaced the one taken)."""
        for m in reversed(taken.messages):
            p = self.pending.get(m.seq)
            if p is not None and p.delivery is not None:
                return p.delivery
        return taken.ack

    def committed(self, taken: Taken) -> None:
        if taken.first_seq != self.expected:
            raise ValueError(f"{self.stream}: committed {taken.first_seq}..{taken.last_seq}, expected {self.expected}")
        for m in taken.messages:
            p = self.pending.pop(m.seq, None)
            if p is not None and p.delivery is not None:
                self.delivered -= 1
        self.watermark = taken.last_seq
        self.absent = [(lo, hi) for lo, hi in self.absent if hi > self.watermark]
        if self.run_end < self.watermark:
            self.run_end = self.watermark

    def delivered_count(self) -> int:
        return self.delivered


def delivery_seq(m: Msg) -> int:
    """The stream sequence of a nats-py delivery, from its reply subject (cheap: no metadata object)."""
    seq = reply_sequence(m.reply or "")
    return seq if seq >= 0 else m.metadata.sequence.stream


class DurableReader:
    """The durable consumer, read through ``RawPullConsumer``; acks with AckPolicy.ALL."""

    def __init__(self, js: JetStreamContext, settings: Settings, stream: str, nc: NATS) -> None:
        self.js = js
        self.settings = settings
        self.stream = stream
        self.name = durable_name(settings, stream)
        w = settings.writer
        cap = max(1, min(w.batch_size, settings.streams[stream].max_ack_pending))
        # several requests outstanding, each a fraction of the window, so delivery never waits for a round trip
        self.raw = RawPullConsumer(nc, stream, self.name, request_batch=max(1, cap // 2), max_requests=4,
                                   expires_s=max(1.0, 5 * w.fetch_timeout_s))

    async def start(self) -> None:
        await ensure_durable(self.js, self.settings, self.stream)
        await self.raw.start()

    async def request(self, credit: int) -> int:
        return await self.raw.request(credit)

    def drain(self) -> list[Delivery]:
        return self.raw.drain()

    async def wait(self, timeout: float) -> bool:
        """Until a delivery (or a request's end) arrives; False on timeout."""
        if self.raw.deliveries:
            return True
        try:
            await asyncio.wait_for(self.raw.arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def ack(self, reply: str) -> None:
        await self.raw.ack(reply)

    def forget_requests(self) -> int:
        """The connection came back: the server holds none of our pull requests any more."""
        return self.raw.forget_requests()

    async def info(self) -> js_api.ConsumerInfo:
        info: js_api.ConsumerInfo = await self.js.consumer_info(self.stream, self.name)
        return info

    async def stop(self) -> None:
        await self.raw.stop()


async def read_range(js: JetStreamContext, stream: str, start_seq: int, max_msgs: int, timeout: float = 2.0
                     ) -> list[StreamMessage]:
    """Up to ``max_msgs`` messages of ``stream`` from ``start_seq`` on, in order, without acks.

    A short-lived ephemeral consumer (memory, deleted after use); used to fill the writer's
    buffer after a crash and by the repair path to re-read a range. Its name is unique to the call: a
    consumer of an earlier read that was not deleted (a fetch that timed out, a process killed mid-read)
    has moved past ``start_seq``, and adding a consumer of the same name and config returns that one.
    """
    name = f"mp_catchup_{stream.lower()}_{start_seq}_{uuid.uuid4().hex[:12]}"
    cfg = js_api.ConsumerConfig(
        name=name,
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=js_api.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    await js.add_consumer(stream, cfg)
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    out: list[StreamMessage] = []
    try:
        while len(out) < max_msgs:
            try:
                got = await sub.fetch(min(max_msgs - len(out), 10_000), timeout=timeout)
            except TimeoutError:
                break
            if not got:
                break
            out.extend(_to_stream_message(m, delivery_seq(m)) for m in got)
            info_pending = got[-1].reply.split(".")[-1] if got[-1].reply else "0"
            if info_pending == "0":
                break  # nothing more in the stream right now
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return out


