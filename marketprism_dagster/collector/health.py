"""/health: coverage per (data type, market) with age and status, plus feed connectivity.

The same JSON is written atomically to ``data_dir/health/collector-<shard>.json`` every few
seconds so Dagster checks can read it without HTTP (``read_health``, ``liquidation_feeds_connected``).
Each shard listens on its own ports (``Settings.shard_ports``: base + shard index); the file also
publishes the ports the shard bound (``http``), which is how readers find a shard started on port 0.
Readers cover every shard: ``shard_health_urls`` lists them, ``liquidation_feeds_connected`` merges them.
Liquidations are rare: their coverage is "ok" while every WebSocket feed of the market is
connected (the integrity rule: an empty liquidation window passes only then).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from marketprism_dagster.collector.state import CollectorState, now_ms
from marketprism_dagster.config import Settings

OK, STALE, MISSING, WAITING = "ok", "stale", "missing", "waiting"


def health_path(data_dir: str | Path, shard: str) -> Path:
    return Path(data_dir) / "health" / f"collector-{shard}.json"


def bound_ports(host: str, health_port: int | None, metrics_port: int | None) -> dict[str, Any]:
    """What the health file publishes about the shard's HTTP servers."""
    return {"host": host, "health_port": health_port, "metrics_port": metrics_port}


def shard_health_urls(settings: Settings, host: str = "127.0.0.1") -> dict[str, str | None]:
    """shard -> its /health URL for every configured shard: the configured port (base + shard index), or for
    port 0 the port the shard published in its health file (None while it has published none)."""
    out: dict[str, str | None] = {}
    for shard in settings.collector.shards:
        port: int | None = settings.shard_ports(shard)[0]
        if not port:
            body = read_health(settings.data_dir, shard) or {}
            port = (body.get("http") or {}).get("health_port") if body.get("status") != "stopped" else None
        out[shard] = f"http://{host}:{port}/health" if port else None
    return out


def _market_feeds_connected(state: CollectorState, market: str, data_type: str) -> tuple[bool, int | None]:
    """Whether every feed of ``market`` that carries ``data_type`` is connected, and its newest message."""
    feeds = [f for f in state.feeds.values() if f.market == market and (not f.data_types or data_type in f.data_types)]
    if not feeds:
        return False, None
    last = [f.last_message_ts for f in feeds if f.last_message_ts]
    return all(f.connected for f in feeds), (max(last) if last else None)


def health_report(state: CollectorState, settings: Settings, now: int | None = None) -> tuple[dict[str, Any], int]:
    """The /health body and its HTTP status (200 healthy/degraded or inside the grace period, else 503)."""
    now = now_ms() if now is None else now
    in_grace = state.uptime_s < settings.collector.grace_s
    coverage: dict[str, dict[str, dict[str, Any]]] = {}
    reasons: list[str] = []
    for market, ms in state.markets.items():
        for data_type in ms.data_types:
            last = state.last_success.get((data_type, market))
            age = None if last is None else round(max(0, now - last) / 1000, 3)
            limit = settings.window_rules[data_type].health_s
            if data_type == "liquidation":
                connected, _ = _market_feeds_connected(state, market, "liquidation")
                status = OK if connected else (WAITING if in_grace else STALE)
            elif last is None:
                status = WAITING if in_grace else MISSING
            else:
                status = OK if age is not None and age <= limit else STALE
            if status in (STALE, MISSING):
                what = (
                    "feeds disconnected"
                    if data_type == "liquidation"
                    else ("no data yet" if status == MISSING else f"newest {age:.0f} s old > {limit} s")
                )
                reasons.append(f"{data_type}/{market}: {what}")
            coverage.setdefault(data_type, {})[market] = {
                "last_success_ts": last,
                "age_seconds": age,
                "status": status,
                "threshold_seconds": limit,
            }
    feeds = {
        key: {
            "market": f.market,
            "connected": f.connected,
            "last_message_ts": f.last_message_ts,
            "connects": f.connects,
            "messages": f.messages,
        }
        for key, f in state.feeds.items()
    }
    liquidation_feeds = {}
    for market, ms in state.markets.items():
        if "liquidation" in ms.data_types:
            connected, last = _market_feeds_connected(state, market, "liquidation")
            liquidation_feeds[market] = {"connected": connected, "last_message_ts": last}
    disconnected = sorted(k for k, f in state.feeds.items() if not f.connected)
    degraded: list[str] = []
    if not state.nats_connected:
        degraded.append("NATS disconnected: records are buffered (collector.publish_buffer)")
    if disconnected:
        degraded.append(f"feeds reconnecting: {', '.join(disconnected)}")
    if reasons:
        status = "unhealthy"
    elif degraded:
        status = "degraded"
    else:
        status = "healthy"
    body: dict[str, Any] = {
        "status": status,
        "timestamp": now,
        "uptime_seconds": round(state.uptime_s, 3),
        "shard": state.shard,
        "checks": {
            "nats": {"connected": state.nats_connected},
            "feeds": {"connected": len(state.feeds) - len(disconnected), "total": len(state.feeds)},
            "instruments": {m: ms.instruments_loaded for m, ms in state.markets.items()},
        },
        "coverage": coverage,
        "feeds": feeds,
        "liquidation_feeds": liquidation_feeds,
        "reasons": reasons + degraded,
    }
    if in_grace:
        body["grace"] = {
            "seconds": settings.collector.grace_s,
            "remaining_seconds": round(settings.collector.grace_s - state.uptime_s, 3),
        }
    code = 200 if status != "unhealthy" or in_grace else 503
    return body, code


def write_health_file(path: Path, body: dict[str, Any]) -> None:
    """Atomic: write a temp file beside it, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**body, "written_at": now_ms(), "pid": os.getpid()}))
    os.replace(tmp, path)


def read_health(data_dir: str | Path, shard: str = "main") -> dict[str, Any] | None:
    """The collector's last health report, or None when it never wrote one (or the file is unreadable)."""
    try:
        return json.loads(health_path(data_dir, shard).read_text())
    except (OSError, ValueError):
        return None


def liquidation_feeds_connected(
    data_dir: str | Path, shard: str | None = None, *, max_age_s: float = 30.0, now: float | None = None
) -> dict[str, bool]:
    """market -> True while the collector reports all its liquidation-carrying feeds connected.

    Every shard's health file is read (``shard`` selects one). A report older than ``max_age_s``
    (collector dead or stuck) counts as disconnected.
    """
    if shard is None:
        shards = sorted(
            p.name[len("collector-") : -len(".json")] for p in Path(data_dir, "health").glob("collector-*.json")
        )
    else:
        shards = [shard]
    now = time.time() if now is None else now
    out: dict[str, bool] = {}
    for name in shards:
        body = read_health(data_dir, name)
        if body is None:
            continue
        fresh = (now * 1000 - float(body.get("written_at", 0))) <= max_age_s * 1000
        for m, v in body.get("liquidation_feeds", {}).items():
            out[m] = out.get(m, True) and bool(fresh and v.get("connected"))
    return out
