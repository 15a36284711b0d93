"""/health: coverage per (data type, market) with age and status, plus feed connectivity.

The same JSON is written atomically to ``data_dir/health/collector-<shard>.json`` every few
seconds so Dagster checks can read it without HTTP (``read_health``, ``liquidation_feeds_connected``).
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


def _market_feeds_connected(state: CollectorState, market: str, data_type: str) -> tuple[bool, int | None]:
    """Whether every feed of ``market`` that carries ``data_type`` is connected, and its newest message."""
    feeds = [
        f for f in state.feeds.values() if f.market == market and (not f.data_types or data_type in f.data_types)
    ]
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
    data_dir: str | Path, shard: str = "main", *, max_age_s: float = 30.0, now: float | None = None
) -> dict[str, bool]:
    """market -> True while the collector reports all its liquidation-carrying feeds connected.

    A report older than ``max_age_s`` (collector dead or stuck) counts as disconnected.
    """
    body = read_health(data_dir, shard)
    if body is None:
        return {}
    now = time.time() if now is None else now
    fresh = (now * 1000 - float(body.get("written_at", 0))) <= max_age_s * 1000
    return {m: bool(fresh and v.get("connected")) for m, v in body.get("liquidation_feeds", {}).items()}
