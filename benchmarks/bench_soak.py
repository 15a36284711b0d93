"""Soak: the embedded default at the rates people run, per-process CPU and memory over minutes.

Usage: .venv/bin/python benchmarks/bench_soak.py [--rate 50,5000] [--minutes 1] [--sample-s 30] [--json FILE]
       [--set key=value ...] [--table-setting key=value ...]

Per rate (a fresh nats-server, store and emulator each time), four separate processes:

* emulator: ``marketprism emulate --mode synth`` with every venue (as ``marketprism demo``);
  its ``--rate`` (messages/s per high-frequency stream) is derived from the requested rows/s:
  the default markets land one trade row per message on 8 trade streams plus one order book
  row per second for each of 8 books, so emulator rate = (rows/s - 8) / 8 (at least 0.2);
* collector: ``marketprism collect`` (every default market, pointed at the emulator). From
  ``--trades-only-from`` rows/s on (default 1000) it collects trades only and the emulator rate is
  rows/s / 8: the emulator's rate drives its depth streams too, so a phase with books at 5k rows/s
  also sends ~5k depth updates a second that land no rows (a book lands one row a second) but
  that the emulator builds and the collector keeps its books from (in a 2-minute run both were
  busy the whole window: 1753 rows/s landed, p50 delay 60 s, the writer 16% of a core);
* writer: ``marketprism write``;
* nats-server: EmbeddedNats.

Figures, over the window after a warm-up (``--warmup-s``, default 20 s):

* CPU % of one core per process over the whole window (psutil user + system seconds / wall
  seconds), and collector + NATS + writer together; the writer's CPU by thread name (from
  /proc/<pid>/task: ``python`` is the interpreter and the chDB statements it runs, ``MergeMutate``
  chDB's background merges, ``ThreadPool`` its query pipelines; threads that ended during the
  window are not counted there); commits per second (the writer's batches);
* RSS (MB) per process at the start, middle and end of the window, plus a timeline every
  ``--sample-s`` seconds (writer RSS at 5 and 30 minutes is what the memory target compares);
* rows landed (the writer's committed sequences, summed over both streams) per second;
* event time -> row visible: p50 / p99 / max bucket bounds of the writer's per-row histogram
  (``marketprism_writer_visible_delay_seconds``) over the window (bucket upper bounds: "p99 <= X s");
* lost and duplicated: after the collector stops and the writer drains and exits, the bench
  opens the store: messages in the streams - rows in the hot tables, and count() - uniqExact(identity);
  then the active parts of the writer's tables (count and highest merge level per table).

``--table-setting k=v`` gives the writer's tables a MergeTree setting (ALTER ... MODIFY SETTING before the
writer starts), to measure one against the configured DDL.

The machine's load average at start and end is printed beside the figures: a shared machine
makes every CPU figure an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import _cmd, _env, _stop, _wait_for  # noqa: E402

from marketprism_dagster.config import Settings, load_config  # noqa: E402
from marketprism_dagster.jetstream import connect, ensure_streams  # noqa: E402
from marketprism_dagster.nats_server import EmbeddedNats, free_port  # noqa: E402
from marketprism_dagster.records import RECORD_TYPES  # noqa: E402
from marketprism_dagster.storage.columns import identity_sql  # noqa: E402
from marketprism_dagster.storage.embedded import EmbeddedStore  # noqa: E402
from marketprism_dagster.storage.schema import init_schema, writer_tables  # noqa: E402
from tests.support.writer_helpers import get_health  # noqa: E402

MARKETPRISM = [sys.executable, "-m", "marketprism_dagster.cli"]
MARKETS = ("binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives")
BOOKS = 8  # order books in the default markets, one row a second each
TRADE_STREAMS = 8


def emulator_rate(rows_per_s: float, trades_only: bool = False) -> float:
    return max(0.2, (rows_per_s - (0 if trades_only else BOOKS)) / TRADE_STREAMS)


def _start_emulator(rate: float, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, dict[str, str]]]:
    cmd = [*MARKETPRISM, "emulate", "--mode", "synth", "--rate", str(rate), "--seed", "1"]
    f = open(log, "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, cwd=REPO, env=_env())
    assert proc.stdout is not None
    urls: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + 60
    while len(urls) < len(MARKETS) and time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        if "rest=" in line:
            market = line.split(":", 1)[0].strip()
            urls[market] = dict(p.split("=", 1) for p in line.split()[1:])
    if any(m not in urls for m in MARKETS):
        proc.kill()
        raise RuntimeError(f"emulator did not print every market's URLs (got {sorted(urls)}); see {log}")
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    return proc, urls


def _settings(tmp: Path, nats_url: str, extra: dict[str, Any]) -> Settings:
    return load_config(REPO / "config/marketprism.yaml", env={}, overrides={
        "data_dir": str(tmp / "data"), "storage.path": str(tmp / "ch"), "nats.url": nats_url,
        "nats.embedded": False, **extra}).settings


class Proc:
    """CPU seconds and RSS of one process, read from psutil (/proc)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.p = psutil.Process(pid)

    def cpu_s(self) -> float:
        try:
            t = self.p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return float("nan")

    def rss_mb(self) -> float:
        try:
            return round(self.p.memory_info().rss / 1024**2, 1)
        except psutil.Error:
            return float("nan")


def visible_buckets(port: int) -> dict[float, float]:
    """Cumulative per-row counts of the writer's event -> visible histogram (all streams), by upper bound."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("marketprism_writer_visible_delay_seconds_bucket{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
    return out


def thread_cpu_s(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of ``pid``: thread id -> (thread name, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def thread_cpu_pct(start: dict[str, tuple[str, float]], end: dict[str, tuple[str, float]], dt: float
                   ) -> dict[str, float]:
    """CPU % of one core by thread name between two ``thread_cpu_s`` snapshots (threads alive at the end)."""
    by_name: dict[str, float] = {}
    for tid, (name, cpu) in end.items():
        by_name[name] = by_name.get(name, 0.0) + cpu - start.get(tid, (name, 0.0))[1]
    return {n: round(100 * c / dt, 2) for n, c in sorted(by_name.items(), key=lambda kv: -kv[1]) if c > 0}


def batches_committed(port: int) -> float:
    """The writer's committed batches so far (all streams), from /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("marketprism_writer_batches_total{"))


def delay_quantiles(start: dict[float, float], end: dict[float, float]) -> dict[str, Any]:
    """p50 / p99 / max of the window as histogram bucket upper bounds (seconds), from two cumulative snapshots."""
    counts = sorted((b, end[b] - start.get(b, 0.0)) for b in end)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return {"rows": 0}
    out: dict[str, Any] = {"rows": int(total)}
    for name, q in (("p50_le_s", 0.5), ("p99_le_s", 0.99), ("max_le_s", 1.0)):
        out[name] = next(b for b, c in counts if c >= q * total)
    return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Foreign:
    """Another process's use of the embedded store, as Dagster steps, sensors and checks do: every ``every_s``
    seconds a burst of ``burst`` short queries, each opening the store (the writer hands it over)."""

    def __init__(self, path: Path, every_s: float, burst: int) -> None:
        self.path, self.every_s, self.burst = path, every_s, burst
        self.stop = threading.Event()
        self.bursts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        store = EmbeddedStore(self.path, lock_timeout_s=60)
        while not self.stop.wait(self.every_s):
            for _ in range(self.burst):
                store.query_value("SELECT count() FROM marketprism_meta.ingest_ledger")
            self.bursts += 1


async def run_phase(rows_per_s: float, minutes: float, warmup_s: float, sample_s: float, extra: dict[str, Any],
                    tmp: Path, foreign_every_s: float = 0.0, foreign_burst: int = 1,
                    table_settings: dict[str, str] | None = None, trades_only: bool = False) -> dict[str, Any]:
    rate = emulator_rate(rows_per_s, trades_only)
    out: dict[str, Any] = {"target_rows_per_s": rows_per_s, "emulator_rate_per_stream": round(rate, 2),
                           "collected": "trades only" if trades_only else "every default data type",
                           "minutes": minutes, "settings": extra or "configured defaults",
                           "loadavg_start": _loadavg()}
    with EmbeddedNats(tmp / "nats", port=free_port()) as srv:
        settings = _settings(tmp, srv.url, extra)
        nc = await connect(srv.url)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        if table_settings:
            out["table_settings"] = table_settings
            _apply_table_settings(settings, table_settings)
        emu, urls = _start_emulator(rate, tmp / "emulator.log")
        wport = free_port()
        common = {"data_dir": str(tmp / "data"), "nats.url": srv.url, "nats.embedded": False, "log_format": "json",
                  "log_level": "WARNING"}
        writer = subprocess.Popen(
            _cmd("write", {**common, "storage.path": str(tmp / "ch"), "writer.health_port": wport, **extra}),
            stdout=open(tmp / "writer.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO, env=_env())  # noqa: SIM115
        collector: subprocess.Popen[bytes] | None = None
        streams = list(settings.streams)

        def committed() -> dict[str, int] | None:
            cons = (get_health(wport) or {}).get("consumers") or {}
            return {s: int(cons[s]["committed_seq"]) for s in streams} if all(s in cons for s in streams) else None

        async def last_seqs() -> dict[str, int]:
            return {s: int((await js.stream_info(s)).state.last_seq or 0) for s in streams}

        try:
            await _wait_for(lambda: (get_health(wport) or {}).get("status") == "healthy", 60, "writer health")
            csets: dict[str, Any] = {**common, "collector.health_port": 0, "collector.metrics_port": 0,
                                     "collector.grace_s": 0}
            for m in MARKETS:
                csets[f"markets.{m}.rest_url"] = urls[m]["rest"]
                csets[f"markets.{m}.ws_url"] = urls[m]["ws"]
                if trades_only:
                    if "trade" in settings.markets[m].data_types:
                        csets[f"markets.{m}.data_types"] = ["trade"]
                    else:
                        csets[f"markets.{m}.enabled"] = False
            collector = subprocess.Popen(_cmd("collect", csets), stdout=open(tmp / "collector.log", "wb"),  # noqa: SIM115
                                         stderr=subprocess.STDOUT, cwd=REPO, env=_env())
            procs = [Proc("collector", collector.pid), Proc("nats_server", srv.proc.pid if srv.proc else 0),
                     Proc("writer", writer.pid), Proc("emulator", emu.pid)]
            foreign = Foreign(settings.embedded_store_path, foreign_every_s, foreign_burst) if foreign_every_s else None
            if foreign is not None:
                foreign.thread.start()
                out["foreign_store_use"] = {"every_s": foreign_every_s, "queries_per_burst": foreign_burst}
            await asyncio.sleep(warmup_s)
            for p in (collector, writer):
                if p.poll() is not None:
                    raise RuntimeError(f"a process exited during warm-up; see logs in {tmp}")
            window_s = minutes * 60
            t0 = time.monotonic()
            cpu0 = {p.name: p.cpu_s() for p in procs}
            c0 = committed() or {s: 0 for s in streams}
            v0 = visible_buckets(wport)
            b0 = batches_committed(wport)
            th0 = thread_cpu_s(writer.pid)
            rss: dict[str, dict[str, float]] = {p.name: {"start": p.rss_mb()} for p in procs}
            timeline: list[dict[str, Any]] = []
            next_sample = 0.0
            mid_done = False
            while True:
                el = time.monotonic() - t0
                if el >= next_sample:
                    timeline.append({"t_s": round(el), **{p.name: p.rss_mb() for p in procs if p.name != "emulator"}})
                    print(f"  t={el / 60:5.1f} min  rss MB " + " ".join(f"{p.name}={p.rss_mb()}" for p in procs)
                          + f"  load {_loadavg()}", flush=True)
                    next_sample += sample_s
                if not mid_done and el >= window_s / 2:
                    for p in procs:
                        rss[p.name]["middle"] = p.rss_mb()
                    mid_done = True
                if el >= window_s:
                    break
                if collector.poll() is not None or writer.poll() is not None:
                    raise RuntimeError(f"a process exited early; see logs in {tmp}")
                await asyncio.sleep(min(1.0, window_s - el))
            dt = time.monotonic() - t0
            cpu1 = {p.name: p.cpu_s() for p in procs}
            out["writer_threads_cpu_pct"] = thread_cpu_pct(th0, thread_cpu_s(writer.pid), dt)
            out["commits_per_s"] = round((batches_committed(wport) - b0) / dt, 2)
            c1 = committed() or c0
            out["event_to_visible"] = delay_quantiles(v0, visible_buckets(wport))
            # messages in the streams not yet committed: a delay with no lag here was built before NATS
            consumers = (get_health(wport) or {}).get("consumers") or {}
            out["writer_lag_at_end"] = {s: c["lag"] for s, c in consumers.items()}
            for p in procs:
                rss[p.name]["end"] = p.rss_mb()
            cpu_pct = {n: round(100 * (cpu1[n] - cpu0[n]) / dt, 2) for n in cpu0}
            cpu_pct["collector+nats+writer"] = round(sum(cpu_pct[n] for n in ("collector", "nats_server", "writer")), 2)
            landed = sum(c1.values()) - sum(c0.values())
            out.update({"window_s": round(dt, 1), "rows_landed_per_s": round(landed / dt, 1),
                        "cpu_pct_of_one_core": cpu_pct, "rss_mb": rss, "rss_timeline_mb": timeline,
                        "loadavg_end": _loadavg()})
            out["cpu_ms_per_row"] = {n: round(10 * cpu_pct[n] * dt / max(landed, 1), 3)
                                     for n in ("collector", "nats_server", "writer")}
            if foreign is not None:
                foreign.stop.set()
                foreign.thread.join(120)
                out["foreign_store_use"]["bursts"] = foreign.bursts
            _stop(collector)
            lasts = await last_seqs()
            await _wait_for(lambda: (committed() or {}) == lasts, 300, "writer drain", 0.1)
        finally:
            if collector is not None:
                _stop(collector)
            _stop(writer)
            _stop(emu)
        info = {s: (await js.stream_info(s)).state for s in settings.streams}
        await nc.close()
    out["stream_messages"] = {s: int(i.messages) for s, i in info.items()}
    store = EmbeddedStore(settings.embedded_store_path)
    rows: dict[str, int] = {}
    dups = 0
    with store.hold():
        for t, rt in RECORD_TYPES.items():
            n = int(store.query_value(f"SELECT count() FROM marketprism_hot.{t}") or 0)
            if n:
                rows[t] = n
                dups += n - int(store.query_value(f"SELECT uniqExact({identity_sql(rt)}) FROM marketprism_hot.{t}"))
        pairs = ", ".join(f"('{d}', '{t}')" for d, t in writer_tables(settings))
        parts = store.query_rows(
            "SELECT database || '.' || table, count(), max(level) FROM system.parts WHERE active AND "
            f"(database, table) IN ({pairs}) GROUP BY 1 ORDER BY 1")
    store.close()
    out["active_parts_and_max_level"] = {str(t): [int(n), int(lv)] for t, n, lv in parts}
    out["rows"] = rows
    out["lost"] = sum(out["stream_messages"].values()) - sum(rows.values())
    out["duplicated"] = dups
    return out


def _apply_table_settings(settings: Settings, table_settings: dict[str, str]) -> None:
    """Create the schema and give the writer's tables ``table_settings`` (before the writer opens the store)."""
    store = EmbeddedStore(settings.embedded_store_path)
    with store.hold():
        init_schema(store, settings)
        wanted = ", ".join(f"{k} = {v}" for k, v in table_settings.items())
        for db, table in writer_tables(settings):
            try:
                store.execute(f"ALTER TABLE `{db}`.`{table}` MODIFY SETTING {wanted}")
            except Exception as exc:  # a table the writer creates itself later: it keeps the DDL's settings
                print(f"  table setting not applied to {db}.{table}: {str(exc)[:120]}", flush=True)
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="50,5000", help="rows/s landing, one phase per comma-separated value")
    ap.add_argument("--minutes", type=float, default=1.0, help="measuring window per phase")
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--sample-s", type=float, default=30.0, help="RSS timeline period")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="writer/collector setting key=value")
    ap.add_argument("--foreign-every-s", type=float, default=0.0,
                    help="another process opens the store every N s, as Dagster steps and checks do (0 = never)")
    ap.add_argument("--foreign-burst", type=int, default=1, help="queries per foreign use, each opening the store")
    ap.add_argument("--trades-only-from", type=float, default=1000.0,
                    help="phases at this many rows/s or more collect trades only (books off)")
    ap.add_argument("--table-setting", dest="table_settings", action="append", default=[],
                    help="MergeTree setting key=value given to the writer's tables before the writer starts")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = ap.parse_args()
    extra: dict[str, Any] = {}
    for item in args.sets:
        k, _, v = item.partition("=")
        extra[k] = v
    table_settings = dict(item.partition("=")[::2] for item in args.table_settings)
    results = []
    for rate in (float(r) for r in args.rate.split(",")):
        print(f"--- {rate:g} rows/s for {args.minutes:g} min", flush=True)
        if os.environ.get("BENCH_KEEP"):
            d = tempfile.mkdtemp(prefix="bench_soak_")
            print(f"phase dir: {d}", flush=True)
            res = asyncio.run(run_phase(rate, args.minutes, args.warmup_s, args.sample_s, extra, Path(d),
                                        args.foreign_every_s, args.foreign_burst, table_settings,
                                        rate >= args.trades_only_from))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_soak_") as d:
                res = asyncio.run(run_phase(rate, args.minutes, args.warmup_s, args.sample_s, extra, Path(d),
                                        args.foreign_every_s, args.foreign_burst, table_settings,
                                        rate >= args.trades_only_from))
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "rss_timeline_mb"}, indent=2), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
