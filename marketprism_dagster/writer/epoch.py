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

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.queries import (
    archive_stream,
    epoch_rows,
    forget_stream,
    record_epoch_sql,
    watermark,
)
from marketprism_dagster.storage.base import Store


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
    rows = epoch_rows(store, settings, stream)
    if not rows:
        return None
    return Epoch(stream, int(rows[0][0]), str(rows[0][1]))


def _record(store: Store, settings: Settings, epoch: Epoch, previous_watermark: int, reason: str) -> None:
    store.execute(record_epoch_sql(settings, epoch.stream, epoch.number, epoch.created, previous_watermark, reason,
                                   int(time.time() * 1000)))


def check_epoch(store: Store, settings: Settings, stream: str, created: str, last_seq: int) -> EpochSwitch:
    """Compare the server's stream (``created``, ``last_seq``) with the ledger's; start a new epoch on a reset."""
    cur = current_epoch(store, settings, stream)
    committed = watermark(store, settings, stream)
    if cur is None:
        if committed > last_seq:
            # no identity recorded yet (a ledger older than epochs): sequences never go back in one stream.
            # The old epoch is recorded first, so a crash during the switch repeats it (never reuses epoch 0)
            old = Epoch(stream, 0, "")
            _record(store, settings, old, 0, "recorded at a reset")
            reason = f"the stream holds {last_seq} messages but the ledger committed through {committed}"
            return _switch(store, settings, old, created, committed, reason)
        epoch = Epoch(stream, 0, created)
        _record(store, settings, epoch, 0, "first seen")
        return EpochSwitch(epoch)
    if cur.created == created:
        return EpochSwitch(cur)
    reason = f"the stream was created at {created}, the ledger's epoch {cur.number} at {cur.created}"
    return _switch(store, settings, cur, created, committed, reason)


def _switch(store: Store, settings: Settings, old: Epoch, created: str, committed: int, reason: str) -> EpochSwitch:
    archive_stream(store, settings, old.stream, archived_name(old.stream, old.number))
    forget_stream(store, settings, old.stream)
    new = Epoch(old.stream, old.number + 1, created)
    _record(store, settings, new, committed, reason)
    return EpochSwitch(new, reset=reason, previous=old, previous_watermark=committed)
