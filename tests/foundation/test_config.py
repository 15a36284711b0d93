"""Config precedence (CLI > env > YAML > default) and user-facing errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from marketprism_dagster.config import ConfigError, load_config
from marketprism_dagster.venues.registry import market_spec

REPO = Path(__file__).resolve().parents[2]


def _yaml(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "mp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    ("yaml_value", "env", "cli", "expected", "source"),
    [
        (None, {}, None, "nats://127.0.0.1:4222", "default"),
        ("nats://yaml:4222", {}, None, "nats://yaml:4222", "yaml"),
        ("nats://yaml:4222", {"NATS_URL": "nats://env-generic:4222"}, None, "nats://env-generic:4222", "env:NATS_URL"),
        (
            "nats://yaml:4222",
            {"NATS_URL": "nats://env-generic:4222", "MARKETPRISM_NATS_URL": "nats://env-mp:4222"},
            None,
            "nats://env-mp:4222",
            "env:MARKETPRISM_NATS_URL",
        ),
        (
            None,
            {"MARKETPRISM_NATS_URL": "nats://env-mp:4222"},
            "nats://cli:4222",
            "nats://cli:4222",
            "cli",
        ),
        (None, {"MARKETPRISM__NATS__URL": "nats://generic:1"}, None, "nats://generic:1", "env:MARKETPRISM__NATS__URL"),
    ],
)
def test_precedence_cli_over_env_over_yaml_over_default(tmp_path, yaml_value, env, cli, expected, source):
    data = {"nats": {"url": yaml_value}} if yaml_value else {}
    loaded = load_config(_yaml(tmp_path, data), overrides=[f"nats.url={cli}"] if cli else [], env=env)
    assert loaded.settings.nats.url == expected
    assert loaded.source_of("nats.url").startswith(source)


def test_seed_env_names_reach_their_keys(tmp_path):
    env = {
        "HEALTH_CHECK_PORT": "18087",
        "METRICS_PORT": "19093",
        "HEALTH_GRACE_SECONDS": "5",
        "LOG_LEVEL": "DEBUG",
        "COLLECTOR_MEMORY_MB": "512",
        "ALLOW_MULTIPLE": "1",
    }
    s = load_config(_yaml(tmp_path, {}), env=env).settings
    assert (s.collector.health_port, s.collector.metrics_port, s.collector.grace_s) == (18087, 19093, 5)
    assert s.log_level == "DEBUG" and s.supervisor.memory_mb == 512 and s.collector.allow_multiple is True


def test_marketprism_config_env_selects_the_file(tmp_path):
    path = _yaml(tmp_path, {"orderbook": {"depth": 25}})
    loaded = load_config(env={"MARKETPRISM_CONFIG": str(path)})
    assert loaded.path == path and loaded.settings.orderbook.depth == 25


def test_yaml_market_entry_inherits_defaults_of_that_market(tmp_path):
    s = load_config(_yaml(tmp_path, {"markets": {"okx_spot": {"symbols": ["SOL-USDT"]}}}), env={}).settings
    assert s.markets["okx_spot"].symbols == ["SOL-USDT"]
    assert s.markets["okx_spot"].venue == "okx" and s.markets["okx_spot"].data_types == ["orderbook", "trade"]
    assert set(s.markets) == {"okx_spot"}  # the YAML declares the whole set of markets


def test_window_rules_default_to_the_seeds_values(tmp_path):
    rules = load_config(_yaml(tmp_path, {}), env={}).settings.window_rules
    assert (rules["trade"].window_s, rules["trade"].health_s) == (300, 60)
    assert (rules["orderbook"].window_s, rules["orderbook"].health_s) == (300, 60)
    assert rules["liquidation"].window_s == 3600
    for t in ("funding_rate", "open_interest", "lsr_top_position", "lsr_all_account", "volatility_index"):
        assert rules[t].window_s == 8 * 3600


def test_secrets_are_masked_in_effective_view(tmp_path):
    loaded = load_config(_yaml(tmp_path, {}), env={"CLICKHOUSE_PASSWORD": "hunter2"})
    row = next(r for r in loaded.effective() if r[0] == "storage.password")
    assert row == ("storage.password", "****", "env:CLICKHOUSE_PASSWORD")
    assert loaded.settings.storage.password.get_secret_value() == "hunter2"


BAD_CONFIGS = [
    (
        {"storage": {"backend": "postgres"}},
        ["storage.backend", "'postgres'", "'embedded' or 'clickhouse'"],
    ),
    (
        {"markets": {"binance_spot": {"data_types": ["trade", "funding_rate"]}}},
        ["markets.binance_spot", "funding_rate", "allowed: ['orderbook', 'trade']"],
    ),
    (
        {"orderbook": {"depth": "lots"}},
        ["orderbook.depth", "'lots'", "valid integer"],
    ),
    (
        {"collector": {"shards": {"a": ["kraken_spot"]}}},
        ["collector.shards.a", "kraken_spot", "allowed:"],
    ),
    (
        {"orderbook": {"snapshot_limit": 5000}},
        [
            "orderbook.snapshot_limit 5000",
            "market binance_derivatives",
            "GET /fapi/v1/depth limit",
            "allowed: [5, 10, 20, 50, 100, 500, 1000]",
            "e.g. 1000",
        ],
    ),
]


@pytest.mark.parametrize(("data", "fragments"), BAD_CONFIGS)
def test_bad_config_names_key_value_and_allowed(tmp_path, data, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(_yaml(tmp_path, data), env={})
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(("data", "fragments"), [*BAD_CONFIGS[:3], BAD_CONFIGS[4]])
def test_cli_exits_nonzero_without_traceback_on_bad_config(tmp_path, data, fragments):
    path = _yaml(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPRISM", "NATS_URL"))}
    proc = subprocess.run(
        [sys.executable, "-m", "marketprism_dagster.cli", "config", "show", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_unknown_key_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"storage\.bakend.*unknown key"):
        load_config(_yaml(tmp_path, {"storage": {"bakend": "embedded"}}), env={})


# ---------------------------------------------------------------- orderbook.snapshot_limit per venue


@pytest.mark.parametrize("limit", [5, 10, 20, 50, 100, 500, 1000])
def test_usdm_depth_limits_documented_by_binance_are_accepted(tmp_path, limit):
    loaded = load_config(_yaml(tmp_path, {"orderbook": {"snapshot_limit": limit}}), env={})
    assert loaded.settings.orderbook.snapshot_limit == limit


@pytest.mark.parametrize(("limit", "nearest"), [(7, 5), (30, 20), (400, 100), (999, 500), (2000, 1000)])
def test_usdm_rejects_a_depth_limit_outside_its_set(tmp_path, limit, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(_yaml(tmp_path, {"orderbook": {"snapshot_limit": limit}}), env={})
    text = str(err.value)
    assert f"orderbook.snapshot_limit {limit} is not accepted by market binance_derivatives" in text
    assert f"(e.g. {nearest})" in text
    assert "<root>" not in text


def test_snapshot_limit_only_binds_enabled_order_book_markets(tmp_path):
    """Spot takes 1..5000: with USD-M disabled, or not collecting books, 5000 is fine."""
    disabled = {"orderbook": {"snapshot_limit": 5000}, "markets": {"binance_derivatives": {"enabled": False}}}
    assert load_config(_yaml(tmp_path, disabled), env={}).settings.orderbook.snapshot_limit == 5000
    no_books = {
        "orderbook": {"snapshot_limit": 5000},
        "markets": {"binance_derivatives": {"data_types": ["trade", "funding_rate"]}},
    }
    assert load_config(_yaml(tmp_path, no_books), env={}).settings.orderbook.snapshot_limit == 5000


def _depth(venue: str, market_type: str):
    spec = market_spec(venue, market_type)
    assert spec is not None and spec.snapshot_depth is not None
    return spec.snapshot_depth


def test_okx_snapshot_depth_is_capped_at_400_not_rejected():
    assert _depth("okx", "spot").request_size(1000) == 400
    assert _depth("okx", "perpetual").request_size(5000) == 400
    assert _depth("okx", "perpetual").request_size(50) == 50
    assert _depth("binance", "perpetual").request_size(500) == 500
    assert _depth("binance", "spot").request_size(5000) == 5000
    assert _depth("okx", "spot").accepts(5000)
    assert _depth("binance", "spot").accepts(5000)
    assert not _depth("binance", "perpetual").accepts(5000)


def test_cli_override_of_snapshot_limit_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"snapshot_limit 30 is not accepted by market binance_derivatives"):
        load_config(_yaml(tmp_path, {}), overrides=["orderbook.snapshot_limit=30"], env={})
