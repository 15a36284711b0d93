"""The data model: the 8 record types, each declared ONCE as a table of columns.

Everything else is derived from ``RECORD_TYPES``: the msgspec structs that travel on
the wire, JSON encode/decode, the NATS subject, the Nats-Msg-Id (the record identity),
the ClickHouse DDL for hot and cold tables and the insert column mapping.

Wire conventions
----------------
* decimals travel as JSON strings (``"0.000000000000000001"``), never as floats, and land
  in ``Decimal(38, 18)`` unchanged;
* times are integer milliseconds since the epoch, UTC: ``timestamp`` is the EXCHANGE event
  time, ``received_at`` the local receive time;
* order book levels are ``[[price, quantity], ...]`` lists of decimal strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc


class Wire(StrEnum):
    """How a column travels on the wire and which ClickHouse type it lands in."""

    STR = "str"
    LOWCARD = "lowcard"
    DECIMAL = "decimal"
    OPT_DECIMAL = "opt_decimal"
    TIME_MS = "time_ms"
    OPT_TIME_MS = "opt_time_ms"
    UINT = "uint"
    LEVELS = "levels"


_PY_TYPE: Final[dict[Wire, Any]] = {
    Wire.STR: str,
    Wire.LOWCARD: str,
    Wire.DECIMAL: str,
    Wire.OPT_DECIMAL: str | None,
    Wire.TIME_MS: int,
    Wire.OPT_TIME_MS: int | None,
    Wire.UINT: int,
    Wire.LEVELS: list[tuple[str, str]],
}

DECIMAL_TYPE: Final = "Decimal(38, 18)"
TIME_TYPE: Final = "DateTime64(3, 'UTC')"

_CH_TYPE: Final[dict[Wire, str]] = {
    Wire.STR: "String",
    Wire.LOWCARD: "LowCardinality(String)",
    Wire.DECIMAL: DECIMAL_TYPE,
    Wire.OPT_DECIMAL: f"Nullable({DECIMAL_TYPE})",
    Wire.TIME_MS: TIME_TYPE,
    Wire.OPT_TIME_MS: f"Nullable({TIME_TYPE})",
    Wire.UINT: "UInt64",
    Wire.LEVELS: f"Array(Tuple(price {DECIMAL_TYPE}, quantity {DECIMAL_TYPE}))",
}

ARROW_DECIMAL: Final = pa.decimal128(38, 18)
ARROW_TIME: Final = pa.timestamp("ms", tz="UTC")
ARROW_LEVELS: Final = pa.list_(pa.struct([("price", ARROW_DECIMAL), ("quantity", ARROW_DECIMAL)]))

_ARROW_TYPE: Final[dict[Wire, pa.DataType]] = {
    Wire.STR: pa.string(),
    Wire.LOWCARD: pa.string(),
    Wire.DECIMAL: ARROW_DECIMAL,
    Wire.OPT_DECIMAL: ARROW_DECIMAL,
    Wire.TIME_MS: ARROW_TIME,
    Wire.OPT_TIME_MS: ARROW_TIME,
    Wire.UINT: pa.uint64(),
    Wire.LEVELS: ARROW_LEVELS,
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    wire: Wire
    identity: bool = False
    doc: str = ""

    @property
    def ch_type(self) -> str:
        return _CH_TYPE[self.wire]

    @property
    def py_type(self) -> Any:
        return _PY_TYPE[self.wire]

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPE[self.wire]


def _common(*, timestamp_identity: bool) -> tuple[Column, ...]:
    return (
        Column("exchange", Wire.LOWCARD, identity=True, doc="market id, e.g. binance_spot"),
        Column("market_type", Wire.LOWCARD, doc="spot | perpetual | options"),
        Column("symbol", Wire.LOWCARD, identity=True, doc="normalized BASE-QUOTE (BTC for Deribit indices)"),
        Column("exchange_symbol", Wire.LOWCARD, doc="the symbol as the venue spells it"),
        Column("timestamp", Wire.TIME_MS, identity=timestamp_identity, doc="exchange event time, ms UTC"),
        Column("received_at", Wire.TIME_MS, doc="local receive time, ms UTC"),
    )


@dataclass(frozen=True, slots=True)
class RecordType:
    """One data type: its columns (declared once) and everything derived from them."""

    name: str
    stream: str
    columns: tuple[Column, ...]
    doc: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def identity(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.identity)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


_RATIO_PAYLOAD = (
    Column("period", Wire.LOWCARD, identity=True, doc="statistics period, e.g. 5m"),
    Column("long_short_ratio", Wire.DECIMAL),
    Column("long_ratio", Wire.OPT_DECIMAL, doc="share of longs (0..1) where the venue gives it"),
    Column("short_ratio", Wire.OPT_DECIMAL, doc="share of shorts (0..1) where the venue gives it"),
)

RECORD_TYPES: Final[dict[str, RecordType]] = {
    rt.name: rt
    for rt in (
        RecordType(
            "trade",
            "MARKET_DATA",
            (
                *_common(timestamp_identity=False),
                Column("trade_id", Wire.STR, identity=True),
                Column("price", Wire.DECIMAL),
                Column("quantity", Wire.DECIMAL, doc="base-asset units"),
                Column("quantity_contracts", Wire.OPT_DECIMAL, doc="raw contract count (OKX swaps)"),
                Column("side", Wire.LOWCARD, doc="taker side: buy | sell"),
            ),
            "one executed trade",
        ),
        RecordType(
            "orderbook",
            "ORDERBOOK_SNAP",
            (
                *_common(timestamp_identity=False),
                Column("update_id", Wire.UINT, identity=True, doc="last update applied to the book"),
                Column("tick", Wire.TIME_MS, doc="wall-clock aligned publish tick, ms UTC"),
                Column("depth", Wire.UINT, doc="levels per side published"),
                Column("bids", Wire.LEVELS, doc="best first"),
                Column("asks", Wire.LEVELS, doc="best first"),
            ),
            "top-N snapshot of a synchronized book",
        ),
        RecordType(
            "funding_rate",
            "MARKET_DATA",
            (
                *_common(timestamp_identity=True),
                Column("funding_rate", Wire.DECIMAL),
                Column("next_funding_time", Wire.OPT_TIME_MS),
                Column("mark_price", Wire.OPT_DECIMAL),
                Column("index_price", Wire.OPT_DECIMAL),
            ),
        ),
        RecordType(
            "open_interest",
            "MARKET_DATA",
            (
                *_common(timestamp_identity=True),
                Column("open_interest", Wire.DECIMAL, doc="base-asset units"),
                Column("open_interest_value", Wire.OPT_DECIMAL, doc="quote value"),
                Column("open_interest_contracts", Wire.OPT_DECIMAL, doc="raw contract count (OKX)"),
            ),
        ),
        RecordType(
            "liquidation",
            "MARKET_DATA",
            (
                *_common(timestamp_identity=True),
                Column("side", Wire.LOWCARD, identity=True, doc="side of the liquidation order"),
                Column("price", Wire.DECIMAL, identity=True),
                Column("quantity", Wire.DECIMAL, identity=True, doc="base-asset units"),
                Column("quantity_contracts", Wire.OPT_DECIMAL),
                Column("status", Wire.LOWCARD),
            ),
        ),
        RecordType("lsr_top_position", "MARKET_DATA", (*_common(timestamp_identity=True), *_RATIO_PAYLOAD)),
        RecordType("lsr_all_account", "MARKET_DATA", (*_common(timestamp_identity=True), *_RATIO_PAYLOAD)),
        RecordType(
            "volatility_index",
            "MARKET_DATA",
            (
                *_common(timestamp_identity=True),
                Column("index_value", Wire.DECIMAL),
                Column("open", Wire.OPT_DECIMAL),
                Column("high", Wire.OPT_DECIMAL),
                Column("low", Wire.OPT_DECIMAL),
                Column("close", Wire.OPT_DECIMAL),
            ),
        ),
    )
}

DATA_TYPES: Final[tuple[str, ...]] = tuple(RECORD_TYPES)


def _make_struct(rt: RecordType) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for c in rt.columns:
        if c.wire in (Wire.OPT_DECIMAL, Wire.OPT_TIME_MS):
            fields.append((c.name, c.py_type, None))
        else:
            fields.append((c.name, c.py_type))
    # data_type is a tag so one decoder can read any record from the wire.
    return msgspec.defstruct(
        "".join(p.title() for p in rt.name.split("_")),
        fields,
        kw_only=True,
        tag_field="data_type",
        tag=rt.name,
        frozen=True,
        module=__name__,
    )


STRUCTS: Final[dict[str, type[msgspec.Struct]]] = {name: _make_struct(rt) for name, rt in RECORD_TYPES.items()}

Trade = STRUCTS["trade"]
OrderBook = STRUCTS["orderbook"]
FundingRate = STRUCTS["funding_rate"]
OpenInterest = STRUCTS["open_interest"]
Liquidation = STRUCTS["liquidation"]
LsrTopPosition = STRUCTS["lsr_top_position"]
LsrAllAccount = STRUCTS["lsr_all_account"]
VolatilityIndex = STRUCTS["volatility_index"]

_astuple = msgspec.structs.astuple
_ENCODER = msgspec.json.Encoder()
_TYPED_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(struct) for name, struct in STRUCTS.items()
}
_ANY_DECODER: Final = msgspec.json.Decoder(
    type=STRUCTS["trade"]
    | STRUCTS["orderbook"]
    | STRUCTS["funding_rate"]
    | STRUCTS["open_interest"]
    | STRUCTS["liquidation"]
    | STRUCTS["lsr_top_position"]
    | STRUCTS["lsr_all_account"]
    | STRUCTS["volatility_index"]
)


def data_type_of(record: msgspec.Struct) -> str:
    return type(record).__struct_config__.tag  # type: ignore[return-value]


def encode(record: msgspec.Struct) -> bytes:
    """The record as wire JSON (includes ``data_type``)."""
    return _ENCODER.encode(record)


def decode(payload: bytes | str, data_type: str | None = None) -> Any:
    """Decode and validate wire JSON; raises ``msgspec.ValidationError`` / ``DecodeError``."""
    if data_type is not None:
        return _TYPED_DECODERS[data_type].decode(payload)
    return _ANY_DECODER.decode(payload)


def subject(record: msgspec.Struct) -> str:
    """``{data_type}.{exchange}.{market_type}.{symbol}``."""
    r: Any = record
    return f"{data_type_of(record)}.{r.exchange}.{r.market_type}.{r.symbol}"


def subject_for(data_type: str, exchange: str, market_type: str, symbol: str) -> str:
    return f"{data_type}.{exchange}.{market_type}.{symbol}"


def msg_id(record: msgspec.Struct) -> str:
    """The record identity as a Nats-Msg-Id: data type plus the identity columns' values."""
    rt = RECORD_TYPES[data_type_of(record)]
    return rt.name + ":" + "|".join(str(getattr(record, name)) for name in rt.identity)


def to_columns(data_type: str, records: Iterable[msgspec.Struct]) -> dict[str, list[Any]]:
    """Column-major wire values, ready for ``pyarrow.table`` / ``polars.DataFrame``."""
    rt = RECORD_TYPES[data_type]
    names = rt.column_names
    struct = STRUCTS[data_type]
    recs = records if isinstance(records, list) else list(records)
    if recs and all(type(r) is struct for r in recs):
        # struct fields are the columns, in order: one C-level transpose instead of a getattr per cell
        rows = [_astuple(r) for r in recs]
        return {n: list(col) for n, col in zip(names, zip(*rows, strict=True), strict=True)}
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for r in recs:
        for n in names:
            cols[n].append(getattr(r, n))
    return cols


# ---------------------------------------------------------------- ClickHouse DDL


@dataclass(frozen=True, slots=True)
class TableSettings:
    ttl_days: int
    partition: str = "toYYYYMMDD(timestamp)"
    dedup_window: int = 10_000


def create_table_sql(rt: RecordType, database: str, settings: TableSettings) -> str:
    cols = ",\n  ".join(f"`{c.name}` {c.ch_type}" for c in rt.columns)
    order = ", ".join(f"`{n}`" for n in rt.identity)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{rt.name}` (\n  {cols}\n)\n"
        f"ENGINE = ReplacingMergeTree\n"
        f"PARTITION BY {settings.partition}\n"
        f"ORDER BY ({order})\n"
        f"TTL toDateTime(received_at) + INTERVAL {settings.ttl_days} DAY DELETE\n"
        f"SETTINGS non_replicated_deduplication_window = {settings.dedup_window}"
    )


def insert_sql(rt: RecordType, database: str, source: str) -> str:
    """``INSERT INTO db.table (cols) SELECT * FROM <source>`` for a typed Arrow source."""
    names = ", ".join(f"`{c.name}`" for c in rt.columns)
    return f"INSERT INTO `{database}`.`{rt.name}` ({names}) SELECT {names} FROM {source}"


def arrow_schema(rt: RecordType) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type) for c in rt.columns])


def _typed(column: Column, values: pa.Array | pa.ChunkedArray | list[Any]) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, list):
        if column.wire is Wire.LEVELS:
            return _levels_array(values)
        values = pa.array(values, type=pa.int64() if column.wire in (Wire.TIME_MS, Wire.OPT_TIME_MS) else None)
    if column.wire is Wire.LEVELS:
        if pa.types.is_struct(values.type.value_type):
            return pc.cast(values, ARROW_LEVELS)
        return _levels_array(values.to_pylist())
    if column.wire in (Wire.TIME_MS, Wire.OPT_TIME_MS) and pa.types.is_integer(values.type):
        return pc.cast(pc.cast(values, pa.int64()), ARROW_TIME)
    # decimal strings are parsed exactly by Arrow's string -> decimal128 cast
    return pc.cast(values, column.arrow_type)


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

    ``batch`` is a mapping of column -> list (see ``to_columns``), a ``pyarrow.Table`` or a
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
    return pa.Table.from_arrays(arrays, schema=arrow_schema(rt))


def records_to_arrow(data_type: str, records: Iterable[msgspec.Struct]) -> pa.Table:
    return to_arrow(data_type, to_columns(data_type, records))


def identity_sql(rt: RecordType) -> str:
    """Comma-separated identity columns, for duplicate and parity queries."""
    return ", ".join(f"`{n}`" for n in rt.identity)

