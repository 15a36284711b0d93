"""End to end: emulator -> collector -> JetStream -> writer -> chDB, each in its own process.

Usage: .venv/bin/python benchmarks/bench_e2e.py [--seconds 20] [--rates 2500,0] [--max-ack-pending N]
       [--batch-size N] [--no-baseline] [--no-latency]

Per phase (a fresh nats-server, store and emulator each time):

* emulator: ``marketprism emulate --venue binance_spot --mode synth --rate R`` (R messages/s per
  high-frequency stream; binance_spot with BTC-USDT and ETH-USDT has 2 aggTrade streams, so
  R = 2500 is ~5k trade records/s plus the 400-level books the collector publishes every
  ``orderbook.cadence_ms``; R = 0 = as fast as the collector reads);
* collector: ``marketprism collect`` (binance_spot only, pointed at the emulator with --set);
* writer: ``marketprism write``;
* nats-server: EmbeddedNats.

Figures:

* sustained rate: messages committed by the writer per second (its /health ``committed_seq``,
  summed over both streams) over the measuring window, after a warm-up; beside it the rate
  the collector got into JetStream (stream ``last_seq``) over the same window. Every message
  is one record, so msgs/s = records/s.
* latency: exchange event time -> row visible. The bench reads ``trade.*.*.BTC-USDT`` from the
  stream through its own ephemeral consumer (stream sequence + the record's ``timestamp``) and
  polls the writer's /health every 20 ms; a message is visible at the first poll whose
  ``committed_seq`` covers its sequence. ``committed_seq`` moves after the rows AND the ledger
  rows are inserted (rows are queryable a little earlier), so this is an upper bound within
  the 20 ms poll. Querying the embedded store from this process instead would make the writer
  hand its chDB session over on every poll (~70 ms to reopen) and distort what is measured.
  Beside it, event time -> stored in JetStream (the stream timestamp in the delivery's ack
  subject), which splits the latency into the collector's share and the writer's.
* loss and duplicates: after the collector stops and the writer drains and exits, the bench
  opens the store: rows per table == messages in the streams, and count() == uniqExact(identity).
* peak RSS (VmHWM) and CPU seconds of every process (whole run), and CPU per record over the measuring
  window (``cpu_us_per_record``: each process's user+system CPU in the window / the messages it handled in
  it: the writer's by messages committed, every other process's by messages published),
  the bench's own process included (its sampler reads every BTC-USDT trade: about half the stream);
  the load average at the window's start and end beside them (the machine is shared).
* baseline (same run, same messages): the writer's commit path alone (``prepare_batch`` +
  ``commit_prepared`` in batches of writer.batch_size into a fresh store) on the messages
  the phase produced; ratio = end-to-end sustained rate / that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository root holds the tests package
MARKETPRISM = [sys.executable, "-m", "marketprism_dagster.cli"]

from marketprism_dagster.config import Settings, load_config  # noqa: E402
from marketprism_dagster.jetstream import connect, ensure_streams  # noqa: E402
from marketprism_dagster.nats_server import EmbeddedNats, free_port  # noqa: E402
from marketprism_dagster.records import RECORD_TYPES  # noqa: E402
from marketprism_dagster.storage import init_schema  # noqa: E402
from marketprism_dagster.storage.columns import identity_sql  # noqa: E402
from marketprism_dagster.storage.embedded import EmbeddedStore  # noqa: E402
from marketprism_dagster.writer.consumer import read_range  # noqa: E402
from marketprism_dagster.writer.ingest import commit_prepared, ensure_writer_tables, prepare_batch  # noqa: E402
from marketprism_dagster.writer.pull import RawPullConsumer  # noqa: E402
from tests.support.writer_helpers import get_health  # noqa: E402


class _Ts(msgspec.Struct):
    timestamp: int


_TS = msgspec.json.Decoder(_Ts)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MARKETPRISM") and k != "NATS_URL"}


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _cmd(command: str, sets: dict[str, Any]) -> list[str]:
    cmd = [*MARKETPRISM, command, "--config", str(REPO / "config/marketprism.yaml")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={_fmt(v)}"]
    return cmd


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return round(t.user + t.system, 1)
    except psutil.Error:
        return None


def _cpu_exact(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _wait_for(cond: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        await asyncio.sleep(interval)
    raise TimeoutError(what)


def _start_emulator(rate: float, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    cmd = [*MARKETPRISM, "emulate", "--venue", "binance_spot", "--mode", "synth", "--rate", str(rate), "--seed", "1"]
    f = open(log, "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, cwd=REPO, env=_env())
    assert proc.stdout is not None
    line = ""
    for _ in range(50):  # log lines may come first; the URL line is "binance_spot: rest=http://... ws=ws://..."
        line = proc.stdout.readline().decode()
        if "rest=" in line or not line:
            break
    if "rest=" not in line:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}; see {log}")
    parts = dict(p.split("=", 1) for p in line.split()[1:])
    # keep draining its stdout so the emulator never blocks on a full pipe
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    return proc, {"rest": parts["rest"], "ws": parts["ws"]}


def _settings(tmp: Path, nats_url: str, extra: dict[str, Any]) -> Settings:
    return load_config(REPO / "config/marketprism.yaml", env={}, overrides={
        "data_dir": str(tmp / "data"), "storage.path": str(tmp / "ch"), "nats.url": nats_url,
        "nats.embedded": False, **extra}).settings


class Sampler:
    """(sequence, exchange time) of the stream's BTC-USDT trades, and their first-visible times."""

    def __init__(self) -> None:
        self.waiting: deque[tuple[int, int]] = deque()
        self.latencies_ms: list[float] = []
        self.to_stream_ms: list[float] = []  # event time -> stored in JetStream (the ack subject's timestamp)
        self.measuring = False

    def add(self, seq: int, data: bytes, reply: str) -> None:
        if self.measuring:
            ts = _TS.decode(data).timestamp
            self.waiting.append((seq, ts))
            tokens = reply.split(".")
            if len(tokens) == 9:
                self.to_stream_ms.append(int(tokens[7]) / 1e6 - ts)

    def committed(self, seq: int, now_ms: float) -> None:
        w = self.waiting
        while w and w[0][0] <= seq:
            _, ts = w.popleft()
            self.latencies_ms.append(now_ms - ts)


async def run_phase(rate: float, seconds: float, warmup: float, extra: dict[str, Any], baseline: bool,
                    tmp: Path, latency: bool = True) -> dict[str, Any]:
    from nats.js import api as js_api

    out: dict[str, Any] = {"emulator_rate_per_stream": rate}
    with EmbeddedNats(tmp / "nats", port=free_port()) as srv:
        settings = _settings(tmp, srv.url, extra)
        nc = await connect(srv.url)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        emu, urls = _start_emulator(rate, tmp / "emulator.log")
        wport = free_port()
        common = {"data_dir": str(tmp / "data"), "nats.url": srv.url, "nats.embedded": False, "log_format": "json",
                  "log_level": "WARNING"}
        writer = subprocess.Popen(
            _cmd("write", {**common, "storage.path": str(tmp / "ch"), "writer.health_port": wport, **extra,
                           "log_level": os.environ.get("BENCH_WRITER_LOG_LEVEL", "WARNING")}),
            stdout=open(tmp / "writer.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO, env=_env())  # noqa: SIM115
        collector: subprocess.Popen[bytes] | None = None
        sampler = Sampler()
        # the bench's own view of the stream: BTC-USDT trades with their sequence (none with --no-latency)
        name = "bench_e2e_sampler"
        await js.add_consumer("MARKET_DATA", js_api.ConsumerConfig(
            name=name, deliver_policy=js_api.DeliverPolicy.ALL, ack_policy=js_api.AckPolicy.NONE,
            filter_subject="trade.*.*.BTC-USDT" if latency else "trade.none.none.none", mem_storage=True,
            inactive_threshold=60.0, num_replicas=1))
        raw = RawPullConsumer(nc, "MARKET_DATA", name, request_batch=2000, max_requests=2, expires_s=2.0)
        await raw.start()
        try:
            await _wait_for(lambda: (get_health(wport) or {}).get("status") == "healthy", 60, "writer health")
            csets = {**common, "collector.health_port": 0, "collector.metrics_port": 0, "collector.grace_s": 0}
            for m in ("binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives"):
                csets[f"markets.{m}.enabled"] = False
            csets.update({"markets.binance_spot.symbols": ["BTC-USDT", "ETH-USDT"],
                          "markets.binance_spot.data_types": ["orderbook", "trade"],
                          "markets.binance_spot.rest_url": urls["rest"], "markets.binance_spot.ws_url": urls["ws"]})
            collector = subprocess.Popen(_cmd("collect", csets), stdout=open(tmp / "collector.log", "wb"),  # noqa: SIM115
                                         stderr=subprocess.STDOUT, cwd=REPO, env=_env())
            streams = list(settings.streams)
            pids = {"emulator": emu.pid, "collector": collector.pid, "writer": writer.pid,
                    "nats_server": srv.proc.pid if srv.proc else 0, "bench": os.getpid()}

            async def last_seqs() -> dict[str, int]:
                return {s: int((await js.stream_info(s)).state.last_seq or 0) for s in streams}

            def committed(h: dict[str, Any] | None) -> dict[str, int] | None:
                cons = (h or {}).get("consumers") or {}
                return {s: int(cons[s]["committed_seq"]) for s in streams} if all(s in cons for s in streams) else None

            t_start = time.monotonic()
            window: dict[str, Any] = {}
            while True:
                await raw.request(4000)
                for d in raw.drain():
                    sampler.add(d.seq, d.message.data, d.reply)
                now = time.monotonic()
                c = committed(get_health(wport))
                if c is not None:
                    sampler.committed(c["MARKET_DATA"], time.time() * 1000)
                if not sampler.measuring and now - t_start >= warmup and c is not None:
                    sampler.measuring = True
                    window = {"t0": now, "c0": c, "p0": await last_seqs(), "load0": os.getloadavg(),
                              "cpu0": {k: _cpu_exact(p) for k, p in pids.items()}}
                if sampler.measuring and now - window["t0"] >= seconds and c is not None:
                    window.update(t1=now, c1=c, p1=await last_seqs(), load1=os.getloadavg(),
                                  cpu1={k: _cpu_exact(p) for k, p in pids.items()})
                    break
                if collector.poll() is not None or writer.poll() is not None:
                    raise RuntimeError(f"a process exited early; see logs in {tmp}")
                await asyncio.sleep(0.02)
            dt = window["t1"] - window["t0"]
            landed = sum(window["c1"].values()) - sum(window["c0"].values())
            published = sum(window["p1"].values()) - sum(window["p0"].values())
            out.update({
                "window_s": round(dt, 1),
                "published_msgs_per_s": round(published / dt),
                "landed_msgs_per_s": round(landed / dt),
                "landed_by_stream_per_s": {s: round((window["c1"][s] - window["c0"][s]) / dt) for s in streams},
                "lag_at_end_msgs": sum(window["p1"].values()) - sum(window["c1"].values()),
                "cpu_us_per_record": {k: round((window["cpu1"][k] - window["cpu0"][k]) * 1e6
                                               / max(landed if k == "writer" else published, 1), 1) for k in pids},
                "cores_busy": {k: round((window["cpu1"][k] - window["cpu0"][k]) / dt, 2) for k in pids},
                "load_average": [round(window["load0"][0], 1), round(window["load1"][0], 1)],
            })
            sampler.measuring = False
            lat = sampler.latencies_ms
            out["latency_ms"] = {"samples": len(lat), "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99),
                                 "max": _pct(lat, 1.0)}
            js_lat = sampler.to_stream_ms
            out["latency_to_jetstream_ms"] = {"p50": _pct(js_lat, 0.5), "p99": _pct(js_lat, 0.99)}
            out["peak_rss_mb"] = {k: _peak_rss_mb(p) for k, p in pids.items()}
            out["cpu_s"] = {k: _cpu_s(p) for k, p in pids.items()}
            _stop(collector)
            lasts = await last_seqs()
            await _wait_for(lambda: (committed(get_health(wport)) or {}) == lasts, 300, "writer drain", 0.05)
        finally:
            await raw.stop()
            if collector is not None:
                _stop(collector)
            _stop(writer)
            _stop(emu)
        info = {s: (await js.stream_info(s)).state for s in settings.streams}
        out["stream_messages"] = {s: int(i.messages) for s, i in info.items()}
        store = EmbeddedStore(settings.embedded_store_path)
        with store.hold():
            rows = {}
            dups = 0
            for t, rt in RECORD_TYPES.items():
                n = int(store.query_value(f"SELECT count() FROM marketprism_hot.{t}") or 0)
                if n:
                    rows[t] = n
                    u = int(store.query_value(f"SELECT uniqExact({identity_sql(rt)}) FROM marketprism_hot.{t}"))
                    dups += n - u
        store.close()
        out["rows"] = rows
        out["lost"] = sum(out["stream_messages"].values()) - sum(rows.values())
        out["duplicates"] = dups
        if baseline:
            out["baseline"] = await _baseline(js, settings, tmp / "baseline", out["landed_msgs_per_s"])
        await nc.close()
    return out


async def _baseline(js: Any, settings: Settings, tmp: Path, landed: int, cap: int = 150_000) -> dict[str, Any]:
    """The writer's commit path alone on the phase's own messages (read back from JetStream)."""
    batch = settings.writer.batch_size
    per_stream = {s: await read_range(js, s, 1, cap, timeout=5.0) for s in settings.streams}
    s2 = settings.model_copy(update={"storage": settings.storage.model_copy(update={"path": str(tmp / "ch")})})
    store = EmbeddedStore(s2.embedded_store_path)
    n = 0
    t_prep = t_commit = 0.0
    with store.hold():
        init_schema(store, s2)
        ensure_writer_tables(store, s2)
        for stream, msgs in per_stream.items():
            window = min(batch, settings.streams[stream].max_ack_pending)
            for k in range(0, len(msgs), window):
                t0 = time.perf_counter()
                prepared = prepare_batch(stream, msgs[k:k + window])
                t1 = time.perf_counter()
                commit_prepared(store, s2, prepared)
                t_prep += t1 - t0
                t_commit += time.perf_counter() - t1
                n += len(msgs[k:k + window])
    store.close()
    total = t_prep + t_commit
    rate = n / total if total else 0.0
    return {"messages": n, "commit_path_msgs_per_s": round(rate), "insert_only_msgs_per_s": round(n / t_commit),
            "e2e_over_commit_path": round(landed / rate, 2) if rate else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring window per phase")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--rates", default="2500,0", help="emulator messages/s per stream, one phase each (0 = max)")
    ap.add_argument("--batch-size", type=int, default=0, help="writer.batch_size (0 = configured)")
    ap.add_argument("--max-ack-pending", type=int, default=0, help="both streams (0 = configured 2000/5000)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-latency", action="store_true",
                    help="no latency sampler: the bench stops reading half the stream (its CPU and NATS's "
                         "second delivery of those messages leave the 2 cores to the pipeline)")
    args = ap.parse_args()
    extra: dict[str, Any] = {}
    if args.batch_size:
        extra["writer.batch_size"] = args.batch_size
    if args.max_ack_pending:
        extra["streams.MARKET_DATA.max_ack_pending"] = args.max_ack_pending
        extra["streams.ORDERBOOK_SNAP.max_ack_pending"] = args.max_ack_pending
    results = []
    for rate in (float(r) for r in args.rates.split(",")):
        if os.environ.get("BENCH_KEEP"):  # keep the logs
            d = tempfile.mkdtemp(prefix="bench_e2e_")
            print(f"phase dir: {d}", flush=True)
            res = asyncio.run(run_phase(rate, args.seconds, args.warmup, extra, not args.no_baseline, Path(d),
                                        not args.no_latency))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_e2e_") as d:
                res = asyncio.run(run_phase(rate, args.seconds, args.warmup, extra, not args.no_baseline, Path(d),
                                        not args.no_latency))
        results.append(res)
        print(json.dumps(res, indent=2), flush=True)
    print(json.dumps({"settings": extra or "configured defaults", "phases": results}))


if __name__ == "__main__":
    main()
