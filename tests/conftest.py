"""Shared pytest fixtures: the recorded fixtures, a real nats-server, a real chDB store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from marketprism_dagster.config import Settings, load_config
from marketprism_dagster.nats_server import EmbeddedNats, free_port
from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[1]


def fixtures_path() -> Path:
    env = os.environ.get("MARKETPRISM_FIXTURES")
    path = Path(env) if env else REPO.parent / "shared" / "fixtures"
    if not path.is_dir():
        raise RuntimeError(
            f"fixtures not found at {path}: check out ../shared beside the repo or set MARKETPRISM_FIXTURES"
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixtures_path()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Settings rooted in tmp_path; keyword overrides use key paths with '__' for '.'."""

    def make(nats_url: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "storage.path": str(tmp_path / "ch"),
            "nats.url": nats_url or f"nats://127.0.0.1:{free_port()}",
            "nats.embedded": False,
            "environment": "test",
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(REPO / "config" / "marketprism.yaml", overrides=values, env={}).settings

    return make


@pytest.fixture
def store(settings_factory: Callable[..., Settings]) -> Iterator[EmbeddedStore]:
    settings = settings_factory()
    s = EmbeddedStore(settings.embedded_store_path)
    init_schema(s, settings)
    try:
        yield s
    finally:
        s.close()
