"""A raw JetStream pull consumer: pull requests on a dedicated inbox, no nats-py ``Msg`` objects.

nats-py's ``fetch`` builds a ``Msg`` (headers parsed into a dict, metadata on demand) per
message and waits for each one through ``asyncio.wait_for``: ~35 us of CPU per message on
this machine. Here the writer publishes pull requests itself to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` (``{"batch": n, "expires": ns, "max_bytes": b}``)
with the reply subject ``<inbox>.<request id>``, keeps several of them outstanding (so the
server streams the next messages while the current batch is inserted) and takes every
delivery on the inbox straight from the protocol parser: the stream sequence is read from
the reply subject ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``,
the payload and raw header bytes are kept as they are (headers are parsed only for the few
messages that are dead-lettered).

Status messages on the inbox end a request: ``408`` (expired), ``409`` (max ack pending
exceeded, consumer deleted, leadership change, server shutdown...), ``404`` (no messages).
``100`` is an idle heartbeat. A server that dies without a word (SIGKILL, a lost host, a cut
connection) sends no status: the requests it held are gone, so a request also ends on the
client's clock (its ``expires`` plus a grace) and every open request ends when the connection
is re-established (``forget_requests``); otherwise the consumer would believe its credit is
still outstanding and never pull again. Acks are ``+ACK`` published to a delivery's reply
subject (AckPolicy.ALL acks every sequence up to it).

Deliveries are taken from the parser through ``nats_raw`` (the inbox's raw handler); if the
connection cannot be hooked, through an ordinary subscription callback (slower, same behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS

from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.nats_raw import remove, status_of, subscribe_raw

log = structlog.get_logger(__name__)

# a request the server ended should have said so (408) by ``expires``; past this grace it is gone
EXPIRY_GRACE_S = 1.0


def reply_sequence(reply: str) -> int:
    """The stream sequence in a JetStream ack subject (v1 and v2 token layouts); -1 if it is not one.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`` (9 tokens);
    v2: ``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>[.<token>]``.
    Runs once per delivery: the subject is split only as far as the sequence.
    """
    if not reply.startswith("$JS.ACK."):
        return -1
    dots = reply.count(".")
    if dots < 8:
        return -1
    try:
        return int(reply.split(".", 6)[5] if dots == 8 else reply.split(".", 8)[7])
    except ValueError:
        return -1


@dataclass(slots=True)
class Delivery:
    """One message delivered by the durable: its stream sequence, the message, and the ack subject."""

    seq: int
    message: StreamMessage
    reply: str


@dataclass(slots=True)
class _Request:
    batch: int
    deadline: float  # loop time after which the server no longer holds the request
    received: int = 0


class RawPullConsumer:
    """Keep up to ``max_requests`` pull requests outstanding for ``credit()`` messages; collect deliveries."""

    def __init__(self, nc: NATS, stream: str, durable: str, *, request_batch: int = 1000,
                 max_requests: int = 4, expires_s: float = 5.0, max_bytes: int = 0) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.request_batch = max(1, request_batch)
        self.max_requests = max(1, max_requests)
        self.expires_ns = int(expires_s * 1e9)
        self.expires_s = expires_s
        self.max_bytes = max_bytes
        self.api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._prefix = self.inbox + "."
        self._ids = itertools.count(1)
        self._requests: dict[str, _Request] = {}
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Event()
        self.status_counts: dict[str, int] = {}
        self.unparsable = 0
        self._sid: int | None = None
        self._sub: Any = None
        self.hooked = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._sub, self._sid = await subscribe_raw(self.nc, self.inbox + ".*", self._on_raw)
        self.hooked = self._sid is not None
        if not self.hooked:
            log.warning("writer.raw_pull_fallback", reason="nats-py parser interface changed; using callbacks")

    async def stop(self) -> None:
        if self._sid is not None:
            remove(self.nc, self._sid)
            self._sid = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._requests.clear()

    # ------------------------------------------------------------------ receiving

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not reply:
            st = status_of(headers)
            if st is not None:
                code = st[0]
                self.status_counts[code] = self.status_counts.get(code, 0) + 1
                if code != "100":  # 408 expired, 409 ended, 404 nothing: the request (named by the subject) is over
                    self._requests.pop(subject.decode()[len(self._prefix):], None)
                    self.arrived.set()
                return
        r = reply.decode()
        seq = reply_sequence(r)
        if seq < 0:
            self.unparsable += 1
            if self.unparsable == 1:
                log.warning("writer.raw_pull_unparsable_reply", stream=self.stream, reply=r[:200])
            return
        # deliveries carry the message's own subject, not the request's: the server serves waiting
        # requests in order, so count each one against the oldest open request (flow control only)
        for rid, req in self._requests.items():
            req.received += 1
            if req.received >= req.batch:
                del self._requests[rid]
            break
        self.deliveries.append(Delivery(seq, StreamMessage(seq, subject.decode(), data, raw_headers=headers), r))
        self.arrived.set()

    def drain(self) -> list[Delivery]:
        out = self.deliveries
        self.deliveries = []
        self.arrived.clear()
        return out

    # ------------------------------------------------------------------ requesting

    @property
    def outstanding(self) -> int:
        """Messages asked for and not yet delivered (open requests only)."""
        return sum(r.batch - r.received for r in self._requests.values())

    def forget_requests(self) -> int:
        """End every open request (the connection was re-established: the server holds none of them)."""
        n = len(self._requests)
        self._requests.clear()
        self.arrived.set()
        return n

    def _expire(self, now: float) -> None:
        """End requests past their expiry whose end the server never announced (it died or the link broke)."""
        stale = [rid for rid, r in self._requests.items() if r.deadline <= now]
        for rid in stale:
            del self._requests[rid]
        if stale:
            self.status_counts["expired_silently"] = self.status_counts.get("expired_silently", 0) + len(stale)

    async def request(self, credit: int) -> int:
        """Issue pull requests until ``credit`` messages are outstanding (at most ``max_requests`` open)."""
        issued = 0
        now = asyncio.get_running_loop().time()
        self._expire(now)
        while len(self._requests) < self.max_requests:
            want = credit - self.outstanding
            if want <= 0:
                break
            n = min(want, self.request_batch)
            rid = str(next(self._ids))
            self._requests[rid] = _Request(n, now + self.expires_s + EXPIRY_GRACE_S)
            body: dict[str, int] = {"batch": n, "expires": self.expires_ns}
            if self.max_bytes:
                body["max_bytes"] = self.max_bytes
            await self.nc.publish(self.api_subject, orjson.dumps(body), reply=self._prefix + rid)
            issued += n
        return issued

    async def ack(self, reply: str) -> None:
        await self.nc.publish(reply, b"+ACK")

