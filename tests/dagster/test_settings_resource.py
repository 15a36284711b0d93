"""One settings resource: parsed once per process, the only way Dagster code gets its settings.

The batch location builds its definitions once from the resource; its assets, checks and sensors read the
same parse (counted at ``load_config``); the supervisor sensor and the service op take their values from
the resource they are given; no Dagster module imports a private ``dagster._`` module.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import resources.settings as settings_module
from marketprism_dagster import supervision as sv
from marketprism_dagster.config import load_config
from marketprism_dagster.defs import services
from marketprism_dagster.storage import init_schema, open_store
from resources import SettingsResource
from sensors.alerts import integrity_alerts

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "marketprism.yaml")
DAGSTER_CODE = ("marketprism_dagster", "sensors", "resources")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every YAML parse of the settings resource in this process, from a cold cache."""
    seen: list[Any] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(args)
        return load_config(*args, **kwargs)

    settings_module._parse.cache_clear()
    monkeypatch.setattr(settings_module, "load_config", counting)
    yield seen
    settings_module._parse.cache_clear()


def _location_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MARKETPRISM_CONFIG", CONFIG)
    monkeypatch.setenv("MARKETPRISM__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MARKETPRISM__STORAGE__PATH", str(tmp_path / "ch"))
    monkeypatch.setenv("MARKETPRISM__NATS__EMBEDDED", "false")
    monkeypatch.setenv("MARKETPRISM__SEAL__START_DATE", "2026-01-01")


def test_the_batch_location_parses_the_settings_once_for_definitions_checks_and_sensors(
    parses, monkeypatch, tmp_path, dagster_instance
):
    _location_env(monkeypatch, tmp_path)
    monkeypatch.delitem(sys.modules, "marketprism_dagster.defs.definitions", raising=False)
    location = importlib.import_module("marketprism_dagster.defs.definitions")
    defs: dg.Definitions = location.defs
    assert len(parses) == 1  # the definitions (partitions, automation) and every resource share it

    settings = defs.resources["settings"]
    assert isinstance(settings, SettingsResource)
    assert defs.resources["clickhouse"].settings is settings and defs.resources["nats"].settings is settings
    assert settings.load_settings().data_dir == str(tmp_path / "data")
    with open_store(settings.load_settings()) as store:
        init_schema(store, settings.load_settings())

    result = defs.resolve_job_def("integrity_checks").execute_in_process(instance=dagster_instance)
    assert result.success and result.get_asset_check_evaluations()
    sensor = defs.resolve_sensor_def("integrity_alerts")
    with dg.build_sensor_context(instance=dagster_instance, resources={"settings": settings}) as ctx:
        summary = sensor(ctx)
    assert "alerts sent" in str(summary.skip_message)
    assert len(parses) == 1  # the checks run and the sensor tick did not parse again

    monkeypatch.setenv("MARKETPRISM__DATA_DIR", str(tmp_path / "moved"))  # a changed input is a new parse
    assert settings.load_settings().data_dir == str(tmp_path / "moved")
    assert len(parses) == 2


def test_the_alert_sensor_posts_to_the_webhook_of_its_settings_resource(parses, dagster_instance, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    got: list[str] = []
    monkeypatch.setattr("sensors.alerts.post_alert", lambda url, payload: got.append(url))
    dagster_instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey(["hot", "trade"]), check_name="c0", passed=False)
    )
    hook = "http://127.0.0.1:9/from-the-resource"
    resource = SettingsResource(config_path=CONFIG, overrides={"alerts.webhook_url": hook})
    with dg.build_sensor_context(instance=dagster_instance, resources={"settings": resource}) as ctx:
        integrity_alerts(ctx)
    assert got == [hook]


def test_the_supervisor_sensor_and_the_service_op_take_their_settings_from_the_resource(
    parses, dagster_instance, tmp_path, monkeypatch
):
    resource = SettingsResource(
        config_path=CONFIG,
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats.embedded": "false",
            "collector.shards": "{alpha: [binance_spot], beta: [okx_spot]}",
            "supervisor.mon_interval_s": "17",
        },
    )
    location = dg.Definitions(
        jobs=[services.collector_job, services.writer_job],
        sensors=services.defs.sensors,
        resources={"settings": resource},
    )
    sensor = location.resolve_sensor_def("service_supervisor")
    with dg.build_sensor_context(instance=dagster_instance, resources={"settings": resource}) as ctx:
        requests = sensor(ctx).run_requests
    assert sorted(r.tags[sv.SERVICE_TAG] for r in requests) == ["collector:alpha", "collector:beta", "writer"]

    seen: list[tuple[str, str, float]] = []

    async def collector(settings: Any, shard: str, stop: asyncio.Event, beat: Any, takeover: bool = False) -> None:
        seen.append((shard, settings.data_dir, beat.cpu_window_s))

    monkeypatch.setattr(services, "collector_program", collector)
    run = location.resolve_job_def("collector").execute_in_process(
        run_config={"ops": {"run_service": {"config": {"kind": "collector", "shard": "beta"}}}},
        instance=dagster_instance,
    )
    assert run.success
    assert seen == [("beta", str(tmp_path / "data"), 17.0)]
    assert len(parses) == 1


def test_dagster_code_imports_only_public_dagster_apis():
    private = re.compile(r"\bdagster\._")
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for top in DAGSTER_CODE
        for path in sorted((REPO / top).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert found == []


def test_no_dagster_code_parses_the_settings_itself():
    """Only the settings resource calls load_config; nothing in the Dagster layer calls settings_from_env."""
    offenders = [
        str(path.relative_to(REPO))
        for top in ("sensors", "resources", "marketprism_dagster/defs")
        for path in sorted((REPO / top).rglob("*.py"))
        if path.name != "cli.py"  # the `marketprism dev` entry point loads the CLI's settings, not Dagster's
        and re.search(r"\b(settings_from_env|load_config|yaml\.safe_load)\(", path.read_text())
        and path != REPO / "resources" / "settings.py"
    ]
    assert offenders == []
