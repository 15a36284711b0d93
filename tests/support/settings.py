"""The suite's Settings: the shipped config rooted in a temporary directory, with overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from marketprism_dagster.config import Settings, load_config
from marketprism_dagster.nats_server import free_port

REPO = Path(__file__).resolve().parents[2]


def settings_in(root: Path) -> Callable[..., Settings]:
    """Settings rooted in ``root``; keyword overrides use key paths with '__' for '.'."""

    def make(nats_url: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": str(root / "data"),
            "storage.path": str(root / "ch"),
            "nats.url": nats_url or f"nats://127.0.0.1:{free_port()}",
            "nats.embedded": False,
            "environment": "test",
            # a deployment that has been running for a while (an unset start is the first start's hour)
            "seal.start_date": "2026-01-01",
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(REPO / "config" / "marketprism.yaml", overrides=values, env={}).settings

    return make
