"""The MarketPrism settings as a Dagster resource: the one way Dagster code gets its settings.

The YAML is parsed once per process: every resource, sensor and op of a process shares one parse
of the same inputs (config file, its overrides, the environment, the working directory: relative
paths resolve against it). A changed input (an edited YAML file, a test's environment) is a new
parse; nothing else is.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from marketprism_dagster.config import Settings, load_config, resolve_config_path

_Key = tuple[str | None, tuple[tuple[str, str], ...], frozenset[tuple[str, str]], str, int | None]


def _mtime_ns(path: Path | None) -> int | None:
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None  # load_config names the missing file


@functools.lru_cache(maxsize=16)
def _parse(key: _Key) -> Settings:
    config_path, overrides, environ, _cwd, _mtime = key
    return load_config(config_path, overrides=dict(overrides), env=dict(environ)).settings


class SettingsResource(dg.ConfigurableResource):
    """The MarketPrism settings: MARKETPRISM_CONFIG / config/marketprism.yaml, env overrides, then ``overrides``.

    Nested into the ClickHouse and NATS resources and handed to the sensors and the service op."""

    config_path: str | None = Field(default=None, description="YAML file; default MARKETPRISM_CONFIG")
    overrides: dict[str, str] = Field(
        default_factory=dict, description="key.path -> value (YAML scalar), beats env and YAML"
    )

    def load_settings(self) -> Settings:
        """The effective settings, parsed at the first call in this process and shared afterwards."""
        environ = dict(os.environ)
        path = resolve_config_path(self.config_path, environ)
        key: _Key = (
            self.config_path,
            tuple(sorted(self.overrides.items())),
            frozenset(environ.items()),
            os.getcwd(),
            _mtime_ns(path),
        )
        return _parse(key)
