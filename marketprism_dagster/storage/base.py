"""The storage interface every backend implements."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage.columns import to_arrow
from marketprism_dagster.storage.sql import insert_sql


class StoreUnavailable(Exception):
    """The store cannot be reached right now (server down, embedded lock held too long)."""


@dataclass(frozen=True, slots=True)
class ArrowInsert:
    """One step of ``Store.run_statements``: a typed Arrow table into ``database.table`` (columns by name)."""

    database: str
    table: str
    data: pa.Table
    dedup_token: str | None = None

    def sql(self, source: str) -> str:
        """The INSERT reading ``source`` (the store's name for ``data``); the token is the store's to add."""
        return insert_sql(self.database, self.table, self.data.column_names, select_from=source)


class Store(ABC):
    """Execute DDL, query to Arrow, insert typed batches with a deduplication token."""

    backend: str

    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def query_arrow(self, sql: str) -> pa.Table: ...

    @abstractmethod
    def _insert_arrow(self, database: str, table: str, sql: str, data: pa.Table, settings: dict[str, Any]) -> None:
        """Insert a typed Arrow table; ``sql`` is the backend-neutral ``INSERT ... SELECT FROM {src}``."""

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """Run several operations as one (embedded: one lock and one chDB open for all of them)."""
        return contextlib.nullcontext()

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections and locks."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ derived helpers

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        table = self.query_arrow(sql)
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return list(zip(*cols, strict=True)) if cols else []

    def query_value(self, sql: str) -> Any:
        rows = self.query_rows(sql)
        return rows[0][0] if rows else None

    def insert(self, database: str, data_type: str, batch: Any, dedup_token: str | None = None) -> int:
        """Insert a batch of wire values (mapping of lists, Arrow table or polars DataFrame).

        With ``dedup_token`` a retried insert of the same batch is dropped by ClickHouse
        (tables carry ``non_replicated_deduplication_window``). Returns the rows sent.
        """
        data = to_arrow(data_type, batch)
        if data.num_rows == 0:
            return 0
        settings: dict[str, Any] = {}
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
            settings["insert_deduplicate"] = 1
        sql = insert_sql(database, data_type, RECORD_TYPES[data_type].column_names, select_from="{src}")
        self._insert_arrow(database, data_type, sql, data, settings)
        return data.num_rows

    def insert_arrow_table(self, database: str, table: str, data: pa.Table, dedup_token: str | None = None) -> int:
        """Insert an already typed Arrow table whose column names match ``database.table``."""
        if data.num_rows == 0:
            return 0
        step = ArrowInsert(database, table, data, dedup_token)
        settings: dict[str, Any] = {"insert_deduplication_token": dedup_token} if dedup_token else {}
        self._insert_arrow(database, table, step.sql("{src}"), data, settings)
        return data.num_rows

    def run_statements(self, steps: Sequence[str | ArrowInsert]) -> None:
        """Run SQL statements and Arrow inserts in order, stopping at the first that fails (raising its error).

        The embedded store runs them as one chDB call (one fixed per-call cost instead of one per statement);
        either way each statement is its own insert, exactly as if they were run one by one.
        """
        for step in steps:
            if isinstance(step, str):
                self.execute(step)
            else:
                self.insert_arrow_table(step.database, step.table, step.data, step.dedup_token)

    def table_columns(self, database: str, table: str) -> list[tuple[str, str]]:
        rows = self.query_rows(
            "SELECT name, type FROM system.columns "
            f"WHERE database = '{database}' AND table = '{table}' ORDER BY position"
        )
        return [(str(n), str(t)) for n, t in rows]

    def tables(self, database: str) -> list[str]:
        rows = self.query_rows(f"SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name")
        return [str(r[0]) for r in rows]
