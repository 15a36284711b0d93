"""Dagster test helpers: a test instance with the consolidated event log, resources from the YAML."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from resources import SettingsResource, resources_of

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "config" / "marketprism.yaml")


@pytest.fixture
def dagster_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    base = str(home / "storage")
    overrides = {
        "event_log_storage": {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": base},
        }
    }
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield instance


def settings_resource_for(settings: Any) -> SettingsResource:
    """The settings resource reading the repo YAML, pointed at the test's store and NATS, with the test's
    seal and supervisor settings."""
    overrides = {
        "data_dir": str(settings.data_dir),
        "storage.path": str(settings.embedded_store_path),
        "nats.url": settings.nats.url,
        "nats.embedded": "false",
        "environment": "test",
        "collector.health_port": str(settings.collector.health_port),
    }
    for section in ("seal", "supervisor"):
        for key, value in getattr(settings, section).model_dump(mode="json").items():
            overrides[f"{section}.{key}"] = json.dumps(value)  # JSON is YAML: None stays None
    return SettingsResource(config_path=CONFIG, overrides=overrides)


def resources_for(settings: Any) -> dict[str, Any]:
    """Every resource of the batch location, configured like ``settings_resource_for``."""
    return resources_of(settings_resource_for(settings))


@pytest.fixture
def make_resources() -> Any:
    return resources_for
