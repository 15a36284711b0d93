"""Columns in ClickHouse and Arrow: the DDL, INSERT and Arrow conversion derived from ``records``.

The record types (``marketprism_dagster.records``) and the ingest ledger's tables
(``marketprism_dagster.ledger.tables``) declare each column once with its wire form; this module
maps a wire form to its ClickHouse type, its Arrow type and its SQL literal, and builds the table
DDL and the Arrow tables the writer inserts. It is the only place that knows both, and the only
record module that imports pyarrow (the collector, which never inserts, does not load it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from marketprism_dagster.records import RECORD_TYPES, Column, RecordType, Wire, to_columns
from marketprism_dagster.storage.sql import sql_str, time_ms, time_s

DECIMAL_TYPE: Final = "Decimal(38, 18)"
TIME_TYPE: Final = "DateTime64(3, 'UTC')"

CH_TYPE: Final[dict[Wire, str]] = {
    Wire.STR: "String",
    Wire.LOWCARD: "LowCardinality(String)",
    Wire.DECIMAL: DECIMAL_TYPE,
    Wire.OPT_DECIMAL: f"Nullable({DECIMAL_TYPE})",
    Wire.TIME_MS: TIME_TYPE,
    Wire.OPT_TIME_MS: f"Nullable({TIME_TYPE})",
    Wire.TIME_S: "DateTime('UTC')",
    Wire.UINT: "UInt64",
    Wire.LEVELS: f"Array(Tuple(price {DECIMAL_TYPE}, quantity {DECIMAL_TYPE}))",
}

ARROW_DECIMAL: Final = pa.decimal128(38, 18)
ARROW_TIME: Final = pa.timestamp("ms", tz="UTC")
ARROW_LEVELS: Final = pa.list_(pa.struct([("price", ARROW_DECIMAL), ("quantity", ARROW_DECIMAL)]))

ARROW_TYPE: Final[dict[Wire, pa.DataType]] = {
    Wire.STR: pa.string(),
    Wire.LOWCARD: pa.string(),
    Wire.DECIMAL: ARROW_DECIMAL,
    Wire.OPT_DECIMAL: ARROW_DECIMAL,
    Wire.TIME_MS: ARROW_TIME,
    Wire.OPT_TIME_MS: ARROW_TIME,
    Wire.TIME_S: pa.timestamp("s", tz="UTC"),
    Wire.UINT: pa.uint64(),
    Wire.LEVELS: ARROW_LEVELS,
}
_TIME_WIRES: Final = frozenset({Wire.TIME_MS, Wire.OPT_TIME_MS})
assert set(CH_TYPE) == set(ARROW_TYPE) == set(Wire)  # every wire form lands somewhere


def ch_type(column: Column) -> str:
    """The column's ClickHouse type."""
    return CH_TYPE[column.wire]


def arrow_type(column: Column) -> pa.DataType:
    """The column's Arrow type (what ``to_arrow`` produces and the typed INSERT reads)."""
    return ARROW_TYPE[column.wire]


# ---------------------------------------------------------------- ClickHouse DDL


@dataclass(frozen=True, slots=True)
class TableSettings:
    ttl_days: int
    partition: str = "toYYYYMMDD(timestamp)"
    dedup_window: int = 10_000


def create_table_sql(rt: RecordType, database: str, settings: TableSettings) -> str:
    cols = ",\n  ".join(f"`{c.name}` {ch_type(c)}" for c in rt.columns)
    order = ", ".join(f"`{n}`" for n in rt.identity)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{rt.name}` (\n  {cols}\n)\n"
        f"ENGINE = ReplacingMergeTree\n"
        f"PARTITION BY {settings.partition}\n"
        f"ORDER BY ({order})\n"
        f"TTL toDateTime(received_at) + INTERVAL {settings.ttl_days} DAY DELETE\n"
        f"SETTINGS non_replicated_deduplication_window = {settings.dedup_window}"
    )


def table_ddl(database: str, table: str, columns: Sequence[Column], *, order_by: Sequence[str],
              ttl: str | None = None, settings: str | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of a ReplacingMergeTree with these columns (the ledger's tables)."""
    cols = ",\n  ".join(f"`{c.name}` {ch_type(c)}" for c in columns)
    order = ", ".join(f"`{n}`" for n in order_by)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` (\n  {cols}\n)\n"
        "ENGINE = ReplacingMergeTree\n"
        f"ORDER BY ({order})"
        + (f"\nTTL {ttl}" if ttl else "")
        + (f"\nSETTINGS {settings}" if settings else "")
    )


def identity_sql(rt: RecordType) -> str:
    """Comma-separated identity columns, for duplicate and parity queries."""
    return ", ".join(f"`{n}`" for n in rt.identity)


# ---------------------------------------------------------------- Arrow


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])


_SCHEMAS: Final[dict[str, pa.Schema]] = {name: arrow_schema(rt.columns) for name, rt in RECORD_TYPES.items()}


def _typed(column: Column, values: pa.Array | pa.ChunkedArray | list[Any]) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, list):
        if column.wire is Wire.LEVELS:
            return _levels_array(values)
        values = pa.array(values, type=pa.int64() if column.wire in _TIME_WIRES else None)
    if column.wire is Wire.LEVELS:
        typ = values.type
        if isinstance(typ, pa.ListType | pa.LargeListType) and pa.types.is_struct(typ.value_type):
            return pc.cast(values, ARROW_LEVELS)
        return _levels_array(values.to_pylist())
    if column.wire in _TIME_WIRES and pa.types.is_integer(values.type):
        return pc.cast(pc.cast(values, pa.int64()), ARROW_TIME)
    # decimal strings are parsed exactly by Arrow's string -> decimal128 cast
    return pc.cast(values, ARROW_TYPE[column.wire])


def _levels_array(rows: list[Any]) -> pa.Array:
    # prices and quantities of every level in two flat lists (the unpacking rejects a level that is not a
    # pair), parsed exactly by ONE string -> decimal128 cast, then sliced (zero-copy) into the struct fields
    prices = [p for levels in rows for p, _ in levels]
    qtys = [q for levels in rows for _, q in levels]
    n = len(prices)
    decimals = pc.cast(pa.array(prices + qtys, pa.string()), ARROW_DECIMAL)
    struct = pa.StructArray.from_arrays([decimals.slice(0, n), decimals.slice(n, n)], names=["price", "quantity"])
    offsets = pa.array([0, *accumulate(len(levels) for levels in rows)], pa.int32())
    return pa.ListArray.from_arrays(offsets, struct)


def to_arrow(data_type: str, batch: Any) -> pa.Table:
    """A typed Arrow table for ``data_type`` from wire values.

    ``batch`` is a mapping of column -> list (see ``records.to_columns``), a ``pyarrow.Table`` or a
    ``polars.DataFrame`` whose columns hold wire values (decimal strings, int ms times).
    """
    rt = RECORD_TYPES[data_type]
    if hasattr(batch, "to_arrow"):
        batch = batch.to_arrow()
    if isinstance(batch, pa.Table):
        missing = [c.name for c in rt.columns if c.name not in batch.column_names]
        if missing:
            raise ValueError(f"{data_type} batch lacks columns {missing}")
        arrays = [_typed(c, batch.column(c.name)) for c in rt.columns]
    else:
        arrays = [_typed(c, list(batch[c.name])) for c in rt.columns]
    return pa.Table.from_arrays(arrays, schema=_SCHEMAS[data_type])


def records_to_arrow(data_type: str, records: Iterable[msgspec.Struct]) -> pa.Table:
    return to_arrow(data_type, to_columns(data_type, records))


# ---------------------------------------------------------------- SQL literals


def _uint_literal(v: Any) -> str:
    return str(int(v))


def _str_literal(v: Any) -> str:
    return "NULL" if v is None else sql_str(v)


def _decimal_literal(v: Any) -> str:
    return "NULL" if v is None else str(v)


def _no_literal(v: Any) -> str:
    raise TypeError("order book levels are inserted through Arrow, never as SQL literals")


SQL_LITERAL: Final[dict[Wire, Any]] = {
    Wire.STR: _str_literal,
    Wire.LOWCARD: _str_literal,
    Wire.DECIMAL: _decimal_literal,
    Wire.OPT_DECIMAL: _decimal_literal,
    Wire.TIME_MS: time_ms,
    Wire.OPT_TIME_MS: time_ms,
    Wire.TIME_S: time_s,
    Wire.UINT: _uint_literal,
    Wire.LEVELS: _no_literal,
}
assert set(SQL_LITERAL) == set(Wire)


def sql_row(columns: Sequence[Column], row: Sequence[Any]) -> list[str]:
    """A row of wire values (times as int ms, or int s for ``TIME_S``) as SQL literals, column by column."""
    return [SQL_LITERAL[c.wire](v) for c, v in zip(columns, row, strict=True)]
