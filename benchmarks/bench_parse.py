"""Parse + normalize + book throughput per core over the RECORDED messages, as a ratio to bare
``orjson.loads`` of the same messages in the same run (DESIGN section 12).

* trades: Binance USD-M aggTrade -> Trade records -> wire encode (target <= 2.5x);
* binance depth: USD-M depthUpdate -> exact U/u/pu sync -> book update, books published on
  1 s ticks (target <= 3.5x); snapshots are loaded outside the timed loop;
* okx books: ``books`` frames (3 instruments, snapshot + updates) with the CRC32 checksum
  verified on every frame (target <= 3x); books are reset each pass, so the three 400-level
  snapshot loads are inside the timed loop;
* okx books, today's protocol: the same frames with ``checksum`` 0 (OKX since 2026-06-23: no
  checksum, the seqId chain is the check), same target.

Run: ``.venv/bin/python benchmarks/bench_parse.py [--repeat N] [--runs R]``; prints one JSON line
per case and run, then (``--runs`` > 1) one summary line per case with the best and median
ratio over the runs: other work on a shared machine inflates single runs, so report both.

A/B against another checkout (``git worktree add /tmp/base REV``; its ``../shared`` must hold the
fixtures too, or set ``MARKETPRISM_FIXTURES``): ``bench_parse.py --against /tmp/base [--pairs N]``.
Two warm worker processes, this script with the package of each tree, take turns one pass at a time
(the order alternating), timed in thread CPU time, so both sides see the same machine: on a loaded
shared machine whole runs differ by 10-30%, these paired passes by about 2% (quartiles printed). One
JSON line per case: each side's per-message time (min, median) and ratio to ``orjson.loads`` in the
same process, and ``new_over_base``, the median over pairs of this tree's time / the other's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import marketprism_dagster
from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import is_instrument_record, payload_text, read_session
from marketprism_dagster.records import encode
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import VenueAdapter
from marketprism_dagster.venues.binance import BinanceAdapter

TARGETS = {"binance_trades": 2.5, "binance_depth": 3.5, "okx_books": 3.0, "okx_books_no_checksum": 3.0}
_CHECKSUM = re.compile(rb'"checksum":-?\d+')


def fixtures() -> Path:
    env = os.environ.get("MARKETPRISM_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def adapter(market_id: str, info: str) -> VenueAdapter:
    s = Settings()
    a = adapter_for(market_id, s.markets[market_id], s.orderbook)
    a.accept_all_symbols = True
    recs = read_session(fixtures() / "sessions" / info)
    a.load_instruments({r["url"]: payload_text(r).encode() for r in recs if is_instrument_record(r)})
    return a


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeat))


def timed(fn: Callable[[], Any]) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def recv(name: str, pred: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [
        payload_text(r) for r in read_session(fixtures() / "sessions" / name) if r["kind"] == "recv" and pred(r["data"])
    ]


@dataclass
class Pass:
    """One case: ``run`` is one timed pass over ``msgs``, after ``prep`` (untimed) when there is one;
    ``stats`` what the last passes produced (reported beside the timing)."""

    msgs: list[Any]
    run: Callable[[], None]
    prep: Callable[[], None] | None = None
    stats: dict[str, int] = field(default_factory=dict)


def trades_pass() -> Pass:
    """Binance USD-M aggTrade -> Trade records -> wire encode."""
    msgs = recv("binance_usdm.ws.jsonl", lambda d: d["data"].get("e") == "aggTrade")
    a = adapter("binance_derivatives", "binance_usdm.info.jsonl")

    def run() -> None:
        on_message = a.on_message
        for m in msgs:
            for r in on_message("k", m, 0).records:
                encode(r)

    return Pass(msgs, run)


def depth_pass() -> Pass:
    """USD-M depthUpdate -> sync -> book; the REST snapshots are loaded in ``prep``."""
    name = "binance_usdm"
    msgs = recv(f"{name}.ws.jsonl", lambda d: d["data"].get("e") == "depthUpdate")
    snaps = [
        (r["url"].split("symbol=")[1].split("&")[0], payload_text(r).encode())
        for r in read_session(fixtures() / "sessions" / f"{name}.http.jsonl")
    ]
    a = adapter("binance_derivatives", f"{name}.info.jsonl")
    assert isinstance(a, BinanceAdapter)

    def prep() -> None:
        a.on_connect("k", 0)
        for sym, body in snaps:
            a._sync(sym)
            a.on_snapshot(sym, body, 0)

    def run() -> None:
        on_message = a.on_message
        n = 0
        for m in msgs:
            n += len(on_message("k", m, 0).records)
        p.stats["books_published_per_pass"] = n

    p = Pass(msgs, run, prep)
    return p


def okx_pass(zero: bool = False) -> Pass:
    """OKX ``books`` frames, books reset at the start of each pass (the snapshot loads are timed)."""
    msgs: list[Any] = recv("okx.ws.jsonl", lambda d: d.get("arg", {}).get("channel") == "books" and "data" in d)
    if zero:
        msgs = [_CHECKSUM.sub(b'"checksum":0', m if isinstance(m, bytes) else m.encode()) for m in msgs]
    a = adapter("okx_spot", "okx.info.jsonl")
    events: dict[str, int] = {}

    def run() -> None:
        on_message = a.on_message
        a.on_connect("k", 0)
        for m in msgs:
            out = on_message("k", m, 0)
            if out.events:
                for k, v in out.events.items():
                    events[k] = events.get(k, 0) + v
        # all passes so far: 290 frames each
        p.stats["checksums_verified_total"] = sum(s.checksums_verified for s in a.books.values())
        p.stats["checksum_failures"] = events.get("checksum_failure", 0)

    p = Pass(msgs, run)
    return p


PASSES: dict[str, Callable[[], Pass]] = {
    "binance_trades": trades_pass,
    "binance_depth": depth_pass,
    "okx_books": okx_pass,
    "okx_books_no_checksum": lambda: okx_pass(zero=True),
}


def loads_pass(msgs: list[Any]) -> None:
    """The baseline: bare ``orjson.loads`` of the same messages."""
    loads = orjson.loads
    for m in msgs:
        loads(m)


def bench(case: str, repeat: int, loops: int) -> dict[str, Any]:
    """Best of ``repeat`` of ``loops`` passes (``prep`` untimed), and the same for the baseline."""
    p = PASSES[case]()

    def work() -> float:
        gc.disable()
        try:
            total = 0.0
            for _ in range(loops):
                if p.prep is not None:
                    p.prep()
                t0 = time.perf_counter()
                p.run()
                total += time.perf_counter() - t0
            return total
        finally:
            gc.enable()

    def base() -> None:
        for _ in range(loops):
            loads_pass(p.msgs)

    out = report(case, len(p.msgs) * loops, best_of(repeat, work), best_of(repeat, lambda: timed(base)))
    out.update(p.stats)
    return out


def report(case: str, n: int, work_s: float, base_s: float) -> dict[str, Any]:
    ratio = work_s / base_s
    return {
        "case": case,
        "messages": n,
        "msgs_per_s": round(n / work_s),
        "orjson_loads_msgs_per_s": round(n / base_s),
        "us_per_msg": round(work_s / n * 1e6, 3),
        "ratio_to_orjson_loads": round(ratio, 2),
        "target": TARGETS[case],
        "meets_target": ratio <= TARGETS[case],
    }


# ------------------------------------------------------------ A/B against another checkout

AB_MESSAGES = 4000  # messages per timed turn (whole passes): a few ms to ~0.2 s per turn


def serve() -> None:
    """Worker: answer ``case side`` lines (side ``work`` or ``loads``) with the seconds per message of one turn,
    in thread CPU time (time this process waited for a CPU does not count)."""
    passes = {case: make() for case, make in PASSES.items()}
    print(json.dumps({"package": str(Path(marketprism_dagster.__file__).resolve().parent)}), flush=True)
    clock = time.thread_time
    for line in sys.stdin:
        case, side = line.split()
        p = passes[case]
        reps = max(1, AB_MESSAGES // len(p.msgs))
        spent = 0.0
        gc.disable()
        try:
            for _ in range(reps):
                if side == "loads":
                    t0 = clock()
                    loads_pass(p.msgs)
                else:
                    if p.prep is not None:
                        p.prep()
                    t0 = clock()
                    p.run()
                spent += clock() - t0
        finally:
            gc.enable()
        print(spent / (reps * len(p.msgs)), flush=True)


class Worker:
    def __init__(self, tree: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        ready = self.stdout.readline()
        if not ready:
            raise SystemExit(f"the worker for {tree} did not start (see its error above)")
        package = Path(json.loads(ready)["package"])
        if not package.is_relative_to(tree.resolve()):
            self.close()
            raise SystemExit(f"the worker for {tree} imported the package from {package}")

    def turn(self, case: str, side: str) -> float:
        self.stdin.write(f"{case} {side}\n")
        self.stdin.flush()
        return float(self.stdout.readline())

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait()


def quartiles(xs: list[float]) -> list[float]:
    return [round(q, 3) for q in statistics.quantiles(xs, n=4)]


def against(other: Path, pairs: int) -> None:
    """Interleave ``pairs`` turns per case of this tree (new) and ``other`` (base); print one line per case."""
    here = Path(__file__).resolve().parents[1]
    workers = {"base": Worker(other), "new": Worker(here)}
    t: dict[tuple[str, str, str], list[float]] = {}
    try:
        for i in range(pairs):
            for case in PASSES:
                for side in ("base", "new") if i % 2 == 0 else ("new", "base"):
                    for what in ("work", "loads"):
                        t.setdefault((case, side, what), []).append(workers[side].turn(case, what))
    finally:
        for w in workers.values():
            w.close()
    for case in PASSES:
        line: dict[str, Any] = {"case": case, "pairs": pairs, "base_tree": str(other), "new_tree": str(here)}
        for side in ("base", "new"):
            work, loads = t[(case, side, "work")], t[(case, side, "loads")]
            ratios = [w / b for w, b in zip(work, loads, strict=True)]
            line[side] = {
                "us_per_msg_min": round(min(work) * 1e6, 3),
                "us_per_msg_median": round(statistics.median(work) * 1e6, 3),
                "ratio_to_orjson_loads_median": round(statistics.median(ratios), 3),
                "ratio_quartiles": quartiles(ratios),
            }
        rel = [n / b for n, b in zip(t[(case, "new", "work")], t[(case, "base", "work")], strict=True)]
        line["new_over_base"] = round(statistics.median(rel), 3)
        line["new_over_base_quartiles"] = quartiles(rel)
        print(json.dumps(line), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--loops", type=int, default=50)
    p.add_argument("--runs", type=int, default=1, help="repeat the whole measurement; summarize best/median")
    p.add_argument("--against", type=Path, help="A/B: another checkout of the repository (the base)")
    p.add_argument("--pairs", type=int, default=40, help="A/B: turns per case and side")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # an A/B worker
    args = p.parse_args()
    if args.serve:
        serve()
        return
    if args.against is not None:
        against(args.against, args.pairs)
        return
    ratios: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for case in PASSES:
            res = bench(case, args.repeat, args.loops)
            ratios.setdefault(res["case"], []).append(res["ratio_to_orjson_loads"])
            print(json.dumps(res), flush=True)
    if args.runs > 1:
        for case, rs in ratios.items():
            summary = {
                "case": case,
                "runs": len(rs),
                "best_ratio": min(rs),
                "median_ratio": statistics.median(rs),
                "target": TARGETS[case],
                "best_meets_target": min(rs) <= TARGETS[case],
                "median_meets_target": statistics.median(rs) <= TARGETS[case],
            }
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
