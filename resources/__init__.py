"""Dagster resources: ``settings`` (the YAML, parsed once per process), nested into ``clickhouse`` and ``nats``."""

from resources.clickhouse import ClickHouseResource
from resources.nats import NatsResource
from resources.settings import SettingsResource

__all__ = ["ClickHouseResource", "NatsResource", "SettingsResource", "resources_of"]


def resources_of(settings: SettingsResource) -> dict[str, object]:
    """The batch location's resources, every one configured by the same ``settings`` resource."""
    return {
        "settings": settings,
        "clickhouse": ClickHouseResource(settings=settings),
        "nats": NatsResource(settings=settings),
    }
