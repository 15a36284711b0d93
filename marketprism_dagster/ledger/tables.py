"""The ledger's tables, each column declared once (``records.Column``/``Wire``, as the record types).

``ingest_ledger``: for every committed range (a contiguous ``first_seq..last_seq`` of one stream)
one row with data_type ``'*'`` (``messages`` the stream held in the range, ``dead_letters``) and
one row per (data_type, hour of event time) with the rows inserted. A restart resumes from it;
the seal and the integrity checks prove contiguity and per-hour counts from it.

``ingest_intent``: the writer's in-flight ranges (see ``writer/ingest.py``): a few bytes per intent.

``stream_epochs``: one row per epoch of a stream (see ``writer/epoch.py``).

``ingest_lost``: the ledger's markers (``ledger.lost.Marker``): a range of a stream lost before the
writer committed it, and a (data type, hour) refilled from the venues' history after the loss, or whose
loss an operator accepted (``resolution``).

Pure declarations: this module imports no storage code, so ``storage.schema`` can create the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from marketprism_dagster.records import Column, Wire

ALL_TYPES: Final = "*"  # the data_type of the ledger's per-range row


@dataclass(frozen=True, slots=True)
class MetaTable:
    """A table of the meta database: its columns and its ReplacingMergeTree clauses."""

    name: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]
    ttl: str | None = None
    settings: str | None = None
    doc: str = ""
    # (column, wire value) of the columns added after the table was first released: a table created before is
    # given each by ``ALTER TABLE ADD COLUMN IF NOT EXISTS ... DEFAULT <value>`` (``storage.schema.meta_migrations``),
    # so its older rows read as that value; listed in the order they were added, each at the end of ``columns``
    added: tuple[tuple[str, Any], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


LEDGER: Final = MetaTable(
    "ingest_ledger",
    (
        Column("stream", Wire.LOWCARD, doc="the JetStream stream (``<stream>@<epoch>`` for an archived epoch)"),
        Column("first_seq", Wire.UINT),
        Column("last_seq", Wire.UINT),
        Column("data_type", Wire.LOWCARD, doc="'*' for the range's row, else the data type of the hour's row"),
        Column("hour", Wire.TIME_S, doc="hour of event time ('*': the hour of the earliest row, 0 if none)"),
        Column("messages", Wire.UINT, doc="'*': messages the stream held in the range"),
        Column("rows", Wire.UINT, doc="rows inserted"),
        Column("dead_letters", Wire.UINT),
        Column("min_ts", Wire.OPT_TIME_MS),
        Column("max_ts", Wire.OPT_TIME_MS),
        Column("token", Wire.STR, doc="the insert deduplication token of the rows"),
        Column("committed_at", Wire.TIME_MS),
    ),
    order_by=("stream", "first_seq", "data_type", "hour"),
    settings="non_replicated_deduplication_window = 10000",
    doc="committed JetStream sequence ranges",
)

INTENT: Final = MetaTable(
    "ingest_intent",
    (
        Column("stream", Wire.LOWCARD),
        Column("first_seq", Wire.UINT),
        Column("last_seq", Wire.UINT, doc="the horizon: sequences up to it may be in flight"),
        Column("created_at", Wire.TIME_MS),
    ),
    order_by=("stream", "first_seq", "last_seq"),
    ttl="toDateTime(created_at) + INTERVAL 30 DAY DELETE",
    doc="in-flight ranges",
)

EPOCHS: Final = MetaTable(
    "stream_epochs",
    (
        Column("stream", Wire.LOWCARD),
        Column("epoch", Wire.UINT),
        Column("created", Wire.STR, doc="the stream's creation time as JetStream reports it"),
        Column("previous_watermark", Wire.UINT),
        Column("reason", Wire.STR),
        Column("recorded_at", Wire.TIME_MS),
    ),
    order_by=("stream", "epoch"),
    doc="stream epochs",
)

LOST: Final = MetaTable(
    "ingest_lost",
    (
        Column("stream", Wire.LOWCARD),
        Column("first_seq", Wire.UINT, doc="the lost range (a ledger gap, or a committed range with absent seqs)"),
        Column("last_seq", Wire.UINT),
        Column("missing", Wire.UINT, doc="sequences of the range that never reached the tables"),
        Column("data_type", Wire.LOWCARD, doc="the type whose hour was refilled from the venues' history"),
        Column("hour", Wire.TIME_S, doc="that hour (event time)"),
        Column("refilled", Wire.UINT, doc="records the refill published and the writer committed"),
        Column("held", Wire.UINT, doc="records of the venues' history the table already held"),
        Column("detail", Wire.STR, doc="per market and symbol: the refill's walk and counts"),
        Column("source_gaps", Wire.STR, doc="the source_gap rows of the type touching the hour when it was marked"),
        Column("recorded_at", Wire.TIME_MS),
        Column("resolution", Wire.LOWCARD, doc="'venue_history': the hour was refilled from the venues' history; "
                                              "'accepted': an operator accepted the loss (marketprism accept-loss)"),
    ),
    order_by=("stream", "first_seq", "last_seq", "data_type", "hour"),
    settings="non_replicated_deduplication_window = 1000",
    doc="lost sequence ranges whose hours were refilled from venue history or whose loss was accepted (ledger.lost)",
    added=(("resolution", "venue_history"),),  # the markers written before accept-loss were all refills
)

META_TABLES: Final = (LEDGER, INTENT, EPOCHS, LOST)
LEDGER_TABLE: Final = LEDGER.name
INTENT_TABLE: Final = INTENT.name
EPOCH_TABLE: Final = EPOCHS.name
WRITER_META_TABLES: Final = (LEDGER, INTENT)  # written by every commit (``storage.schema.writer_tables``)
