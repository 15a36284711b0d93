"""Dagster test helpers: a test instance with the consolidated event log, resources from the YAML."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from resources import ClickHouseResource, NatsResource

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


def resources_for(settings: Any) -> dict[str, Any]:
    """Resources reading the repo YAML, pointed at the test's store and NATS."""
    overrides = {
        "data_dir": str(settings.data_dir),
        "storage.path": str(settings.embedded_store_path),
        "nats.url": settings.nats.url,
        "nats.embedded": "false",
        "environment": "test",
        "seal.grace_s": str(settings.seal.grace_s),
        "seal.writer_slack_s": str(settings.seal.writer_slack_s),
        "collector.health_port": str(settings.collector.health_port),
    }
    return {
        "clickhouse": ClickHouseResource(config_path=CONFIG, overrides=overrides),
        "nats": NatsResource(config_path=CONFIG, overrides=overrides),
    }


@pytest.fixture
def make_resources() -> Any:
    return resources_for
