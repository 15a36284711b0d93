"""The raw pull consumer against a real nats-server: sequences, payloads, headers, redelivery, expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.messages import parse_headers
from marketprism_dagster.nats_raw import status_of
from marketprism_dagster.writer.consumer import durable_name, ensure_durable
from marketprism_dagster.writer.pull import Delivery, RawPullConsumer, reply_sequence
from tests.support.writer_helpers import generate, publish


async def _collect(c: RawPullConsumer, n: int, timeout: float = 20) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < n:
        await c.request(n - len(got))
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"only {len(got)} of {n} deliveries"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.arrived.wait(), min(left, 1.0))
        got.extend(c.drain())
    return got


def test_reply_sequence_reads_both_ack_subject_layouts() -> None:
    assert reply_sequence("$JS.ACK.MARKET_DATA.w.1.4711.12.1700000000000000000.3") == 4711
    assert reply_sequence("$JS.ACK.hub.ACCHASH.MARKET_DATA.w.2.99.7.1700000000000000000.0.tok") == 99
    assert reply_sequence("_INBOX.abc.1") == -1
    assert reply_sequence("$JS.ACK.S.c.1.notanumber.2.3.4") == -1
    assert reply_sequence("$JS.ACK.hub.ACCHASH.MARKET_DATA.w.2.98.7.1700000000000000000.0") == 98  # v2, no token
    assert reply_sequence("$JS.ACK.S.c.1.5.2.3") == -1  # 8 tokens
    assert reply_sequence("$JS.ACKS.S.c.1.5.2.3.4") == -1
    assert status_of(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n") == ("408", "Request Timeout")
    assert status_of(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n") is None
    assert parse_headers(b"NATS/1.0\r\nNats-Msg-Id: trade:a|b|1\r\n\r\n") == {"Nats-Msg-Id": "trade:a|b|1"}
    assert parse_headers(None) is None


async def test_raw_pull_delivers_every_message_with_its_sequence_then_redelivers_unacked(
    writer_settings: Callable[..., Settings], nc: NATS
) -> None:
    settings = writer_settings(nats__ack_wait_s=1)
    recs = [r for r in generate(300, seed=11) if records.RECORD_TYPES[records.data_type_of(r)].stream == "MARKET_DATA"]
    await publish(nc, recs)
    js = nc.jetstream()
    await ensure_durable(js, settings, "MARKET_DATA")
    name = durable_name(settings, "MARKET_DATA")
    c = RawPullConsumer(nc, "MARKET_DATA", name, request_batch=50, max_requests=3, expires_s=2.0)
    await c.start()
    try:
        assert c.hooked
        first = await _collect(c, len(recs))
        assert [d.seq for d in first] == list(range(1, len(recs) + 1))
        for d, r in zip(first, recs, strict=True):
            assert d.message.seq == d.seq
            assert d.message.subject == records.subject(r)
            assert d.message.data == records.encode(r)
            assert d.message.header_map() == {"Nats-Msg-Id": records.msg_id(r)}
            assert d.reply.split(".")[4] == "1"  # first delivery
        # nothing acked: after ack_wait (1 s) the durable delivers the same sequences again
        again = await _collect(c, len(recs), timeout=30)
        assert sorted(d.seq for d in again) == list(range(1, len(recs) + 1))
        assert all(int(d.reply.split(".")[4]) >= 2 for d in again)
        # AckPolicy.ALL: one ack on the highest sequence acknowledges everything
        await c.ack(max(again, key=lambda d: d.seq).reply)
        await nc.flush()
        for _ in range(50):
            info = await js.consumer_info("MARKET_DATA", name)
            if info.ack_floor.stream_seq == len(recs):
                break
            await asyncio.sleep(0.1)
        assert info.ack_floor.stream_seq == len(recs)
        assert info.num_ack_pending == 0
    finally:
        await c.stop()


async def test_two_raw_consumers_share_one_connection_and_requests_expire(
    writer_settings: Callable[..., Settings], nc: NATS
) -> None:
    settings = writer_settings()
    js = nc.jetstream()
    for stream in ("MARKET_DATA", "ORDERBOOK_SNAP"):
        await ensure_durable(js, settings, stream)
    md = RawPullConsumer(nc, "MARKET_DATA", durable_name(settings, "MARKET_DATA"), request_batch=100, expires_s=0.3)
    ob = RawPullConsumer(nc, "ORDERBOOK_SNAP", durable_name(settings, "ORDERBOOK_SNAP"), request_batch=100,
                         expires_s=0.3)
    await md.start()
    await ob.start()
    try:
        assert md.hooked and ob.hooked
        # empty streams: each request ends with a 408 and is forgotten
        assert await md.request(100) == 100 and md.outstanding == 100
        for _ in range(50):
            if md.outstanding == 0:
                break
            await asyncio.sleep(0.1)
        assert md.outstanding == 0 and md.status_counts.get("408") == 1
        recs = generate(200, seed=12)
        await publish(nc, recs)
        want = {s: [r for r in recs if records.RECORD_TYPES[records.data_type_of(r)].stream == s]
                for s in ("MARKET_DATA", "ORDERBOOK_SNAP")}
        got_ob = await _collect(ob, len(want["ORDERBOOK_SNAP"]))
        got_md = await _collect(md, len(want["MARKET_DATA"]))
        assert [d.message.data for d in got_ob] == [records.encode(r) for r in want["ORDERBOOK_SNAP"]]
        assert [d.message.data for d in got_md] == [records.encode(r) for r in want["MARKET_DATA"]]
    finally:
        await md.stop()
        await ob.stop()
    # both gone: the client's own message path is back and still works
    assert "_process_msg" not in vars(nc)
    sub = await nc.subscribe("plain.check")
    await nc.publish("plain.check", b"ok")
    assert (await sub.next_msg(timeout=5)).data == b"ok"
    await sub.unsubscribe()
