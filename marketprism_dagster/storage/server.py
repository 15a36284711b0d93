"""A ClickHouse server through clickhouse-connect (HTTP, port 8123 by default).

The client runs without an HTTP session (``autogenerate_session_id=False``): the store keeps
no session state (no temporary tables, no ``SET``), and a session would forbid using one
store from several threads at once (clickhouse-connect raises "concurrent queries within the
same session"; the server answers SESSION_IS_LOCKED), which the embedded store allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa

from marketprism_dagster.logs import mask_url, redact, register_secrets
from marketprism_dagster.storage.base import Store, StoreUnavailable

_T = TypeVar("_T")


class ServerStore(Store):
    backend = "clickhouse"

    def __init__(self, url: str, user: str = "default", password: str = "") -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import OperationalError

        self.url = url
        register_secrets([password, url if "@" in url else None])
        try:
            self._client = clickhouse_connect.get_client(
                dsn=url, username=user, password=password, autogenerate_session_id=False
            )
        except OperationalError as exc:
            raise StoreUnavailable(
                f"ClickHouse server at {mask_url(url)} did not answer ({redact(str(exc))}); start it or set "
                "storage.url / CLICKHOUSE_URL"
            ) from exc

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        from clickhouse_connect.driver.exceptions import OperationalError

        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            where = mask_url(self.url)
            raise StoreUnavailable(f"ClickHouse server at {where} unavailable: {redact(str(exc))}") from exc

    def execute(self, sql: str) -> None:
        self._call(self._client.command, sql)

    def query_arrow(self, sql: str) -> pa.Table:
        return self._call(self._client.query_arrow, sql, use_strings=True)

    def _insert_arrow(self, database: str, table: str, sql: str, data: pa.Table, settings: dict[str, Any]) -> None:
        self._call(self._client.insert_arrow, table, data, database=database, settings=settings)

    def close(self) -> None:
        self._client.close()
