"""Configuration: one YAML validated by pydantic, with layered overrides.

Precedence (highest first): CLI ``--set key.path=value`` and flags > environment >
YAML file > model defaults.  ``config show`` reports where every effective value came from.

Environment variables:

* ``MARKETPRISM_CONFIG`` selects the YAML file (default ``config/marketprism.yaml``);
* ``MARKETPRISM__SECTION__KEY=value`` sets any key path (``__`` separates levels), e.g.
  ``MARKETPRISM__STORAGE__BACKEND=clickhouse``;
* the seeds' names: ``MARKETPRISM_NATS_URL`` (beats ``NATS_URL``), ``HEALTH_CHECK_PORT``,
  ``METRICS_PORT``, ``HEALTH_GRACE_SECONDS``, ``LOG_LEVEL``, ``CLICKHOUSE_URL``,
  ``CLICKHOUSE_USER``, ``CLICKHOUSE_PASSWORD``, ``ALERT_WEBHOOK_URL`` and the supervisor's
  ``AUTO_RESTART_ON_HEALTH_CRITICAL``, ``COLLECTOR_MEMORY_MB``, ``COLLECTOR_CPU_THRESHOLD``,
  ``COLLECTOR_MON_INTERVAL``, ``COLLECTOR_MAX_UPTIME_H``, ``COLLECTOR_RESTART_COOLDOWN``,
  ``ALLOW_MULTIPLE``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from marketprism_dagster.logs import MASK, mask_url, register_secrets
from marketprism_dagster.records import BOOK_TYPES, DATA_TYPES, RECORD_TYPES, stream_subjects
from marketprism_dagster.venues import registry

DEFAULT_CONFIG_PATH = Path("config/marketprism.yaml")


def _known_data_type(value: str) -> str:
    if value not in RECORD_TYPES:
        raise ValueError(f"unknown data type {value!r}; allowed: {list(DATA_TYPES)}")
    return value


DataType = Annotated[str, AfterValidator(_known_data_type)]  # a name in records.RECORD_TYPES (the one list)

MarketType = Literal["spot", "perpetual", "options"]
# Venues, what each (venue, market_type) can deliver, its snapshot depths and its default markets are
# the venue modules' declarations (venues/<name>.py), read through ``venues.registry``.


class ConfigError(Exception):
    """A configuration problem, worded for the user: key path, bad value, what is allowed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class MarketConfig(_Model):
    enabled: bool = True
    venue: str
    market_type: MarketType
    symbols: list[str] = Field(min_length=1)
    data_types: list[DataType]
    rest_url: str
    ws_url: str
    # REST poll periods (seconds) for types with no stream on this venue.
    poll_interval_s: float = Field(default=60.0, gt=0)
    lsr_period: Literal["5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"] = "5m"
    instruments_refresh_s: float = Field(default=3600.0, gt=0)

    @field_validator("venue")
    @classmethod
    def _known_venue(cls, v: str) -> str:
        registry.adapter_class(v)  # ValueError naming the registered venues
        return v

    @model_validator(mode="after")
    def _supported(self) -> MarketConfig:
        allowed = registry.offered(self.venue, self.market_type)
        if allowed is None:
            raise ValueError(
                f"venue {self.venue!r} has no market_type {self.market_type!r}; allowed: "
                + ", ".join(registry.market_types())
            )
        bad = [d for d in self.data_types if d not in allowed]
        if bad:
            raise ValueError(
                f"data_types {bad} are not offered by {self.venue} {self.market_type}; allowed: {list(allowed)}"
            )
        return self

    @field_validator("symbols")
    @classmethod
    def _symbols_upper(cls, v: list[str]) -> list[str]:
        return [s.strip().upper() for s in v]


def _default_markets() -> dict[str, MarketConfig]:
    """Every venue's declared default markets (``VenueAdapter.default_markets``)."""
    return {market_id: MarketConfig(**entry) for market_id, entry in registry.default_markets().items()}


GIB = 1024**3


class StreamConfig(_Model):
    subjects: list[str] = Field(
        default_factory=list, description="default: '<type>.>' for each data type whose record type names this stream"
    )
    max_bytes: int = Field(gt=0)
    max_age_s: int = Field(gt=0)
    duplicate_window_s: int = Field(gt=0)
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(default=1, ge=1, le=5)
    max_ack_pending: int = Field(default=20_000, gt=0)


def _default_streams() -> dict[str, StreamConfig]:
    return {
        "MARKET_DATA": StreamConfig(
            subjects=stream_subjects("MARKET_DATA"),
            max_bytes=2 * GIB,
            max_age_s=48 * 3600,
            duplicate_window_s=120,
            max_ack_pending=20_000,  # DESIGN said 2000: one batch then fills the window (see README)
        ),
        "ORDERBOOK_SNAP": StreamConfig(
            subjects=stream_subjects("ORDERBOOK_SNAP"),
            max_bytes=5 * GIB,
            max_age_s=24 * 3600,
            duplicate_window_s=60,
            max_ack_pending=5000,
        ),
    }


class NatsConfig(_Model):
    url: str = "nats://127.0.0.1:4222"
    embedded: bool = Field(default=True, description="start nats-server from the wheel if url does not answer")
    store_dir: str | None = None  # default: <data_dir>/nats
    ack_wait_s: int = Field(default=60, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError("must start with nats://, tls://, ws:// or wss://, e.g. nats://127.0.0.1:4222")
        return v


class StorageConfig(_Model):
    backend: Literal["embedded", "clickhouse"] = "embedded"
    path: str | None = None  # embedded: default <data_dir>/clickhouse
    url: str = "http://127.0.0.1:8123"
    user: str = "default"
    password: SecretStr = SecretStr("")
    hot_database: str = "marketprism_hot"
    cold_database: str = "marketprism_cold"
    ledger_database: str = "marketprism_meta"
    hot_ttl_days: int = Field(default=3, gt=0)
    cold_ttl_days: int = Field(default=3650, gt=0)
    lock_timeout_s: float = Field(default=30.0, gt=0)


class WindowRule(_Model):
    window_s: int = Field(gt=0, description="rows must exist within this window")
    health_s: int = Field(gt=0, description="collector coverage older than this is unhealthy")
    lag_warn_s: int = Field(gt=0)
    lag_error_s: int = Field(gt=0)


def _rule(window: int, health: int) -> WindowRule:
    return WindowRule(window_s=window, health_s=health, lag_warn_s=window, lag_error_s=2 * window)


def _default_window_rules() -> dict[str, WindowRule]:
    """Each record type's own window and health threshold (records.RecordType.window_s / health_s)."""
    return {t: _rule(rt.window_s, rt.health_s) for t, rt in RECORD_TYPES.items()}


class OrderBookConfig(_Model):
    depth: int = Field(default=400, ge=1, le=5000)
    cadence_ms: int = Field(default=1000, ge=0, description="0 = publish every update")
    snapshot_limit: int = Field(
        default=1000,
        ge=5,
        le=5000,
        description="REST snapshot depth; each venue accepts its own values (its markets' snapshot_depth, "
        "checked at load)",
    )
    max_levels: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="levels kept per book side (twice the largest snapshot_limit); a book that grows beyond it "
        "is dropped and resynchronized",
    )

    @model_validator(mode="after")
    def _levels_fit(self) -> OrderBookConfig:
        if self.max_levels <= max(self.depth, self.snapshot_limit):
            raise ValueError(
                f"orderbook.max_levels ({self.max_levels}) must exceed orderbook.depth ({self.depth}) and "
                f"orderbook.snapshot_limit ({self.snapshot_limit}): a fresh book would be dropped at once"
            )
        return self


class CollectorConfig(_Model):
    health_port: int = Field(default=8087, ge=0, le=65535)
    metrics_port: int = Field(default=9093, ge=0, le=65535)
    grace_s: int = Field(default=120, ge=0)
    publish_buffer: int = Field(default=200_000, gt=0, description="records held while NATS is down")
    max_inflight_acks: int = Field(default=4096, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    reconnect_initial_s: float = Field(default=0.5, gt=0, description="first reconnect delay, doubling to the max")
    ws_heartbeat_s: float = Field(default=20.0, gt=0, description="WS protocol ping interval; no pong: reconnect")
    ws_max_msg_bytes: int = Field(
        default=4 * 1024**2, ge=64 * 1024, description="largest WebSocket frame accepted; a larger one reconnects"
    )
    rest_max_body_bytes: int = Field(
        default=64 * 1024**2, ge=64 * 1024, description="largest REST body read; a larger answer fails the request"
    )
    rest_timeout_s: float = Field(default=10.0, gt=0)
    ack_timeout_s: float = Field(default=5.0, gt=0, description="JetStream PubAck wait before resending (same Msg-Id)")
    publish_retry_s: float = Field(
        default=120.0, gt=0, description="a record JetStream answers with errors is retried this long (leader election)"
    )
    shutdown_flush_s: float = Field(
        default=10.0, ge=0, description="at stop, wait this long for NATS to take the buffer; the rest is spilled"
    )
    recent_records: int = Field(default=100, ge=1, le=1000, description="records kept per (market, type) for the API")
    http_host: str = Field(default="127.0.0.1", description="bind address of /health, /api/v1 and /metrics")
    shards: dict[str, list[str]] = Field(
        default_factory=lambda: {"main": list[str]()},
        description="shard name -> market ids it collects (empty = all enabled markets)",
    )
    allow_multiple: bool = False


class WriterConfig(_Model):
    health_port: int = Field(default=8085, ge=0, le=65535)
    batch_size: int = Field(default=10_000, gt=0)
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    linger_ms: int = Field(
        default=200, ge=0, le=10_000, description="a range not yet full waits this long for more messages"
    )
    linger_max_ms: int = Field(
        default=1000, ge=0, le=10_000,
        description="a range under linger_min_messages after linger_ms keeps waiting up to this long (low rates: "
        "a commit a second per stream, each a statement per data type; bounds the added delay)",
    )
    linger_min_messages: int = Field(
        default=500, ge=0, description="a range this large is committed once linger_ms has passed"
    )
    max_backoff_s: float = Field(default=30.0, gt=0)
    dead_letter_stream: str = "DEAD_LETTER"
    durable_prefix: str = "marketprism_hot_writer"
    health_host: str = Field(default="127.0.0.1", description="bind address of /health and /metrics")
    batch_max_bytes: int = Field(default=64 * 1024**2, gt=0, description="fetch no more payload bytes per batch")
    monitor_interval_s: float = Field(
        default=5.0, gt=0, description="lag refresh and heartbeat period (4 JetStream API requests each)")


class SupervisorConfig(_Model):
    auto_restart_on_health_critical: bool = False
    memory_mb: int = Field(default=800, gt=0)
    writer_memory_mb: int = Field(
        default=1024, gt=0,
        description="the hot writer is restarted (drained, then relaunched) above this RSS; its embedded chDB engine "
        "grows with every reopen of the store",
    )
    cpu_threshold: float = Field(default=90.0, gt=0, le=100)
    mon_interval_s: int = Field(default=60, gt=0)
    max_uptime_h: float = Field(default=24.0, gt=0)
    restart_cooldown_s: float = Field(default=5.0, ge=0)
    heartbeat_stale_s: int = Field(default=90, gt=0)
    handover_timeout_s: float = Field(
        default=300.0, gt=0, description="a planned restart stops the old run after this long, successor ready or not"
    )


class AlertsConfig(_Model):
    webhook_url: str | None = None


class SealConfig(_Model):
    grace_s: int = Field(default=300, ge=0, description="an hour is sealed no earlier than its end + grace")
    writer_slack_s: int = Field(
        default=30, ge=0, description="a seal needs every message stored more than this long ago committed"
    )
    retries: int = Field(default=3, ge=0, description="Dagster retries of a refused seal (writer behind)")
    retry_delay_s: int = Field(default=120, ge=0)
    source_gap_grace_s: int = Field(
        default=600,
        ge=0,
        description="the source_gaps check fails (ERROR) for a refillable source gap still open this long after "
        "the collector detected it (the automatic refill normally repairs it within seconds)",
    )
    start_date: date | None = Field(
        default=None,
        description="first day of the hot (hourly) and cold (daily) partitions; unset: the hour this deployment "
        "first started, recorded once in <data_dir>/partitions-start.json (fixed from then on, never the clock)",
    )


class Settings(_Model):
    environment: Literal["development", "production", "test"] = "development"
    data_dir: str = ".marketprism"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    markets: dict[str, MarketConfig] = Field(default_factory=_default_markets)
    streams: dict[str, StreamConfig] = Field(default_factory=_default_streams)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    window_rules: dict[str, WindowRule] = Field(default_factory=_default_window_rules)
    orderbook: OrderBookConfig = Field(default_factory=OrderBookConfig)
    collector: CollectorConfig = Field(default_factory=CollectorConfig)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    seal: SealConfig = Field(default_factory=SealConfig)

    @field_validator("markets")
    @classmethod
    def _market_ids(cls, v: dict[str, MarketConfig]) -> dict[str, MarketConfig]:
        for name in v:
            if not name.replace("_", "").isalnum() or name != name.lower():
                raise ValueError(f"market id {name!r} must be lower_snake_case")
        return v

    @field_validator("streams")
    @classmethod
    def _stream_subjects(cls, v: dict[str, StreamConfig]) -> dict[str, StreamConfig]:
        """A stream without ``subjects`` takes those of the data types whose record type names it."""
        out: dict[str, StreamConfig] = {}
        for name, stream in v.items():
            if not stream.subjects:
                derived = stream_subjects(name)
                if not derived:
                    raise ValueError(
                        f"streams.{name} has no subjects and no data type is stored in it; "
                        f"set streams.{name}.subjects, e.g. [trade.>]"
                    )
                stream = stream.model_copy(update={"subjects": derived})
            out[name] = stream
        return out

    @field_validator("window_rules")
    @classmethod
    def _rule_keys(cls, v: dict[str, WindowRule]) -> dict[str, WindowRule]:
        unknown = sorted(set(v) - set(DATA_TYPES))
        if unknown:
            raise ValueError(f"unknown data types {unknown}; allowed: {list(DATA_TYPES)}")
        defaults = _default_window_rules()
        return {t: v.get(t, defaults[t]) for t in DATA_TYPES}

    @model_validator(mode="after")
    def _streams_cover_types(self) -> Settings:
        for t in DATA_TYPES:
            if self.stream_for(t) is None:
                raise ValueError(f"no stream captures subject '{t}.>'; add it to a stream's subjects under 'streams'")
        self._snapshot_limit_accepted()
        for shard, markets in self.collector.shards.items():
            unknown = [m for m in markets if m not in self.markets]
            if unknown:
                raise ValueError(
                    f"collector.shards.{shard} names unknown markets {unknown}; allowed: {sorted(self.markets)}"
                )
        self._shard_ports_distinct()
        return self

    def _shard_ports_distinct(self) -> None:
        """Every shard's ports (base + shard index) are distinct: all shards may run on one host."""
        owner: dict[int, str] = {}
        for index, shard in enumerate(self.collector.shards):
            health, metrics = self.shard_ports(shard)
            for port, what in ((health, "health"), (metrics, "metrics")):
                if not port or (what == "metrics" and metrics == health):
                    continue  # 0: any free port; health == metrics: one server for both
                mine = f"shard {shard}'s {what} port"
                if port > 65535:
                    raise ValueError(
                        f"{mine} would be {port} (collector.{what}_port + shard index): lower collector.{what}_port"
                    )
                if port in owner:
                    raise ValueError(
                        f"{mine} {port} (collector.{what}_port + shard index {index}) is already {owner[port]}; "
                        "each shard uses collector.health_port / metrics_port + its index in collector.shards, so "
                        f"leave {len(self.collector.shards)} ports free from each (or set them to 0: any free port)"
                    )
                owner[port] = mine

    def _snapshot_limit_accepted(self) -> None:
        """orderbook.snapshot_limit must be a depth every enabled order book market's venue accepts."""
        limit = self.orderbook.snapshot_limit
        for name, m in self.markets.items():
            market = registry.market_spec(m.venue, m.market_type)
            spec = market.snapshot_depth if market is not None else None
            if not m.enabled or BOOK_TYPES.isdisjoint(m.data_types) or spec is None or spec.accepts(limit):
                continue
            raise ValueError(
                f"orderbook.snapshot_limit {limit} is not accepted by market {name} ({m.venue} {m.market_type}, "
                f"{spec.request}); allowed: {spec.allowed()}. Set orderbook.snapshot_limit to one of them "
                f"(e.g. {spec.nearest(limit)}) or disable markets.{name}"
            )

    # ---------------------------------------------------------------- derived values

    def stream_for(self, data_type: str) -> str | None:
        for name, s in self.streams.items():
            for subj in s.subjects:
                if subj in (f"{data_type}.>", ">") or subj.startswith(f"{data_type}."):
                    return name
        return None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def nats_store_dir(self) -> Path:
        return Path(self.nats.store_dir) if self.nats.store_dir else self.data_path / "nats"

    @property
    def embedded_store_path(self) -> Path:
        return Path(self.storage.path) if self.storage.path else self.data_path / "clickhouse"

    def enabled_markets(self) -> dict[str, MarketConfig]:
        return {k: m for k, m in self.markets.items() if m.enabled}

    def shard_markets(self, shard: str) -> dict[str, MarketConfig]:
        if shard not in self.collector.shards:
            raise ConfigError(
                f"unknown shard {shard!r}; configured shards: {sorted(self.collector.shards)} "
                "(collector.shards in the YAML)"
            )
        names = self.collector.shards[shard] or list(self.enabled_markets())
        return {n: self.markets[n] for n in names if self.markets[n].enabled}

    def shard_ports(self, shard: str) -> tuple[int, int]:
        """(health, metrics) port of one collector shard: collector.health_port / metrics_port plus the shard's
        index in collector.shards, so shards on one host never share a port. 0 stays 0 (any free port; the
        bound ports are published in the shard's health file, ``collector.health.bound_ports``)."""
        names = list(self.collector.shards)
        index = names.index(shard) if shard in names else 0
        c = self.collector
        return (c.health_port + index if c.health_port else 0, c.metrics_port + index if c.metrics_port else 0)


# ---------------------------------------------------------------- loading with provenance

ENV_ALIASES: tuple[tuple[str, str], ...] = (
    # (env var, key path); earlier entries win over later ones for the same path
    ("MARKETPRISM_NATS_URL", "nats.url"),
    ("NATS_URL", "nats.url"),
    ("HEALTH_CHECK_PORT", "collector.health_port"),
    ("METRICS_PORT", "collector.metrics_port"),
    ("HEALTH_GRACE_SECONDS", "collector.grace_s"),
    ("LOG_LEVEL", "log_level"),
    ("CLICKHOUSE_URL", "storage.url"),
    ("CLICKHOUSE_USER", "storage.user"),
    ("CLICKHOUSE_PASSWORD", "storage.password"),
    ("ALERT_WEBHOOK_URL", "alerts.webhook_url"),
    ("AUTO_RESTART_ON_HEALTH_CRITICAL", "supervisor.auto_restart_on_health_critical"),
    ("COLLECTOR_MEMORY_MB", "supervisor.memory_mb"),
    ("COLLECTOR_CPU_THRESHOLD", "supervisor.cpu_threshold"),
    ("COLLECTOR_MON_INTERVAL", "supervisor.mon_interval_s"),
    ("COLLECTOR_MAX_UPTIME_H", "supervisor.max_uptime_h"),
    ("COLLECTOR_RESTART_COOLDOWN", "supervisor.restart_cooldown_s"),
    ("ALLOW_MULTIPLE", "collector.allow_multiple"),
)

GENERIC_ENV_PREFIX = "MARKETPRISM__"
# The launcher's (``marketprism dev | demo``) CLI overrides as one JSON object (key.path -> value), read at CLI
# precedence by every process it starts (code servers, sensors, service runs): all see the same settings.
FORWARDED_ENV = "MARKETPRISM_OVERRIDES"
FORWARDED_SOURCE = f"cli (forwarded in {FORWARDED_ENV})"
SECRET_PATHS = frozenset({"storage.password"})
# shown only through logs.mask_url: a password or token in the user part, a webhook's path (its token)
URL_PATHS = frozenset({"nats.url", "storage.url", "alerts.webhook_url"})


def shown_value(key: str, value: Any) -> str:
    """A setting's value as it may be printed or logged: secrets masked, URLs through ``mask_url``."""
    if key in SECRET_PATHS:
        return MASK if value else ""
    if key in URL_PATHS and isinstance(value, str):
        return mask_url(value)
    return _show(value)


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret string in ``settings``: passwords, webhook URLs, URLs that carry credentials."""
    out = [settings.storage.password.get_secret_value(), settings.alerts.webhook_url or ""]
    for url in (settings.nats.url, settings.storage.url):
        if "@" in url:
            out.append(url)
            userinfo = url.split("://", 1)[-1].split("@", 1)[0]
            out.append(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
    return out


class LoadedConfig:
    """Validated settings plus where each value came from."""

    def __init__(
        self,
        settings: Settings,
        sources: dict[str, str],
        path: Path | None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.path = path
        self.overrides: dict[str, Any] = dict(overrides or {})  # CLI-level values (forwarded + explicit), raw

    def forwarding_env(self, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Environment for the processes a launcher starts, so they load exactly these settings.

        The CLI overrides (plus ``extra``) travel in ``MARKETPRISM_OVERRIDES``; path settings are made
        absolute, because the started processes may run in another working directory; the YAML file is
        passed as an absolute ``MARKETPRISM_CONFIG``."""
        values: dict[str, Any] = {**self.overrides, "data_dir": str(self.settings.data_path.resolve())}
        if self.settings.storage.path:
            values["storage.path"] = str(Path(self.settings.storage.path).resolve())
        if self.settings.nats.store_dir:
            values["nats.store_dir"] = str(Path(self.settings.nats.store_dir).resolve())
        values.update(extra or {})
        env = {FORWARDED_ENV: json.dumps(values, default=str)}
        if self.path is not None:
            env["MARKETPRISM_CONFIG"] = str(self.path.resolve())
        return env

    def source_of(self, key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            src = self.sources.get(".".join(parts[:i]))
            if src:
                return src
        return "default"

    def effective(self) -> list[tuple[str, str, str]]:
        """(key path, value, source) for every leaf; secrets masked."""
        rows: list[tuple[str, str, str]] = []
        dumped = self.settings.model_dump(mode="json")
        for key, value in _flatten(dumped):
            rows.append((key, shown_value(key, value), self.source_of(key)))
        return rows


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "" if value is None else str(value)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Values from env / CLI are YAML scalars: ``3``, ``true``, ``[a, b]``, ``null``."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _merge_defaults_for_markets(tree: dict[str, Any]) -> None:
    """A YAML market entry that names a default market inherits that market's defaults."""
    markets = tree.get("markets")
    if not isinstance(markets, dict):
        return
    defaults = {k: v.model_dump(mode="json") for k, v in _default_markets().items()}
    for name, entry in list(markets.items()):
        if name in defaults and isinstance(entry, dict):
            merged = dict(defaults[name])
            merged.update(entry)
            markets[name] = merged


def resolve_config_path(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("MARKETPRISM_CONFIG"):
        return Path(env["MARKETPRISM_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load, merge and validate. ``overrides`` are CLI values: ``key.path=value`` strings or a mapping.

    Raises ConfigError naming the key path, the bad value and what is allowed.
    """
    env = os.environ if env is None else env
    cfg_path = resolve_config_path(path, env)
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if cfg_path is not None:
        if not cfg_path.exists():
            raise ConfigError(
                f"config file {cfg_path} does not exist; set MARKETPRISM_CONFIG or --config to an existing "
                "YAML file, e.g. config/marketprism.yaml"
            )
        try:
            loaded = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path} must hold a mapping at the top level, got {type(loaded).__name__}")
        tree = loaded
        for key, _ in _flatten(tree):
            sources[key] = f"yaml:{cfg_path}"
        _merge_defaults_for_markets(tree)

    # environment: seeds' names (first wins per path), then generic MARKETPRISM__A__B
    seen: set[str] = set()
    for var, key in ENV_ALIASES:
        if var in env and key not in seen:
            _set_path(tree, key, _parse_scalar(env[var]))
            sources[key] = f"env:{var}"
            seen.add(key)
    for var, value in env.items():
        if var.startswith(GENERIC_ENV_PREFIX):
            key = var[len(GENERIC_ENV_PREFIX) :].lower().replace("__", ".")
            _set_path(tree, key, _parse_scalar(value))
            sources[key] = f"env:{var}"

    cli_values: dict[str, Any] = {}
    for key, value in _forwarded_overrides(env).items():
        _set_path(tree, key, _parse_scalar(value) if isinstance(value, str) else value)
        sources[key] = FORWARDED_SOURCE
        cli_values[key] = value
    items = overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
    for key, value in items:
        _set_path(tree, key, _parse_scalar(value) if isinstance(value, str) else value)
        sources[key] = "cli"
        cli_values[key] = value

    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, cfg_path)) from None
    register_secrets(settings_secrets(settings))
    return LoadedConfig(settings, sources, cfg_path, cli_values)


def _forwarded_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    text = env.get(FORWARDED_ENV)
    if not text:
        return {}
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{FORWARDED_ENV} must hold a JSON object of key.path -> value (marketprism dev/demo sets it for the "
            f"processes it starts): {exc}; unset it or start them through marketprism dev"
        ) from None
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ConfigError(f"{FORWARDED_ENV} must hold a JSON object of key.path -> value, got {type(values).__name__}")
    return values


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. storage.backend=clickhouse")
    key, value = text.split("=", 1)
    return key.strip(), value


def format_validation_error(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        value = err.get("input")
        shown = "(missing)" if err["type"] == "missing" else repr(value)
        if isinstance(value, dict):
            shown = "{...}"
        elif loc in SECRET_PATHS or loc in URL_PATHS:
            shown = repr(shown_value(loc, value))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against config/marketprism.yaml"
        if not loc:  # a whole-config rule: its message names the keys itself
            lines.append(f"  {msg}")
            continue
        lines.append(f"  {loc}: {shown}: {msg}")
    return "\n".join(lines)


def settings_from_env() -> Settings:
    """The effective settings for processes started without CLI flags (Dagster runs, tests)."""
    return load_config().settings
