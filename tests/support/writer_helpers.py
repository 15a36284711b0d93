"""Helpers for the writer tests and benchmarks: a deterministic record generator, publishing, counting.

The generator makes realistic records of all 8 types (prices near recent BTC/ETH levels,
Binance/OKX/Deribit market ids and symbols as the collector emits them) with unique
identities; the same (n, base_ms, seed) always yields the same records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.publisher import JetStreamPublisher
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.columns import identity_sql
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.service import WriterService, run_writer
from tests.support.records import make_record

REPO = Path(__file__).resolve().parents[2]
PERP = ("binance_derivatives", "okx_derivatives")
SPOT = ("binance_spot", "okx_spot")
MARKET_TYPE = {
    "binance_spot": "spot",
    "okx_spot": "spot",
    "binance_derivatives": "perpetual",
    "okx_derivatives": "perpetual",
    "deribit_derivatives": "options",
}
MID = {"BTC-USDT": 97_000.0, "ETH-USDT": 3_400.0, "BTC": 55.0, "ETH": 60.0}
# share of each type in a generated mix (trades dominate, as in real traffic)
MIX = (
    ("trade", 70),
    ("orderbook", 10),
    ("funding_rate", 4),
    ("open_interest", 4),
    ("liquidation", 4),
    ("lsr_top_position", 3),
    ("lsr_all_account", 3),
    ("volatility_index", 2),
)


def _exchange_symbol(exchange: str, symbol: str) -> str:
    if exchange.startswith("binance"):
        return symbol.replace("-", "")
    if exchange == "okx_derivatives":
        return symbol + "-SWAP"
    if exchange == "deribit_derivatives":
        return symbol.lower() + "_usd"
    return symbol


def _dec(x: float, places: int) -> str:
    return f"{x:.{places}f}"


def _levels(rng: random.Random, mid: float, depth: int, side: int) -> list[tuple[str, str]]:
    out = []
    for i in range(depth):
        price = mid + side * (0.1 + i * 0.1)
        out.append((_dec(price, 2), _dec(rng.uniform(0.001, 3.0), 5)))
    return out


def mix_record(data_type: str, i: int, base_ms: int, rng: random.Random, depth: int = 20) -> Any:
    """The i-th record of a type in the generated mix (identity unique per (type, i)): the suite's record
    factory with every field drawn here."""
    if data_type == "volatility_index":
        exchange = "deribit_derivatives"
        symbol = ("BTC", "ETH")[i % 2]
    else:
        exchange = (SPOT + PERP)[i % 4] if data_type in ("trade", "orderbook") else PERP[i % 2]
        symbol = ("BTC-USDT", "ETH-USDT")[(i // 4) % 2]
    mid = MID[symbol] * (1 + rng.uniform(-0.002, 0.002))
    ts = base_ms + i * 7  # distinct per i within a type; spans hours for large i
    common = {
        "exchange": exchange,
        "market_type": MARKET_TYPE[exchange],
        "symbol": symbol,
        "exchange_symbol": _exchange_symbol(exchange, symbol),
        "timestamp": ts,
        "received_at": ts + rng.randint(1, 40),
    }
    if data_type == "trade":
        qty = rng.uniform(0.0001, 2.0)
        okx_swap = exchange == "okx_derivatives"
        return make_record(
            "trade", i, base_ms, **common, trade_id=str(4_000_000_000 + i), price=_dec(mid, 2), quantity=_dec(qty, 6),
            quantity_contracts=_dec(qty * 100, 2) if okx_swap else None, side=rng.choice(("buy", "sell")),
        )
    if data_type == "orderbook":
        return make_record(
            "orderbook", i, base_ms, **common, update_id=70_000_000_000 + i, tick=ts // 1000 * 1000, depth=depth,
            bids=_levels(rng, mid, depth, -1), asks=_levels(rng, mid, depth, 1),
        )
    if data_type == "funding_rate":
        return make_record(
            "funding_rate", i, base_ms, **common, funding_rate=_dec(rng.uniform(-0.0005, 0.0005), 8),
            next_funding_time=(ts // 28_800_000 + 1) * 28_800_000, mark_price=_dec(mid, 2),
            index_price=_dec(mid * 0.9999, 2),
        )
    if data_type == "open_interest":
        oi = rng.uniform(50_000, 90_000)
        return make_record(
            "open_interest", i, base_ms, **common, open_interest=_dec(oi, 3), open_interest_value=_dec(oi * mid, 2),
            open_interest_contracts=_dec(oi * 100, 0) if exchange == "okx_derivatives" else None,
        )
    if data_type == "liquidation":
        qty = rng.uniform(0.001, 5.0)
        return make_record(
            "liquidation", i, base_ms, **common, side=rng.choice(("buy", "sell")), price=_dec(mid, 2),
            quantity=_dec(qty, 3), quantity_contracts=None, status="filled",
        )
    if data_type in ("lsr_top_position", "lsr_all_account"):
        long_r = rng.uniform(0.4, 0.7)
        return make_record(
            data_type, i, base_ms, **common, period="5m", long_short_ratio=_dec(long_r / (1 - long_r), 4),
            long_ratio=_dec(long_r, 4), short_ratio=_dec(1 - long_r, 4),
        )
    if data_type == "volatility_index":
        v = mid
        return make_record(
            "volatility_index", i, base_ms, **common, index_value=_dec(v, 2), open=_dec(v * 0.99, 2),
            high=_dec(v * 1.01, 2), low=_dec(v * 0.98, 2), close=_dec(v, 2),
        )
    raise ValueError(data_type)


def generate(n: int, base_ms: int | None = None, seed: int = 7, depth: int = 20, first_index: int = 0) -> list[Any]:
    """``n`` records in the MIX proportions, interleaved deterministically, every type present.

    Identities derive from the per-type index: runs meant to add new records use another ``first_index``.
    """
    base = base_ms if base_ms is not None else recent_base_ms()
    rng = random.Random(seed)
    total = sum(w for _, w in MIX)
    counts = {t: max(1, n * w // total) for t, w in MIX}
    counts["trade"] += n - sum(counts.values())
    order = [t for t, c in counts.items() for _ in range(c)]
    rng.shuffle(order)
    seen: Counter[str] = Counter({t: first_index for t in counts})
    out = []
    for t in order:
        out.append(mix_record(t, seen[t], base, rng, depth))
        seen[t] += 1
    return out


def recent_base_ms() -> int:
    """Two hours ago, on the hour: recent enough for the hot tables' TTL on received_at."""
    return (int(time.time()) // 3600 - 2) * 3_600_000


def identity_string(record: Any) -> str:
    """The identity as ``table_identities`` renders it (decimals without trailing zeros, as ClickHouse prints)."""
    rt = RECORD_TYPES[records.data_type_of(record)]
    parts = []
    for name in rt.identity:
        v = getattr(record, name)
        if rt.column(name).wire.value == "decimal":
            v = format(Decimal(v).normalize(), "f")
        parts.append(str(v))
    return rt.name + ":" + "|".join(parts)


def expected_by_type(recs: Iterable[Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {t: set() for t in RECORD_TYPES}
    for r in recs:
        out[records.data_type_of(r)].add(identity_string(r))
    return out


async def publish(nc: NATS, recs: Sequence[Any], *, rate: float | None = None, flush_timeout: float = 60) -> None:
    """Publish every record once (Nats-Msg-Id = identity); ``rate`` spreads them over time (records/s)."""
    pub = await JetStreamPublisher(nc, max_inflight=2048).start()
    chunk = 200
    start = time.monotonic()
    for k in range(0, len(recs), chunk):
        for r in recs[k:k + chunk]:
            while not pub.submit(records.subject(r), records.encode(r), records.msg_id(r)):
                await asyncio.sleep(0.01)
        if rate:
            ahead = (k + chunk) / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        else:
            await asyncio.sleep(0)
    assert await pub.flush(flush_timeout), "publisher did not get every PubAck"
    await pub.close()
    assert pub.stats.failed == 0 and pub.stats.dropped == 0


def table_identities(store: Store, database: str, data_type: str) -> list[str]:
    """Every row's identity as a Nats-Msg-Id string, WITHOUT FINAL (duplicates stay visible)."""
    rt = RECORD_TYPES[data_type]
    parts = []
    for name in rt.identity:
        col = rt.column(name)
        if col.wire.value == "time_ms":
            parts.append(f"toString(toUnixTimestamp64Milli(`{name}`))")
        else:
            parts.append(f"toString(`{name}`)")
    expr = "concat('" + data_type + ":', " + ", '|', ".join(parts) + ")"
    return [str(r[0]) for r in store.query_rows(f"SELECT {expr} FROM `{database}`.`{data_type}`")]


def duplicate_count(store: Store, database: str, data_type: str) -> int:
    rt = RECORD_TYPES[data_type]
    ident = identity_sql(rt)
    return int(store.query_value(
        f"SELECT count() FROM (SELECT {ident} FROM `{database}`.`{data_type}` GROUP BY {ident} HAVING count() > 1)"
    ) or 0)


def writer_cmd(settings: Settings, port: int, extra: dict[str, Any]) -> list[str]:
    """``marketprism write`` as a subprocess command line for ``settings`` (external NATS, health on ``port``,
    JSON logs at INFO); ``extra`` config keys are added or override."""
    sets = {
        "data_dir": settings.data_dir,
        "storage.path": str(settings.embedded_store_path),
        "nats.url": settings.nats.url,
        "nats.embedded": "false",
        "writer.health_port": port,
        "log_format": "json",
        "log_level": "INFO",
        **extra,
    }
    cmd = [sys.executable, "-m", "marketprism_dagster.cli", "write", "--config", str(REPO / "config/marketprism.yaml")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def get_health(port: int) -> dict[str, Any] | None:
    """The JSON of ``GET http://127.0.0.1:<port>/health`` (also on an HTTP error status); None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())
    except OSError:
        return None


@contextlib.asynccontextmanager
async def writer_running(settings: Settings) -> AsyncIterator[WriterService]:
    """A real writer in this event loop, started before the body and stopped after it."""
    stop = asyncio.Event()
    started: asyncio.Future[WriterService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_writer(settings, stop=stop, on_started=started.set_result))
    try:
        yield await asyncio.wait_for(started, 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def committed(nc: NATS, writer: WriterService, streams: Sequence[str] = ("MARKET_DATA",)) -> bool:
    """Whether the writer has committed every message the streams hold."""
    js = nc.jetstream()
    for s in streams:
        if writer.streams[s].buffer.watermark < (await js.stream_info(s)).state.last_seq:
            return False
    return True


def hot_rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the embedded store (opened for this query only, so a writer may hold it between)."""
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        return [tuple(r) for r in store.query_rows(sql)]
    finally:
        store.close()
