"""SQL text: the one INSERT builder and the value literals every statement uses.

Every INSERT the package sends is written by ``insert_sql``: rows from a typed Arrow source
(``select_from``), an ``INSERT ... SELECT`` between tables (``select``) or literal ``VALUES``
(``values``), optionally with an insert deduplication token (a retried insert of the same
block is then dropped by ClickHouse). Literals: ``sql_str`` quotes a string, ``time_ms`` and
``time_s`` write a UTC time, ``values_rows`` turns a typed Arrow table into literal rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pyarrow as pa


def sql_str(v: str) -> str:
    """A ClickHouse string literal."""
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def time_ms(ms: int | None) -> str:
    """A ``DateTime64(3, 'UTC')`` literal from int ms (NULL for None)."""
    if ms is None:
        return "NULL"
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return f"'{dt:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d}'"


def time_s(s: int | None) -> str:
    """A ``DateTime('UTC')`` literal from int seconds (NULL for None)."""
    if s is None:
        return "NULL"
    return f"'{datetime.fromtimestamp(s, UTC):%Y-%m-%d %H:%M:%S}'"


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(f"`{c}`" for c in columns)


def insert_sql(database: str, table: str, columns: Sequence[str], *, select_from: str | None = None,
               select: str | None = None, values: Iterable[Sequence[str]] | None = None,
               token: str | None = None) -> str:
    """``INSERT INTO db.table (columns) [SETTINGS <dedup token>] <rows>``; exactly one source of rows:

    * ``select_from``: ``SELECT <columns> FROM <select_from>`` (a typed Arrow source, or ``{src}`` to be
      filled in by the store);
    * ``select``: a whole SELECT whose columns match ``columns`` (a copy between tables);
    * ``values``: rows of SQL literals (``VALUES (...), (...)``).
    """
    if sum(x is not None for x in (select_from, select, values)) != 1:
        raise ValueError("insert_sql needs exactly one of select_from, select, values")
    names = column_list(columns)
    head = f"INSERT INTO `{database}`.`{table}` ({names}) "
    if token is not None:
        head += f"SETTINGS insert_deduplicate = 1, insert_deduplication_token = {sql_str(token)} "
    if values is not None:
        return head + "VALUES " + ", ".join("(" + ", ".join(r) + ")" for r in values)
    if select is not None:
        return head + select
    return head + f"SELECT {names} FROM {select_from}"


def _column_literals(col: pa.ChunkedArray) -> list[str] | None:
    """SQL literals of a typed Arrow column (values already checked by Arrow); None for a type
    this path does not write (lists: the order book levels)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_timestamp(t):
        return [time_ms(v) for v in col.cast(pa.int64()).to_pylist()]
    if pa.types.is_decimal(t):
        return ["NULL" if v is None else format(v, "f") for v in col.to_pylist()]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ["NULL" if v is None else sql_str(v) for v in col.to_pylist()]
    if pa.types.is_integer(t):
        return ["NULL" if v is None else str(v) for v in col.to_pylist()]
    return None


def values_rows(table: pa.Table) -> list[list[str]] | None:
    """The rows of a typed Arrow table as SQL literals, or None when a column cannot be written that way."""
    columns = []
    for col in table.columns:
        literals = _column_literals(col)
        if literals is None:
            return None
        columns.append(literals)
    return [list(row) for row in zip(*columns, strict=True)]
