"""/health: coverage per (data type, market) with age and status, plus feed connectivity.

Written here (``health_report``) and read here (``collector_feed_status``): the integrity rules ask
every shard's ``/health`` over HTTP, the one way a feed's health is read. Each shard listens on its
own ports (``Settings.shard_ports``: base + shard index). The same JSON is also written atomically to
``data_dir/health/collector-<shard>.json``: it publishes the ports the shard bound (``http``), which is
how ``shard_health_urls`` finds a shard started on port 0, and its last status after it stopped.

A sparse data type (``RecordType.sparse``: events are rare) is not judged by the age of its newest
record: its coverage is "ok" while every feed of the market that carries it is connected (the
integrity rule: an empty window of a sparse type passes only then).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketprism_dagster.collector.state import CollectorState
from marketprism_dagster.config import Settings
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.timeutil import now_ms

OK, STALE, MISSING, WAITING = "ok", "stale", "missing", "waiting"
HEALTHY_FEED_STATES = frozenset({"healthy", "ok", "connected", "idle"})


def health_path(data_dir: str | Path, shard: str) -> Path:
    return Path(data_dir) / "health" / f"collector-{shard}.json"


def bound_ports(host: str, health_port: int | None, metrics_port: int | None) -> dict[str, Any]:
    """What the health file publishes about the shard's HTTP servers."""
    return {"host": host, "health_port": health_port, "metrics_port": metrics_port}


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def shard_health_urls(settings: Settings) -> dict[str, str | None]:
    """shard -> its /health URL for every configured shard: ``collector.http_host`` (loopback when it binds
    every address) and the configured port (base + shard index), or for port 0 the port the shard published
    in its health file (None while it has published none)."""
    bind = settings.collector.http_host
    host = "127.0.0.1" if bind in WILDCARD_HOSTS else f"[{bind}]" if ":" in bind else bind
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
            sparse = RECORD_TYPES[data_type].sparse
            if sparse:
                connected, _ = _market_feeds_connected(state, market, data_type)
                status = OK if connected else (WAITING if in_grace else STALE)
            elif last is None:
                status = WAITING if in_grace else MISSING
            else:
                status = OK if age is not None and age <= limit else STALE
            if status in (STALE, MISSING):
                what = (
                    "feeds disconnected"
                    if sparse
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
        report: dict[str, Any] = json.loads(health_path(data_dir, shard).read_text())
        return report
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- reading: the one way feed health is read


@dataclass(frozen=True)
class FeedStatus:
    """What the collectors' /health says about one data type's feeds."""

    healthy: bool
    detail: str


def collector_feed_status(settings: Settings, data_type: str, timeout_s: float = 2.0) -> FeedStatus | None:
    """Ask every collector shard's ``/health`` (127.0.0.1, its own port: ``Settings.shard_ports``) about
    ``data_type``'s feeds, and merge: healthy only while every shard that carries the type says so.

    A shard that carries the type and does not answer makes the status unhealthy (named in the detail);
    None when no shard answers for it: nobody vouches for an empty window then.
    """
    urls = shard_health_urls(settings)
    answers: list[FeedStatus] = []
    silent: list[str] = []
    for shard, url in urls.items():
        carries = any(data_type in m.data_types for m in settings.shard_markets(shard).values())
        if not carries:
            continue
        status = _shard_feed_status(url, data_type, timeout_s) if url else None
        if status is None:
            silent.append(shard)
        else:
            answers.append(status if len(urls) == 1 else FeedStatus(status.healthy, f"{shard}: {status.detail}"))
    if not answers:
        return None
    detail = "; ".join([a.detail for a in answers] + [f"{shard}: collector did not answer" for shard in silent])
    return FeedStatus(healthy=not silent and all(a.healthy for a in answers), detail=detail)


def _shard_feed_status(url: str, data_type: str, timeout_s: float) -> FeedStatus | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:  # a 503 (unhealthy) still carries the JSON body
        raw = exc.read()
    except (OSError, ValueError):  # refused, timed out, unreachable
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return feed_status_from_health(body, data_type) if isinstance(body, dict) else None


def feed_status_from_health(body: dict[str, Any], data_type: str) -> FeedStatus | None:
    """The /health body's verdict on ``data_type``: healthy while every market's coverage of it is."""
    coverage = (body.get("coverage") or {}).get(data_type)
    if not isinstance(coverage, dict) or not coverage:
        return None
    states = {market: str((v or {}).get("status", "unknown")) for market, v in coverage.items()}
    bad = {m: s for m, s in states.items() if s not in HEALTHY_FEED_STATES}
    detail = ", ".join(f"{m}={s}" for m, s in sorted(states.items()))
    return FeedStatus(healthy=not bad, detail=detail)
