"""Backpressure: the embedded store locked by another process mid-stream; nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from tests.support.writer_helpers import duplicate_count, expected_by_type, generate, publish, table_identities

# The issue asks for 30 s; MARKETPRISM_TEST_OUTAGE_S shortens it for quick local runs.
OUTAGE_S = float(os.environ.get("MARKETPRISM_TEST_OUTAGE_S", "30"))

# Another process that asks for the store the way EmbeddedStore does (a waiter marker, then the
# flock) and then keeps it for the outage: the writer hands the store over and gets StoreUnavailable.
HOLDER = """
import fcntl, os, pathlib, sys, time, uuid
path = pathlib.Path(sys.argv[1]); seconds = float(sys.argv[2])
waiters = path.with_name(path.name + ".waiters"); waiters.mkdir(parents=True, exist_ok=True)
marker = waiters / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"; marker.touch()
fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
marker.unlink()
print("locked", flush=True)
time.sleep(seconds)
"""


async def test_store_locked_by_another_process_for_the_outage_then_every_record_arrives_once(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings(storage__lock_timeout_s=1.0, writer__max_backoff_s=2.0)
    recs = generate(12_000, seed=3)
    first, during, after = recs[:4000], recs[4000:9000], recs[9000:]
    w = await start_writer(settings)
    await publish(nc, first)
    await w.wait_committed(nc)

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(settings.embedded_store_path), str(OUTAGE_S)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        assert line.strip() == b"locked"
        locked_at = time.monotonic()
        await publish(nc, during)
        # the writer notices: /health turns 503 with store unavailable, messages wait unacked in JetStream
        seen_down = None
        while time.monotonic() - locked_at < OUTAGE_S - 1:
            status, health = await w.health()
            if status == 503 and health["store"] == "unavailable":
                seen_down = health
                break
            await asyncio.sleep(0.2)
        assert seen_down is not None, "writer never reported the store unavailable"
        assert seen_down["consumers"]["MARKET_DATA"]["lag"] > 0
        committed_during = w.service.streams["MARKET_DATA"].buffer.watermark
        await publish(nc, after)
        await asyncio.to_thread(holder.wait, OUTAGE_S + 30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    await w.wait_committed(nc, timeout=60)
    status, health = await w.health()
    metrics = await w.metrics()
    await w.close()

    assert status == 200 and health["store"] == "ok"
    assert committed_during < len(first) + len(during)  # it really stopped while the store was away
    failures = [ln for ln in metrics.splitlines()
                if ln.startswith('marketprism_writer_failures_total{reason="store_unavailable"}')]
    assert failures and float(failures[0].split()[-1]) >= 2
    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert len(got) == len(expected[t]) and set(got) == expected[t], t
            assert duplicate_count(store, "marketprism_hot", t) == 0
    finally:
        store.close()


def test_holder_script_is_the_embedded_store_protocol(tmp_path: Path) -> None:
    """The outage helper really blocks EmbeddedStore (so the outage test measures a real outage)."""
    from marketprism_dagster.storage import StoreUnavailable

    path = tmp_path / "ch"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "5"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        store = EmbeddedStore(path, lock_timeout_s=0.3)
        try:
            store.query_value("SELECT 1")
        except StoreUnavailable as exc:
            assert "locked by another process" in str(exc)
        else:
            raise AssertionError("the store opened while another process held its lock")
    finally:
        holder.kill()
        holder.wait()
