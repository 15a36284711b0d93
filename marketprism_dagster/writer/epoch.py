"""Stream epochs: a JetStream stream that was deleted and recreated starts a new ledger epoch.

A recreated stream (``nats stream rm``, or ``storage: memory`` after a NATS restart) numbers its
messages from 1 again. The ledger's watermark W belongs to the old stream, and without this
module the writer would treat the new stream's sequences 1..W as committed: ack and drop them.

Each stream's identity is its creation time as JetStream reports it (``StreamInfo.created``),
recorded per epoch in ``marketprism_meta.stream_epochs``. When the server's stream has another
creation time than the current epoch (or, before any epoch was recorded, fewer messages than the
ledger's watermark), the writer starts a new epoch before it consumes anything:

1. the old epoch's ledger rows are copied to the ledger under ``<stream>@<epoch>`` (the seal still
   counts them per hour; the integrity check of ``<stream>`` sees only the live stream's ranges);
2. the ledger and intent rows of ``<stream>`` are deleted, so the watermark is 0 again;
3. the new epoch (number + 1, the new creation time) is recorded.

Every step is idempotent, and the epoch row is written last: a crash in between repeats the
whole switch on restart. Insert tokens carry the epoch (``token_stream``), so ClickHouse's
deduplication log never mistakes the new stream's range 1..k for the old one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marketprism_dagster.config import Settings
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.schema import INTENT_TABLE, LEDGER_TABLE

EPOCH_TABLE = "stream_epochs"


def epoch_ddl(database: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{EPOCH_TABLE}` (\n"
        "  `stream` LowCardinality(String),\n"
        "  `epoch` UInt32,\n"
        "  `created` String,\n"
        "  `previous_watermark` UInt64,\n"
        "  `reason` String,\n"
        "  `recorded_at` DateTime64(3, 'UTC')\n"
        ")\nENGINE = ReplacingMergeTree\n"
        "ORDER BY (`stream`, `epoch`)"
    )


def token_stream(stream: str, epoch: int) -> str:
    """The stream's name in insert tokens: unchanged in epoch 0 (tokens of existing ledgers stay valid)."""
    return stream if epoch == 0 else f"{stream}@{epoch}"


def archived_name(stream: str, epoch: int) -> str:
    """The ledger's ``stream`` value for the rows of a finished epoch."""
    return f"{stream}@{epoch}"


def created_of(info: Any) -> str:
    """A stream's identity: its creation time as the server reports it (ISO, UTC)."""
    created = getattr(info, "created", None)
    if isinstance(created, datetime):
        return created.astimezone(UTC).isoformat()
    return str(created or "")


def _sql_str(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class Epoch:
    stream: str
    number: int
    created: str


@dataclass(frozen=True, slots=True)
class EpochSwitch:
    """What ``check_epoch`` did: ``reset`` is None when the stream is the one the ledger knows."""

    epoch: Epoch
    reset: str | None = None
    previous: Epoch | None = None
    previous_watermark: int = 0


def current_epoch(store: Store, settings: Settings, stream: str) -> Epoch | None:
    meta = settings.storage.ledger_database
    rows = store.query_rows(
        f"SELECT epoch, argMax(created, recorded_at) FROM `{meta}`.`{EPOCH_TABLE}` "
        f"WHERE stream = {_sql_str(stream)} GROUP BY epoch ORDER BY epoch DESC LIMIT 1"
    )
    if not rows:
        return None
    return Epoch(stream, int(rows[0][0]), str(rows[0][1]))


def _record(store: Store, settings: Settings, epoch: Epoch, previous_watermark: int, reason: str) -> None:
    meta = settings.storage.ledger_database
    now = datetime.now(UTC)
    store.execute(
        f"INSERT INTO `{meta}`.`{EPOCH_TABLE}` (stream, epoch, created, previous_watermark, reason, recorded_at) "
        f"VALUES ({_sql_str(epoch.stream)}, {epoch.number}, {_sql_str(epoch.created)}, {previous_watermark}, "
        f"{_sql_str(reason)}, '{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d}')"
    )


def _watermark(store: Store, settings: Settings, stream: str) -> int:
    meta = settings.storage.ledger_database
    value = store.query_value(
        f"SELECT max(last_seq) FROM `{meta}`.`{LEDGER_TABLE}` WHERE stream = {_sql_str(stream)} AND data_type = '*'"
    )
    return int(value or 0)


def ensure_epoch_table(store: Store, settings: Settings) -> None:
    store.execute(epoch_ddl(settings.storage.ledger_database))


def check_epoch(store: Store, settings: Settings, stream: str, created: str, last_seq: int) -> EpochSwitch:
    """Compare the server's stream (``created``, ``last_seq``) with the ledger's; start a new epoch on a reset."""
    cur = current_epoch(store, settings, stream)
    watermark = _watermark(store, settings, stream)
    if cur is None:
        if watermark > last_seq:
            # no identity recorded yet (a ledger older than epochs): sequences never go back in one stream.
            # The old epoch is recorded first, so a crash during the switch repeats it (never reuses epoch 0)
            old = Epoch(stream, 0, "")
            _record(store, settings, old, 0, "recorded at a reset")
            reason = f"the stream holds {last_seq} messages but the ledger committed through {watermark}"
            return _switch(store, settings, old, created, watermark, reason)
        epoch = Epoch(stream, 0, created)
        _record(store, settings, epoch, 0, "first seen")
        return EpochSwitch(epoch)
    if cur.created == created:
        return EpochSwitch(cur)
    reason = f"the stream was created at {created}, the ledger's epoch {cur.number} at {cur.created}"
    return _switch(store, settings, cur, created, watermark, reason)


def _switch(store: Store, settings: Settings, old: Epoch, created: str, watermark: int, reason: str) -> EpochSwitch:
    meta = settings.storage.ledger_database
    s = _sql_str(old.stream)
    archived = _sql_str(archived_name(old.stream, old.number))
    cols = ("first_seq", "last_seq", "data_type", "hour", "messages", "rows", "dead_letters", "min_ts", "max_ts",
            "token", "committed_at")
    names = ", ".join(cols)
    # the copy's token is fixed: a repeated switch after a crash inserts it once
    store.execute(
        f"INSERT INTO `{meta}`.`{LEDGER_TABLE}` (stream, {names}) "
        f"SETTINGS insert_deduplicate = 1, insert_deduplication_token = {_sql_str('epoch-archive:' + archived)} "
        f"SELECT {archived}, {names} FROM `{meta}`.`{LEDGER_TABLE}` WHERE stream = {s}"
    )
    for table in (LEDGER_TABLE, INTENT_TABLE):
        store.execute(f"ALTER TABLE `{meta}`.`{table}` DELETE WHERE stream = {s} SETTINGS mutations_sync = 2")
    new = Epoch(old.stream, old.number + 1, created)
    _record(store, settings, new, watermark, reason)
    return EpochSwitch(new, reset=reason, previous=old, previous_watermark=watermark)
