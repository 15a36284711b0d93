"""ClickHouse (embedded chDB or a server) as a Dagster resource, configured from the YAML."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from marketprism_dagster.storage import open_store
from marketprism_dagster.storage.base import Store
from resources.settings import SettingsResource


class ClickHouseResource(SettingsResource):
    """Opens the configured store (storage.backend: embedded | clickhouse) for one step."""

    @contextlib.contextmanager
    def open(self) -> Iterator[Store]:
        store = open_store(self.load_settings())
        hold = getattr(store, "hold", None)  # embedded: one lock + session for the whole step
        try:
            if hold is None:
                yield store
            else:
                with hold():
                    yield store
        finally:
            store.close()
