"""Settings from the YAML (config.load_config), the base of every MarketPrism resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from marketprism_dagster.config import Settings, load_config


class SettingsResource(dg.ConfigurableResource):
    """The MarketPrism settings: MARKETPRISM_CONFIG / config/marketprism.yaml, env overrides, then ``overrides``."""

    config_path: str | None = Field(default=None, description="YAML file; default MARKETPRISM_CONFIG")
    overrides: dict[str, str] = Field(
        default_factory=dict, description="key.path -> value (YAML scalar), beats env and YAML"
    )

    def load_settings(self) -> Settings:
        return load_config(self.config_path, overrides=self.overrides).settings
