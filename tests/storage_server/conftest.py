"""ServerStore against the chDB HTTP shim (tests/support/chdb_http.py), a stand-in for a ClickHouse server."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.storage.server import ServerStore
from tests.support.chdb_http import ChdbHttpServer

_DB_SEQ = itertools.count()


@pytest.fixture(scope="module")
def clickhouse_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbHttpServer]:
    """One shim process per module; tests isolate themselves with their own databases."""
    with ChdbHttpServer(tmp_path_factory.mktemp("chdb_http") / "ch") as server:
        yield server


@pytest.fixture
def server_settings_factory(settings_factory: Callable[..., Settings]) -> Callable[[str], Settings]:
    """Settings for the clickhouse backend at ``url`` with databases no other test uses."""

    def make(url: str) -> Settings:
        n = next(_DB_SEQ)
        return settings_factory(
            storage__backend="clickhouse",
            storage__url=url,
            storage__hot_database=f"mp_hot_{n}",
            storage__cold_database=f"mp_cold_{n}",
            storage__ledger_database=f"mp_meta_{n}",
        )

    return make


@pytest.fixture
def server_settings(clickhouse_http: ChdbHttpServer, server_settings_factory: Callable[[str], Settings]) -> Settings:
    return server_settings_factory(clickhouse_http.url)


@pytest.fixture
def server_store(server_settings: Settings) -> Iterator[ServerStore]:
    store = open_store(server_settings)
    assert isinstance(store, ServerStore)
    init_schema(store, server_settings)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def own_clickhouse_http(tmp_path: Path) -> Iterator[ChdbHttpServer]:
    """A shim process for one test (the test may stop it)."""
    server = ChdbHttpServer(tmp_path / "ch_own").start()
    try:
        yield server
    finally:
        server.stop()
