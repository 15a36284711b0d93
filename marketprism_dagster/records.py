"""The data model: the record types (8 venue types + ``source_gap``), each declared ONCE with its columns and policy.

``RECORD_TYPES`` is the one list of data types. Everything else is derived from it: the
msgspec structs that travel on the wire, JSON encode/decode, the NATS subject and stream, the
Nats-Msg-Id (the record identity), the default integrity windows and health thresholds, and
(in ``storage.columns``) the ClickHouse DDL and the Arrow conversion. This module imports no
pyarrow: the collector encodes records without loading it.

Per-type policy lives on the record type, never as ``if data_type == ...`` elsewhere:

* ``stream``: the JetStream stream that stores the type (its default subjects derive from it);
* ``window_s`` / ``health_s``: default integrity window and collector coverage threshold;
* ``sparse``: events are rare, so an empty window proves nothing: the type is judged by its
  feeds being connected (collector health, the integrity window, the probe);
* ``is_book`` (derived: it has level columns): a synchronized order book snapshot;
* ``venue_type``: False for a type the collector produces about the others (``source_gap``): no
  venue offers it, no market configures it, every collector publishes it; its rows are exceptions,
  so an empty window or an old newest row is the good case (integrity never requires its rows).

``source_gap`` (DESIGN 6b) says where the collector was blind to a venue: one row per gap per
(market, symbol, data type), with the ``cause`` (``GAP_CAUSES``), the window ``timestamp`` (last
data seen before the gap) .. ``end_time`` (first data after it), the exact missing ids where the
venue numbers its data (trade ids), and the ``state`` (``GAP_STATES``). The state is part of the
identity: a later ``repaired`` row stands beside the ``open`` one, never replaces it. The data type
the gap is in travels as ``gap_data_type`` (``data_type`` is the wire tag of every record).

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
from functools import reduce
from operator import attrgetter, or_
from typing import Any, Final

import msgspec


class Wire(StrEnum):
    """How a column travels on the wire (``storage.columns`` maps it to ClickHouse and Arrow types)."""

    STR = "str"
    LOWCARD = "lowcard"
    DECIMAL = "decimal"
    OPT_DECIMAL = "opt_decimal"
    TIME_MS = "time_ms"
    OPT_TIME_MS = "opt_time_ms"
    TIME_S = "time_s"  # whole seconds (the ingest ledger's hour)
    UINT = "uint"
    LEVELS = "levels"


_PY_TYPE: Final[dict[Wire, Any]] = {
    Wire.STR: str,
    Wire.LOWCARD: str,
    Wire.DECIMAL: str,
    Wire.OPT_DECIMAL: str | None,
    Wire.TIME_MS: int,
    Wire.OPT_TIME_MS: int | None,
    Wire.TIME_S: int,
    Wire.UINT: int,
    Wire.LEVELS: list[tuple[str, str]],
}
OPTIONAL_WIRES: Final = frozenset({Wire.OPT_DECIMAL, Wire.OPT_TIME_MS})


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    wire: Wire
    identity: bool = False
    doc: str = ""

    @property
    def py_type(self) -> Any:
        return _PY_TYPE[self.wire]


def _common(*, timestamp_identity: bool) -> tuple[Column, ...]:
    return (
        Column("exchange", Wire.LOWCARD, identity=True, doc="market id, e.g. <venue>_spot"),
        Column("market_type", Wire.LOWCARD, doc="spot | perpetual | options"),
        Column("symbol", Wire.LOWCARD, identity=True, doc="normalized BASE-QUOTE (the currency for indices)"),
        Column("exchange_symbol", Wire.LOWCARD, doc="the symbol as the venue spells it"),
        Column("timestamp", Wire.TIME_MS, identity=timestamp_identity, doc="exchange event time, ms UTC"),
        Column("received_at", Wire.TIME_MS, doc="local receive time, ms UTC"),
    )


HOUR_S: Final = 3600


@dataclass(frozen=True, slots=True)
class RecordType:
    """One data type: its columns (declared once), its policy, and everything derived from them."""

    name: str
    columns: tuple[Column, ...]
    doc: str = ""
    stream: str = "MARKET_DATA"
    window_s: int = 8 * HOUR_S  # default integrity window: rows must exist within it (window_rules)
    health_s: int = 8 * HOUR_S  # default collector coverage threshold (window_rules)
    sparse: bool = False  # rare events: judged by connected feeds, not by the age of the newest row
    venue_type: bool = True  # False: produced by the collector about the other types (never configured)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def identity(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.identity)

    @property
    def is_book(self) -> bool:
        """An order book snapshot (it carries price levels): published from a synchronized book."""
        return any(c.wire is Wire.LEVELS for c in self.columns)

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

GAP_CAUSES: Final = ("trade_id_jump", "disconnect", "book_unsynced", "poll_failed", "downtime")
GAP_STATES: Final = ("open", "repaired", "unrecoverable")

RECORD_TYPES: Final[dict[str, RecordType]] = {
    rt.name: rt
    for rt in (
        RecordType(
            "trade",
            (
                *_common(timestamp_identity=False),
                Column("trade_id", Wire.STR, identity=True),
                Column("price", Wire.DECIMAL),
                Column("quantity", Wire.DECIMAL, doc="base-asset units"),
                Column("quantity_contracts", Wire.OPT_DECIMAL, doc="raw contract count (contract-sized swaps)"),
                Column("side", Wire.LOWCARD, doc="taker side: buy | sell"),
            ),
            "one executed trade",
            window_s=300,
            health_s=60,
        ),
        RecordType(
            "orderbook",
            (
                *_common(timestamp_identity=False),
                Column("update_id", Wire.UINT, identity=True, doc="last update applied to the book"),
                Column("tick", Wire.TIME_MS, doc="wall-clock aligned publish tick, ms UTC"),
                Column("depth", Wire.UINT, doc="levels per side published"),
                Column("bids", Wire.LEVELS, doc="best first"),
                Column("asks", Wire.LEVELS, doc="best first"),
            ),
            "top-N snapshot of a synchronized book",
            stream="ORDERBOOK_SNAP",
            window_s=300,
            health_s=60,
        ),
        RecordType(
            "funding_rate",
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
            (
                *_common(timestamp_identity=True),
                Column("open_interest", Wire.DECIMAL, doc="base-asset units"),
                Column("open_interest_value", Wire.OPT_DECIMAL, doc="quote value"),
                Column("open_interest_contracts", Wire.OPT_DECIMAL, doc="raw contract count (contract-sized swaps)"),
            ),
        ),
        RecordType(
            "liquidation",
            (
                *_common(timestamp_identity=True),
                Column("side", Wire.LOWCARD, identity=True, doc="side of the liquidation order"),
                Column("price", Wire.DECIMAL, identity=True),
                Column("quantity", Wire.DECIMAL, identity=True, doc="base-asset units"),
                Column("quantity_contracts", Wire.OPT_DECIMAL),
                Column("status", Wire.LOWCARD),
            ),
            "one forced liquidation order",
            window_s=HOUR_S,
            health_s=HOUR_S,
            sparse=True,
        ),
        RecordType("lsr_top_position", (*_common(timestamp_identity=True), *_RATIO_PAYLOAD)),
        RecordType("lsr_all_account", (*_common(timestamp_identity=True), *_RATIO_PAYLOAD)),
        RecordType(
            "volatility_index",
            (
                *_common(timestamp_identity=True),
                Column("index_value", Wire.DECIMAL),
                Column("open", Wire.OPT_DECIMAL),
                Column("high", Wire.OPT_DECIMAL),
                Column("low", Wire.OPT_DECIMAL),
                Column("close", Wire.OPT_DECIMAL),
            ),
        ),
        RecordType(
            "source_gap",
            (
                *_common(timestamp_identity=True),  # timestamp: the last data seen before the gap (its start)
                Column("gap_data_type", Wire.LOWCARD, identity=True, doc="the data type the gap is in"),
                Column("cause", Wire.LOWCARD, identity=True, doc=" | ".join(GAP_CAUSES)),
                Column("end_time", Wire.TIME_MS, doc="the first data seen after the gap, ms UTC"),
                Column("first_missing_id", Wire.STR, identity=True, doc="first missing venue id ('' when none)"),
                Column("last_missing_id", Wire.STR, doc="last missing venue id ('' when none)"),
                Column("state", Wire.LOWCARD, identity=True, doc=" | ".join(GAP_STATES)),
                Column("recovered", Wire.UINT, doc="records a refill recovered (0 until repaired)"),
                Column("detail", Wire.STR, doc="what was seen, for a reader"),
            ),
            "a window in which the collector missed (or may have missed) a venue's data",
            venue_type=False,
        ),
    )
}

DATA_TYPES: Final[tuple[str, ...]] = tuple(RECORD_TYPES)
VENUE_TYPES: Final[tuple[str, ...]] = tuple(t for t, rt in RECORD_TYPES.items() if rt.venue_type)
SPARSE_TYPES: Final[frozenset[str]] = frozenset(t for t, rt in RECORD_TYPES.items() if rt.sparse)
BOOK_TYPES: Final[frozenset[str]] = frozenset(t for t, rt in RECORD_TYPES.items() if rt.is_book)


def stream_subjects(stream: str) -> list[str]:
    """The wildcard subjects (``<type>.>``) of the data types whose record type names ``stream``."""
    return [f"{t}.>" for t, rt in RECORD_TYPES.items() if rt.stream == stream]


def _make_struct(rt: RecordType) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for c in rt.columns:
        if c.wire in OPTIONAL_WIRES:
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
SourceGap = STRUCTS["source_gap"]

_IDENTITY: Final[dict[str, tuple[str, ...]]] = {name: rt.identity for name, rt in RECORD_TYPES.items()}
# per struct: the Msg-Id prefix and one getter of the identity values (msg_id runs once per published record)
_MSG_ID: Final[dict[type, tuple[str, Any]]] = {
    STRUCTS[name]: (name + ":", attrgetter(*ids) if len(ids) > 1 else (lambda r, g=attrgetter(*ids): (g(r),)))
    for name, ids in _IDENTITY.items()
}
_astuple = msgspec.structs.astuple
_ENCODER = msgspec.json.Encoder()
_TYPED_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(struct) for name, struct in STRUCTS.items()
}
# one tagged union of every struct: the data_type tag picks the struct
_ANY_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(type=reduce(or_, STRUCTS.values()))


def data_type_of(record: msgspec.Struct) -> str:
    return type(record).__struct_config__.tag  # type: ignore[return-value]


def encode(record: msgspec.Struct) -> bytes:
    """The record as wire JSON (includes ``data_type``)."""
    return _ENCODER.encode(record)


def decode(payload: bytes | str, data_type: str | None = None) -> Any:
    """Decode and validate wire JSON; raises ``msgspec.ValidationError`` / ``DecodeError``.

    With ``data_type`` the payload must be that type's record (KeyError for an unknown type).
    """
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
    prefix, values = _MSG_ID[type(record)]
    return prefix + "|".join(map(str, values(record)))


def to_columns(data_type: str, records: Iterable[msgspec.Struct]) -> dict[str, list[Any]]:
    """Column-major wire values, ready for ``storage.columns.to_arrow`` / ``polars.DataFrame``."""
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
