"""Exactly once under kill -9: the writer as a subprocess, killed at random moments while ingesting."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.queries import resume_point
from marketprism_dagster.nats_server import free_port
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.consumer import read_range
from marketprism_dagster.writer.ingest import ensure_writer_tables, prepare_batch, write_intent
from tests.support.writer_helpers import (
    REPO,
    duplicate_count,
    expected_by_type,
    generate,
    get_health,
    publish,
    table_identities,
    writer_cmd,
)


async def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while get_health(port) is None:
        assert proc.poll() is None, f"writer exited with {proc.returncode} before listening"
        assert time.monotonic() < deadline, "writer did not listen in time"
        await asyncio.sleep(0.05)


async def test_kill_9_at_random_moments_leaves_every_record_exactly_once(
    nc: NATS, writer_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = writer_settings()
    recs = generate(24_000, seed=11)
    rng = random.Random(2024)
    extra = {"writer.batch_size": 400, "nats.ack_wait_s": 5}
    log_path = tmp_path / "writer.log"
    publisher = asyncio.create_task(publish(nc, recs, rate=2500))
    kills = 0
    committed_at_kill: list[int] = []
    with open(log_path, "ab") as log_file:
        while kills < 6:
            port = free_port()
            proc = subprocess.Popen(writer_cmd(settings, port, extra), stdout=log_file, stderr=subprocess.STDOUT,
                                    cwd=REPO)
            try:
                await wait_listening(proc, port)
                await asyncio.sleep(rng.uniform(0.3, 1.6))
                h = get_health(port) or {}
                committed_at_kill.append(sum(c["committed_seq"] for c in h.get("consumers", {}).values()))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            kills += 1
        await asyncio.wait_for(publisher, 60)
        port = free_port()
        proc = subprocess.Popen(writer_cmd(settings, port, extra), stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            await wait_listening(proc, port)
            js = nc.jetstream()
            lasts = {s: (await js.stream_info(s)).state.last_seq for s in settings.streams}
            deadline = time.monotonic() + 90
            while True:
                h = get_health(port) or {}
                cons = h.get("consumers", {})
                if cons and all(cons[s]["committed_seq"] >= last for s, last in lasts.items()):
                    break
                assert time.monotonic() < deadline, f"not drained: {cons} vs {lasts}"
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert sum(lasts.values()) == len(recs)
    # the kills happened while data was flowing: progress was made between kills, not only at the end
    assert len(set(committed_at_kill)) >= 3, committed_at_kill
    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert len(got) == len(expected[t]), (t, len(got), len(expected[t]))
            assert set(got) == expected[t], t
            assert duplicate_count(store, "marketprism_hot", t) == 0, t
        ledger = store.query_rows(
            "SELECT stream, first_seq, last_seq, messages FROM marketprism_meta.ingest_ledger "
            "WHERE data_type = '*' ORDER BY stream, first_seq"
        )
    finally:
        store.close()
    for stream, last in lasts.items():
        ranges = [r for r in ledger if r[0] == stream]
        assert [r[1] for r in ranges] == [1] + [r[2] + 1 for r in ranges[:-1]], f"{stream} ledger has gaps/overlaps"
        assert ranges[-1][2] == last
        assert sum(r[3] for r in ranges) == last
    log_text = log_path.read_text()
    assert log_text.count('"writer.started"') == kills + 1


async def test_range_left_in_flight_by_a_crash_is_recommitted_without_duplicates(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    """The crash window between data inserts and the ledger, built with the real commit steps. The intent
    declares sequences up to 600 in flight; the restarted writer groups them differently (ranges of 250) and
    commits every range that starts at or below 600 in recovery mode."""
    settings = writer_settings(writer__batch_size=250)
    recs = generate(1500, seed=5)
    await publish(nc, recs)
    js = nc.jetstream()
    msgs = await read_range(js, "MARKET_DATA", 1, 600)
    assert [m.seq for m in msgs] == list(range(1, 601))
    crashed = prepare_batch("MARKET_DATA", msgs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        from marketprism_dagster.storage import init_schema

        init_schema(store, settings)
        ensure_writer_tables(store, settings)
        write_intent(store, settings, "MARKET_DATA", 1, 600)
        half = crashed.tables["trade"]
        # only the trade table got its insert, and only part of it, before the "crash"
        store.insert_arrow_table("marketprism_hot", "trade", half.table.slice(0, half.table.num_rows // 2),
                                 dedup_token=half.token)
        rp = resume_point(store, settings, "MARKET_DATA")
    finally:
        store.close()
    assert (rp.watermark, rp.intent_last_seq) == (0, 600)

    w = await start_writer(settings)
    await w.wait_committed(nc)
    last = (await js.stream_info("MARKET_DATA")).state.last_seq
    metrics = await w.metrics()
    await w.close()
    recovered = re.search(r'marketprism_writer_recovered_batches_total\{stream="MARKET_DATA"\} (\d+)', metrics)

    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert sorted(got) == sorted(expected[t]), t
        first = store.query_rows(
            "SELECT first_seq, last_seq, messages FROM marketprism_meta.ingest_ledger "
            "WHERE stream = 'MARKET_DATA' AND data_type = '*' ORDER BY first_seq"
        )
    finally:
        store.close()
    assert [r[0] for r in first] == [1] + [r[1] + 1 for r in first[:-1]] and first[-1][1] == last
    assert all(r[1] - r[0] + 1 == r[2] <= 250 for r in first)  # regrouped: at most 250 per range, none absent
    in_flight = [r for r in first if r[0] <= 600]  # every range starting in the declared in-flight span
    assert len(in_flight) >= 3 and recovered is not None and int(recovered.group(1)) == len(in_flight)


def test_writer_subprocess_exits_cleanly_on_sigterm_with_nothing_to_do(
    writer_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = writer_settings()
    port = free_port()
    env = dict(os.environ)
    proc = subprocess.Popen(writer_cmd(settings, port, {}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=REPO, env=env)
    try:
        asyncio.run(wait_listening(proc, port))
        # /health listens before the consumers are attached and says "unhealthy" (503) until then
        deadline = time.monotonic() + 30
        h = get_health(port)
        while (h is None or h["status"] != "healthy") and time.monotonic() < deadline:
            time.sleep(0.2)
            h = get_health(port)
        assert h is not None and h["status"] == "healthy" and set(h["consumers"]) == {"MARKET_DATA", "ORDERBOOK_SNAP"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
