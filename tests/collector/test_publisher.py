"""JetStreamPublisher against a real nats-server: acks, dedup, bounded buffer, NATS restart, errors."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.publisher import JetStreamPublisher
from tests.support.collector_helpers import connect_nats, fixture_trades, stream_messages
from tests.support.records import make_record


def submit_all(pub: JetStreamPublisher, recs: list) -> int:
    return sum(pub.submit(records.subject(r), records.encode(r), records.msg_id(r)) for r in recs)


async def test_every_record_is_stored_once_with_its_msg_id(js_nc: NATS, fixtures_dir: Path) -> None:
    recs = fixture_trades(fixtures_dir, 3000)
    pub = await JetStreamPublisher(js_nc, max_inflight=256).start()
    assert submit_all(pub, recs) == 3000
    assert await pub.flush(20)
    await pub.close()
    assert (pub.stats.acked, pub.stats.duplicates, pub.stats.dropped, pub.stats.failed) == (3000, 0, 0, 0)
    assert sum(pub.stats.latency_buckets) == 3000
    msgs = await stream_messages(js_nc, "MARKET_DATA")
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [records.msg_id(r) for r in recs]
    assert [records.decode(m.data) for m in msgs] == recs
    assert msgs[0].subject == "trade.binance_spot.spot.BTC-USDT"


async def test_republished_identity_is_counted_as_duplicate_not_stored(js_nc: NATS, fixtures_dir: Path) -> None:
    recs = fixture_trades(fixtures_dir, 50)
    pub = await JetStreamPublisher(js_nc).start()
    submit_all(pub, recs)
    assert await pub.flush(10)
    submit_all(pub, recs[:20])  # a reconnect or repeated poll re-publishes the same data points
    assert await pub.flush(10)
    await pub.close()
    assert (pub.stats.acked, pub.stats.duplicates) == (50, 20)
    info = await js_nc.jetstream().stream_info("MARKET_DATA")
    assert info.state.messages == 50


async def test_full_buffer_rejects_and_counts_without_waiting(nats_server: EmbeddedNats, fixtures_dir: Path) -> None:
    nc = await connect_nats(nats_server.url)
    await ensure_streams(nc.jetstream(), Settings())
    nats_server.stop()  # NATS down: nothing drains
    await asyncio.wait_for(_until(lambda: not nc.is_connected), 10)
    pub = await JetStreamPublisher(nc, buffer_size=100).start()
    recs = fixture_trades(fixtures_dir, 130)
    accepted = submit_all(pub, recs)
    assert accepted == 100
    assert pub.stats.dropped == 30
    assert pub.buffered == 100
    await pub.close(flush_timeout=0.1)
    with contextlib.suppress(OSError):  # nats-py raises closing a connection that is reconnecting
        await nc.close()


async def test_records_buffered_while_nats_restarts_are_all_delivered(
    nats_server: EmbeddedNats, fixtures_dir: Path
) -> None:
    nc = await connect_nats(nats_server.url, reconnected_cb=None)
    await ensure_streams(nc.jetstream(), Settings())
    pub = await JetStreamPublisher(nc, ack_timeout_s=1.0).start()
    recs = fixture_trades(fixtures_dir, 600)
    submit_all(pub, recs[:200])
    assert await pub.flush(10)
    nats_server.stop()
    await asyncio.wait_for(_until(lambda: not nc.is_connected), 10)
    submit_all(pub, recs[200:])  # buffered: the caller never waits
    assert pub.stats.dropped == 0
    nats_server.start()
    assert await pub.flush(30)
    await pub.close()
    msgs = await stream_messages(nc, "MARKET_DATA")
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert sorted(ids) == sorted(records.msg_id(r) for r in recs)
    assert pub.stats.acked == 600
    await nc.close()


async def test_subject_without_stream_is_retried_for_the_bound_then_given_up_and_counted(
    js_nc: NATS, fixtures_dir: Path
) -> None:
    failed: list[tuple[str, str]] = []
    pub = JetStreamPublisher(
        js_nc, retry_for_s=0.3, retry_backoff_max_s=0.02, on_failed=lambda s, c: failed.append((s, c))
    )
    await pub.start()
    rec = fixture_trades(fixtures_dir, 1)[0]
    pub.submit("nostream.binance_spot.spot.BTC-USDT", records.encode(rec), records.msg_id(rec))
    assert await pub.flush(10)
    await pub.close()
    errors = pub.stats.errors["no_responders"]
    assert errors >= 3 and pub.stats.retries == errors - 1
    assert pub.stats.failed == 1
    assert failed == [("nostream.binance_spot.spot.BTC-USDT", "no_responders")]


async def test_records_outlive_a_stream_without_leader_for_longer_than_ten_error_replies(
    js_nc: NATS, fixtures_dir: Path
) -> None:
    """A clustered stream electing a leader answers with errors for seconds: the records wait, none is dropped."""
    js = js_nc.jetstream()
    await js.delete_stream("MARKET_DATA")  # no stream answers trade.* until it is back
    pub = await JetStreamPublisher(js_nc, retry_backoff_max_s=0.05).start()
    assert pub.retry_for_s == Settings().collector.publish_retry_s == 120.0
    recs = fixture_trades(fixtures_dir, 20)
    assert submit_all(pub, recs) == 20
    await asyncio.wait_for(_until(lambda: pub.stats.errors.get("no_responders", 0) >= 20 * 12), 20)
    await ensure_streams(js, Settings())  # the stream is answering again
    assert await pub.flush(20)
    await pub.close()
    assert (pub.stats.acked, pub.stats.failed) == (20, 0)
    msgs = await stream_messages(js_nc, "MARKET_DATA")  # retried one by one: stored in any order, each once
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(records.msg_id(r) for r in recs)


async def test_take_pending_returns_every_unacknowledged_message_and_restore_publishes_them(
    nats_server: EmbeddedNats, fixtures_dir: Path
) -> None:
    nc = await connect_nats(nats_server.url)
    await ensure_streams(nc.jetstream(), Settings())
    nats_server.stop()
    await asyncio.wait_for(_until(lambda: not nc.is_connected), 10)
    pub = await JetStreamPublisher(nc).start()
    recs = fixture_trades(fixtures_dir, 50)
    submit_all(pub, recs)
    await pub.close(flush_timeout=0.1)
    left = pub.take_pending()
    assert [msg_id for _, _, msg_id in left] == [records.msg_id(r) for r in recs]
    assert pub.pending == 0
    nats_server.start()
    await asyncio.wait_for(_until(lambda: nc.is_connected), 20)
    again = JetStreamPublisher(nc, buffer_size=10)  # restore is not bound by the buffer: they fit once before
    again.restore(left)
    await again.start()
    assert await again.flush(20)
    await again.close()
    assert (again.stats.restored, again.stats.acked, again.stats.submitted) == (50, 50, 0)
    msgs = await stream_messages(nc, "MARKET_DATA")
    assert [records.decode(m.data) for m in msgs] == recs
    await nc.close()


async def _until(cond, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    while not cond():
        await asyncio.sleep(interval)


async def test_acks_are_taken_from_the_parser_and_every_reply_kind_is_read(js_nc: NATS) -> None:
    """PubAcks reach the publisher through its raw handler (no nats-py Msg); ordinary acks skip JSON parsing,
    every other reply is parsed and counted as before: duplicate, error code, unreadable, status-only 503."""
    pub = await JetStreamPublisher(js_nc).start()
    try:
        assert pub._ack_sid is not None and "_process_msg" in vars(js_nc)
        for n in range(5):
            pub.submit("trade.x.spot.A", b"{}", f"id{n}")
        tokens = []
        for _ in range(5):  # as the pump does: in flight under a token of the ack inbox
            item = pub._buffer.popleft()
            token = pub._prefix + f"t{len(tokens)}"
            pub._inflight[token] = item
            tokens.append(token.encode())
        pub._on_ack(tokens[0], b"", b'{"stream":"MARKET_DATA","seq":7}', None)
        pub._on_ack(tokens[1], b"", b'{"stream":"MARKET_DATA","seq":7,"duplicate":true}', None)
        pub._on_ack(tokens[2], b"", b'{"error":{"code":503,"err_code":10077,"description":"x"}}', None)
        pub._on_ack(tokens[3], b"", b"{not json", None)
        pub._on_ack(tokens[4], b"", b"", b"NATS/1.0 503\r\n\r\n")
        pub._on_ack(tokens[0], b"", b'{"stream":"MARKET_DATA","seq":7}', None)  # a late copy: ignored
        s = pub.stats
        assert (s.acked, s.duplicates, s.retries) == (1, 1, 3)
        assert s.errors == {"10077": 1, "bad_ack": 1, "no_responders": 1}
        assert sum(s.latency_buckets) == 2
        assert len(pub._retry) == 3 and not pub._inflight
    finally:
        pub._retry.clear()
        await pub.close(flush_timeout=0)
    assert "_process_msg" not in vars(js_nc)  # the last raw handler gone: nats-py's own method again


async def test_a_msg_id_outside_ascii_is_framed_by_its_byte_length(js_nc: NATS) -> None:
    """HPUB sizes count bytes: a header with a non-ASCII Msg-Id must still frame the message exactly."""
    pub = await JetStreamPublisher(js_nc).start()
    ids = ["trade:x|BTC-USDT|1", "trade:x|\u00dcSDT-\u20ac|2", "trade:x|BTC-USDT|3"]
    for n, msg_id in enumerate(ids):
        assert pub.submit("trade.x.spot.A", b'{"n":%d}' % n, msg_id)
    assert await pub.flush(10)
    await pub.close()
    assert (pub.stats.acked, pub.stats.errors) == (3, {})
    msgs = await stream_messages(js_nc, "MARKET_DATA")
    assert [(m.headers["Nats-Msg-Id"], m.data) for m in msgs] == [(i, b'{"n":%d}' % n) for n, i in enumerate(ids)]


async def test_reading_one_subject_of_a_shared_stream_waits_for_that_subject_s_messages_only(js_nc: NATS) -> None:
    """The suite's stream reader: a ``source_gap`` beside the trades in MARKET_DATA must not make a read of
    ``trade.>`` wait for a message it will never get (a CI run timed out on it after a restart gap)."""
    now_ms = 1_780_000_000_000
    recs = [make_record("trade", i, now_ms) for i in range(3)] + [make_record("source_gap", 1, now_ms)]
    pub = await JetStreamPublisher(js_nc).start()
    assert submit_all(pub, recs) == 4
    assert await pub.flush(10)
    await pub.close()
    trades = await asyncio.wait_for(stream_messages(js_nc, "MARKET_DATA", "trade.>"), 4)
    assert [records.decode(m.data) for m in trades] == recs[:3]
    gaps = await stream_messages(js_nc, "MARKET_DATA", "source_gap.>")
    assert [records.decode(m.data) for m in gaps] == recs[3:]
