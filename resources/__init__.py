"""Dagster resources: settings, ClickHouse and NATS, all configured from the MarketPrism YAML."""

from resources.clickhouse import ClickHouseResource
from resources.nats import NatsResource
from resources.settings import SettingsResource

__all__ = ["ClickHouseResource", "NatsResource", "SettingsResource"]
