"""No repair destroys archived data: nothing older than the hot TTL is sealed, and a non-empty cold
partition is never replaced by fewer rows (or dropped) without an explicit force."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from marketprism_dagster import integrity
from marketprism_dagster.defs.cli import repair_range
from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.nats_server import free_port
from marketprism_dagster.records import encode, msg_id, subject
from marketprism_dagster.replication import ReplicationRefused, replicate_day
from marketprism_dagster.sealing import SealRefused, seal_hour
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.storage.columns import records_to_arrow
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch, ensure_writer_tables

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TODAY = int(time.time()) // 86_400 * DAY_MS
YESTERDAY = TODAY - DAY_MS  # inside the 3-day hot TTL
OLD_DAY = TODAY - 5 * DAY_MS  # beyond it: hot has let these rows go, cold still archives them


def _rows(record_factory, data_type: str, day_ms: int, n: int, start: int = 0, **fields):
    now = int(time.time() * 1000)  # received now: the hot TTL (on received_at) keeps them
    return [
        msgspec.structs.replace(
            record_factory(data_type, start + i, now), timestamp=day_ms + 1000 * (start + i), **fields
        )
        for i in range(n)
    ]


# one configured type keeps the repair to 24 hours
TRADE_ONLY = {
    "markets__binance_spot__enabled": False,
    "markets__binance_derivatives__enabled": False,
    "markets__okx_derivatives__enabled": False,
    "markets__deribit_derivatives__enabled": False,
    "markets__okx_spot__data_types": ["trade"],
}


def _live_writer(settings, record_factory) -> None:
    """Today's traffic: a few trades published to JetStream and committed by the writer's own path,
    so the ledger is contiguous and caught up (what made an old, emptied hour "provable")."""

    async def publish_and_read() -> list[StreamMessage]:
        nc = await connect(settings.nats.url)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        for r in _rows(record_factory, "trade", TODAY, 5):
            await js.publish(subject(r), encode(r), headers={"Nats-Msg-Id": msg_id(r)})
        out = []
        for seq in range(1, 6):
            m = await js.get_msg("MARKET_DATA", seq=seq)
            out.append(StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers))
        await nc.drain()
        return out

    messages = asyncio.run(publish_and_read())
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
        commit_batch(store, settings, "MARKET_DATA", messages)


def _cold_digest(store, settings, data_type: str, day_ms: int) -> tuple[int, int]:
    return integrity.content_digest(store, settings.storage.cold_database, data_type, integrity.day_where(day_ms))


def test_repair_of_a_day_older_than_the_hot_ttl_refuses_every_hour_and_leaves_cold_intact(
    nats_server, settings_factory, record_factory
):
    settings = settings_factory(nats_url=nats_server.url, **TRADE_ONLY)
    _live_writer(settings, record_factory)
    with open_store(settings) as store:
        store.insert(
            settings.storage.cold_database,
            "trade",
            records_to_arrow("trade", _rows(record_factory, "trade", OLD_DAY, 40)),
        )
        before = _cold_digest(store, settings, "trade", OLD_DAY)
    start = datetime.fromtimestamp(OLD_DAY / 1000, UTC)
    end = datetime.fromtimestamp((OLD_DAY + DAY_MS) / 1000, UTC)
    rows = asyncio.run(repair_range(settings, start, end))

    with open_store(settings) as store:  # the archive first: it is what the repair used to destroy
        assert before[0] == 40
        assert _cold_digest(store, settings, "trade", OLD_DAY) == before
    seals = [r for r in rows if r[0] == "seal"]
    assert len(seals) == 24 and {r[1] for r in seals} == {"trade"}
    assert all(r[3].startswith("REFUSED") and "older than the hot TTL" in r[3] for r in seals)
    assert "marketprism repair --from" in seals[0][3]  # the refusal names what to do instead
    assert [r for r in rows if r[0] == "replicate"] == []  # no day is replicated from unsealed hours


def test_seal_of_an_hour_older_than_the_hot_ttl_is_refused_and_not_retryable(
    nats_server, settings_factory, record_factory
):
    settings = settings_factory(nats_url=nats_server.url)
    _live_writer(settings, record_factory)
    hour = OLD_DAY + 10 * HOUR_MS

    async def seal() -> None:
        nc = await connect(settings.nats.url)
        try:
            with open_store(settings) as store:
                await seal_hour(store, settings, "trade", hour, nc.jetstream())
        finally:
            await nc.drain()

    with pytest.raises(SealRefused, match="older than the hot TTL") as refused:
        asyncio.run(seal())
    assert refused.value.retryable is False
    # the edge: an hour is sealable while its first rows have at least an hour left in hot
    now = hour + 3 * DAY_MS - HOUR_MS
    with open_store(settings) as store, pytest.raises(SealRefused) as edge:
        asyncio.run(seal_hour(store, settings, "trade", hour, None, now=now + 1))
    assert "older than the hot TTL" in str(edge.value)
    with open_store(settings) as store:
        assert asyncio.run(seal_hour(store, settings, "trade", hour, None, now=now)).rows == 0


def test_replication_refuses_to_replace_a_non_empty_cold_day_with_fewer_rows_unless_forced(
    store, settings_factory, record_factory
):
    settings = settings_factory()
    hot, cold = settings.storage.hot_database, settings.storage.cold_database
    store.insert(cold, "trade", records_to_arrow("trade", _rows(record_factory, "trade", YESTERDAY, 10)))
    store.insert(hot, "trade", records_to_arrow("trade", _rows(record_factory, "trade", YESTERDAY, 3)))
    archived = _cold_digest(store, settings, "trade", YESTERDAY)

    with pytest.raises(ReplicationRefused) as refused:
        replicate_day(store, settings, "trade", YESTERDAY, sleep=lambda s: pytest.fail("a refusal is never retried"))
    message = str(refused.value)
    assert "cold holds 10 rows but hot has only 3" in message and "would delete 7 archived rows" in message
    assert "marketprism repair --force" in message and "force: true" in message
    assert _cold_digest(store, settings, "trade", YESTERDAY) == archived

    report = replicate_day(store, settings, "trade", YESTERDAY, sleep=lambda s: None, force=True)
    assert report.rows == 3
    assert store.query_value(f"SELECT count() FROM {cold}.trade") == 3
    assert integrity.hot_cold_parity(store, settings, "trade", YESTERDAY).passed


def test_replication_never_drops_a_non_empty_cold_day_when_hot_holds_nothing(store, settings_factory, record_factory):
    settings = settings_factory()
    cold = settings.storage.cold_database
    store.insert(
        cold, "funding_rate", records_to_arrow("funding_rate", _rows(record_factory, "funding_rate", YESTERDAY, 5))
    )
    with pytest.raises(ReplicationRefused, match="cold holds 5 rows but hot has only 0"):
        replicate_day(store, settings, "funding_rate", YESTERDAY, sleep=lambda s: None)
    assert store.query_value(f"SELECT count() FROM {cold}.funding_rate") == 5


def test_replication_of_a_day_older_than_the_hot_ttl_is_refused_even_with_as_many_rows(
    store, settings_factory, record_factory
):
    settings = settings_factory()
    hot, cold = settings.storage.hot_database, settings.storage.cold_database
    store.insert(cold, "trade", records_to_arrow("trade", _rows(record_factory, "trade", OLD_DAY, 5)))
    # hot holds as many rows, but different ones: only the count guard would let them over cold
    store.insert(hot, "trade", records_to_arrow("trade", _rows(record_factory, "trade", OLD_DAY, 5, price="7.25")))
    archived = _cold_digest(store, settings, "trade", OLD_DAY)
    with pytest.raises(ReplicationRefused, match="older than the hot TTL"):
        replicate_day(store, settings, "trade", OLD_DAY, sleep=lambda s: None)
    assert _cold_digest(store, settings, "trade", OLD_DAY) == archived
    forced = replicate_day(store, settings, "trade", OLD_DAY, sleep=lambda s: None, force=True)
    assert forced.rows == 5 and integrity.hot_cold_parity(store, settings, "trade", OLD_DAY).passed


def test_repair_with_nats_unreachable_exits_2_naming_the_cause_without_the_password(tmp_path):
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPRISM", "NATS_URL"))}
    env.update(
        MARKETPRISM_CONFIG=str(REPO / "config" / "marketprism.yaml"),
        MARKETPRISM_NATS_URL=f"nats://ops:s3cr3t-pw@127.0.0.1:{port}",
        MARKETPRISM__DATA_DIR=str(tmp_path / "data"),
    )
    day = datetime.fromtimestamp(YESTERDAY / 1000, UTC).strftime("%Y-%m-%dT%H:%M")
    done = subprocess.run(
        [sys.executable, "-m", "marketprism_dagster.cli", "repair", "--from", day, "--to", day],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"repair could not reach NATS at nats://ops:****@127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "s3cr3t-pw" not in done.stdout + done.stderr
