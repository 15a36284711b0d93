"""`marketprism dev|demo --set ...`: every process the launcher starts sees the launcher's effective settings.

The issue's case: with `--set data_dir=...` the supervisor read a stale `supervisor.paused` from the
default data dir and never started a service. Here the launcher's environment is built by the same
function `run_dev` uses, then the supervisor sensor of the services location and the service settings
are evaluated under exactly that environment, in the repo directory where `dagster dev` runs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from marketprism_dagster import cli
from marketprism_dagster.config import FORWARDED_ENV, ConfigError, load_config, settings_from_env
from marketprism_dagster.defs.cli import launch_env
from marketprism_dagster.supervision import SERVICE_TAG, pause_marker
from resources import SettingsResource

REPO = Path(__file__).resolve().parents[2]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("MARKETPRISM") or var in ("NATS_URL", "HEALTH_CHECK_PORT", "METRICS_PORT"):
            monkeypatch.delenv(var)


def test_dev_set_data_dir_reaches_the_supervisor_and_the_services(tmp_path, monkeypatch, dagster_instance):
    _clean_env(monkeypatch)
    default = tmp_path / "default"  # what the lower layers (YAML / environment) say
    default.mkdir()
    monkeypatch.setenv("MARKETPRISM_CONFIG", str(REPO / "config" / "marketprism.yaml"))
    monkeypatch.setenv("MARKETPRISM__DATA_DIR", str(default))
    stale = default / "supervisor.paused"  # left by an earlier `dev` stopped in the default data dir
    stale.touch()
    launcher_cwd = tmp_path / "launcher"
    launcher_cwd.mkdir()
    monkeypatch.chdir(launcher_cwd)
    loaded = cli.load(None, ["data_dir=elsewhere", "collector.shards={a: [binance_spot], b: [okx_spot]}"])
    assert loaded.settings.data_dir == "elsewhere"  # relative to where the operator typed the command
    env = launch_env(loaded, "nats://127.0.0.1:4333")

    # the started processes: that environment, in the repo directory (start_dagster_dev's cwd)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.chdir(REPO)
    elsewhere = launcher_cwd / "elsewhere"
    settings = settings_from_env()  # what run_service, the sensors and the code locations load
    assert Path(settings.data_dir) == elsewhere
    assert settings.nats.url == "nats://127.0.0.1:4333"
    assert sorted(settings.collector.shards) == ["a", "b"]
    assert pause_marker(settings) == elsewhere / "supervisor.paused"
    assert Path(SettingsResource().load_settings().data_dir) == elsewhere  # the resources of every asset
    shown = {k: src for k, _, src in load_config().effective()}
    assert shown["data_dir"] == shown["collector.shards.a"] == f"cli (forwarded in {FORWARDED_ENV})"

    from marketprism_dagster.defs.services import defs as services_defs

    sensor = services_defs.resolve_sensor_def("service_supervisor")
    resources = services_defs.resources  # the location's own settings resource
    ctx = dg.build_sensor_context(instance=dagster_instance, definitions=services_defs, resources=resources)
    result = sensor(ctx)
    assert result.skip_reason is None, result.skip_reason  # not paused by the stale marker of the default dir
    assert sorted(r.tags[SERVICE_TAG] for r in result.run_requests) == ["collector:a", "collector:b", "writer"]
    assert stale.exists()


def test_demo_venue_urls_and_cli_values_beat_the_environment_in_started_processes(tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("MARKETPRISM_CONFIG", str(REPO / "config" / "marketprism.yaml"))
    monkeypatch.setenv("MARKETPRISM__SUPERVISOR__MEMORY_MB", "100")
    loaded = cli.load(None, [f"data_dir={tmp_path / 'd'}", "supervisor.memory_mb=321"])
    env = launch_env(
        loaded, "nats://127.0.0.1:4333", extra_overrides={"markets.okx_spot.rest_url": "http://127.0.0.1:1"}
    )
    forwarded = json.loads(env[FORWARDED_ENV])
    assert forwarded["supervisor.memory_mb"] == "321" and forwarded["markets.okx_spot.rest_url"] == "http://127.0.0.1:1"
    settings = load_config(env=env).settings
    assert settings.supervisor.memory_mb == 321  # CLI beats the environment in the children as in the launcher
    assert settings.markets["okx_spot"].rest_url == "http://127.0.0.1:1"
    # an explicit override in the child still wins (a resource's own overrides, a nested --set)
    assert load_config(env=env, overrides={"supervisor.memory_mb": 7}).settings.supervisor.memory_mb == 7


def test_a_malformed_forwarded_variable_names_itself_and_the_fix():
    with pytest.raises(ConfigError) as err:
        load_config(env={FORWARDED_ENV: "{not json"})
    assert FORWARDED_ENV in str(err.value) and "JSON object" in str(err.value)
