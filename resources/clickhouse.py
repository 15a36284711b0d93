"""ClickHouse (embedded chDB or a server) as a Dagster resource, configured from the YAML."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from marketprism_dagster.storage import open_store
from marketprism_dagster.storage.base import Store
from resources.settings import SettingsResource

# An embedded-store step keeps its session this long before handing it to a waiting writer: a check
# of a few queries then opens chDB once, and the writer waits at most this long (plus one query).
STEP_TENURE_S = 0.5


class ClickHouseResource(SettingsResource):
    """Opens the configured store (storage.backend: embedded | clickhouse) for one step."""

    @contextlib.contextmanager
    def open(self) -> Iterator[Store]:
        store = open_store(self.load_settings())
        hold = getattr(store, "hold", None)  # embedded: one lock + session for (most of) the step
        try:
            if hold is None:
                yield store
            else:
                with hold(tenure_s=STEP_TENURE_S):
                    yield store
        finally:
            store.close()
