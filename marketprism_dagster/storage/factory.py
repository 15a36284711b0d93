"""Choose the backend from the settings."""

from __future__ import annotations

from marketprism_dagster.config import Settings
from marketprism_dagster.storage.base import Store


def open_store(settings: Settings) -> Store:
    st = settings.storage
    if st.backend == "embedded":
        from marketprism_dagster.storage.embedded import EmbeddedStore

        return EmbeddedStore(settings.embedded_store_path, lock_timeout_s=st.lock_timeout_s)
    from marketprism_dagster.storage.server import ServerStore

    return ServerStore(st.url, st.user, st.password.get_secret_value())
