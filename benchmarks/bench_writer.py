"""Hot writer throughput: the embedded store alone, then NATS -> writer -> chDB, with peak RSS.

Usage: .venv/bin/python benchmarks/bench_writer.py [--store-trades 200000] [--books 2000] [--pipeline 100000]

1. store: ``commit_prepared`` (intent + per-table insert with token + ledger, the writer's
   real commit) into a tmp embedded chDB, back to back, for trades (batches of 5000) and for
   400-level order books (batches of 100). Rows/s over the whole run, store held open.
2. pipeline: N generated records of all 8 types (70 % trades, 10 % 20-level books) published
   to a real nats-server first, then ``marketprism write`` started as a subprocess; time from
   its first commit to the last committed sequence (msgs/s), and the writer's peak RSS
   (VmHWM from /proc). The same with records published while the writer runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository root holds the tests package

from marketprism_dagster import records  # noqa: E402
from marketprism_dagster.config import Settings, load_config  # noqa: E402
from marketprism_dagster.jetstream import connect, ensure_streams  # noqa: E402
from marketprism_dagster.nats_server import EmbeddedNats, free_port  # noqa: E402
from marketprism_dagster.storage import init_schema  # noqa: E402
from marketprism_dagster.storage.embedded import EmbeddedStore  # noqa: E402
from marketprism_dagster.writer.ingest import (  # noqa: E402
    StreamMessage,
    commit_prepared,
    ensure_writer_tables,
    prepare_batch,
)
from tests.support.writer_helpers import (  # noqa: E402
    generate,
    get_health,
    mix_record,
    publish,
    recent_base_ms,
    writer_cmd,
)


def settings_for(tmp: Path, nats_url: str = "nats://127.0.0.1:4222") -> Settings:
    return load_config(REPO / "config/marketprism.yaml", env={}, overrides={
        "data_dir": str(tmp / "data"), "storage.path": str(tmp / "ch"), "nats.url": nats_url,
        "nats.embedded": False, "log_level": "WARNING",
    }).settings


def rss_peak_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_store(tmp: Path, n_trades: int, n_books: int) -> dict[str, Any]:
    settings = settings_for(tmp)
    base = recent_base_ms()
    import random

    rng = random.Random(1)
    trades = [mix_record("trade", i, base, rng) for i in range(n_trades)]
    books = [mix_record("orderbook", i, base, rng, depth=400) for i in range(n_books)]
    out: dict[str, Any] = {}
    store = EmbeddedStore(settings.embedded_store_path)
    with store.hold():
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
        for name, recs, batch, stream in (("trades", trades, 5000, "MARKET_DATA"),
                                           ("orderbook_400", books, 100, "ORDERBOOK_SNAP")):
            msgs = [StreamMessage(i + 1, records.subject(r), records.encode(r)) for i, r in enumerate(recs)]
            t_prep = 0.0
            t_commit = 0.0
            for k in range(0, len(msgs), batch):
                t0 = time.perf_counter()
                prepared = prepare_batch(stream, msgs[k:k + batch])
                t1 = time.perf_counter()
                commit_prepared(store, settings, prepared)
                t_prep += t1 - t0
                t_commit += time.perf_counter() - t1
            total = t_prep + t_commit
            out[name] = {
                "rows": len(recs), "batch": batch,
                "rows_per_s_decode_plus_insert": round(len(recs) / total),
                "rows_per_s_insert_only": round(len(recs) / t_commit),
                "decode_share": round(t_prep / total, 2),
            }
        counted = store.query_value("SELECT count() FROM marketprism_hot.trade")
        assert counted == n_trades, counted
    store.close()
    out["bench_process_peak_rss_mb"] = round(rss_peak_mb(), 1)
    return out


def start_writer(settings: Settings, port: int, extra: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    cmd = writer_cmd(settings, port, {"log_level": "WARNING", **extra})
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)


async def drain(port: int, lasts: dict[str, int], timeout: float = 600) -> tuple[float, float]:
    """(time of first progress, time all committed), monotonic."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = get_health(port) or {}
        cons = h.get("consumers") or {}
        if cons:
            done = sum(cons[s]["committed_seq"] for s in lasts)
            if first is None and done > 0:
                first = time.monotonic()
            if all(cons[s]["committed_seq"] >= last for s, last in lasts.items()):
                return first or time.monotonic(), time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError("writer did not drain")


async def bench_pipeline(tmp: Path, n: int, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with EmbeddedNats(tmp / "nats", port=free_port()) as srv:
        settings = settings_for(tmp, srv.url)
        nc = await connect(srv.url)
        await ensure_streams(nc.jetstream(), settings)
        recs = generate(n, seed=42)
        t0 = time.perf_counter()
        await publish(nc, recs)
        out["publish_msgs_per_s"] = round(n / (time.perf_counter() - t0))
        js = nc.jetstream()
        lasts = {s: (await js.stream_info(s)).state.last_seq for s in settings.streams}
        port = free_port()
        proc = start_writer(settings, port, extra, tmp / "writer.log")
        try:
            first, done = await drain(port, lasts)
            out["backlog_msgs"] = n
            out["backlog_drain_msgs_per_s"] = round(n / (done - first)) if done > first else None
            out["writer_peak_rss_mb_backlog"] = round(rss_peak_mb(proc.pid), 1)
            # live: publish while the writer runs; rate = records committed per second of publishing+drain
            live = generate(n, seed=43, first_index=10 * n)
            t0 = time.monotonic()
            await publish(nc, live)
            out["live_publish_s"] = round(time.monotonic() - t0, 2)
            lasts = {s: (await js.stream_info(s)).state.last_seq for s in settings.streams}
            _, done = await drain(port, lasts)
            assert sum(lasts.values()) == 2 * n, lasts
            out["live_msgs_per_s"] = round(n / (done - t0))
            out["writer_peak_rss_mb"] = round(rss_peak_mb(proc.pid), 1)
            h = get_health(port) or {}
            out["final_health"] = h.get("status")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        await nc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-trades", type=int, default=200_000)
    ap.add_argument("--books", type=int, default=2_000)
    ap.add_argument("--pipeline", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--max-ack-pending", type=int, default=0, help="0 = the configured defaults (2000/5000)")
    args = ap.parse_args()
    extra: dict[str, Any] = {"writer.batch_size": args.batch_size}
    if args.max_ack_pending:
        extra["streams.MARKET_DATA.max_ack_pending"] = args.max_ack_pending
        extra["streams.ORDERBOOK_SNAP.max_ack_pending"] = args.max_ack_pending
    with tempfile.TemporaryDirectory() as d:
        store = bench_store(Path(d) / "store", args.store_trades, args.books)
    print(json.dumps({"store": store}, indent=2))
    with tempfile.TemporaryDirectory() as d:
        pipe = asyncio.run(bench_pipeline(Path(d), args.pipeline, extra))
    print(json.dumps({"pipeline": pipe, "settings": extra}, indent=2))


if __name__ == "__main__":
    main()
