"""Every statement that reads or writes the ledger's tables (``tables``): the one place their SQL is written.

Writes return SQL text (or run it) so the writer can send a commit's statements as one store call
(``Store.run_statements``); reads take a ``Store``. Streams and tokens are always quoted literals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.lost import CommittedRange, Marker
from marketprism_dagster.ledger.ranges import SeqRange, merge_ranges
from marketprism_dagster.ledger.tables import (
    ALL_TYPES,
    EPOCHS,
    INTENT,
    LEDGER,
    LOST,
    META_TABLES,
    WRITER_META_TABLES,
    MetaTable,
)
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.columns import sql_row
from marketprism_dagster.storage.schema import meta_ddl, meta_migrations
from marketprism_dagster.storage.sql import column_list, insert_sql, sql_str


def _table(settings: Settings, table: MetaTable) -> str:
    return f"`{settings.storage.ledger_database}`.`{table.name}`"


# ---------------------------------------------------------------------------- tables


def ensure_tables(store: Store, settings: Settings) -> None:
    """The meta database, the ledger, intent and epoch tables (``init_schema`` creates the first two too)."""
    db = settings.storage.ledger_database
    with store.session():  # one open for the lot (an embedded store opens per operation otherwise)
        store.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        for table in META_TABLES:
            store.execute(meta_ddl(db, table))
            for sql in meta_migrations(db, table):
                store.execute(sql)


def insert_rows(settings: Settings, table: MetaTable, rows: Iterable[Sequence[Any]], token: str | None = None) -> str:
    """``INSERT ... VALUES`` of rows of wire values in ``table``'s column order (literals derived per column)."""
    return insert_sql(settings.storage.ledger_database, table.name, table.column_names,
                      values=[sql_row(table.columns, r) for r in rows], token=token)


# ---------------------------------------------------------------------------- commit


def intent_sql(settings: Settings, stream: str, first_seq: int, last_seq: int, token: str, now_ms: int) -> str:
    """The intent row: sequences ``first_seq..last_seq`` of ``stream`` may be in flight."""
    return insert_rows(settings, INTENT, [(stream, first_seq, last_seq, now_ms)], token)


def ledger_sql(settings: Settings, rows: Iterable[Sequence[Any]], token: str) -> str:
    """A committed range's ledger rows (``rows.ledger_rows``) in one insert."""
    return insert_rows(settings, LEDGER, rows, token)


# ---------------------------------------------------------------------------- resume


@dataclass(frozen=True, slots=True)
class ResumePoint:
    stream: str
    watermark: int  # highest committed last_seq (0 = nothing yet)
    intent_last_seq: int | None  # sequences watermark + 1 .. this may be partly in the tables (a crash)


def watermark(store: Store, settings: Settings, stream: str) -> int:
    """The highest committed sequence of ``stream`` (0: nothing committed)."""
    value = store.query_value(
        f"SELECT max(last_seq) FROM {_table(settings, LEDGER)} "
        f"WHERE stream = {sql_str(stream)} AND data_type = '{ALL_TYPES}'"
    )
    return int(value or 0)


def resume_point(store: Store, settings: Settings, stream: str) -> ResumePoint:
    w = watermark(store, settings, stream)
    pending = store.query_value(  # an intent declares a horizon: it covers every range it was written before
        f"SELECT max(last_seq) FROM {_table(settings, INTENT)} WHERE stream = {sql_str(stream)} "
        f"AND first_seq <= {w + 1} AND last_seq > {w}"
    )
    p = int(pending) if pending else None
    return ResumePoint(stream, w, p if p and p > w else None)


# ---------------------------------------------------------------------------- proofs and counts


def committed_ranges(store: Store, settings: Settings, stream: str) -> list[SeqRange]:
    """The committed ranges of ``stream``, merged into maximal contiguous ranges."""
    rows = store.query_rows(
        f"SELECT first_seq, max(last_seq) FROM {_table(settings, LEDGER)} "
        f"WHERE stream = {sql_str(stream)} AND data_type = '{ALL_TYPES}' GROUP BY first_seq ORDER BY first_seq"
    )
    return merge_ranges(SeqRange(int(a), int(b)) for a, b in rows)


def committed_rows(store: Store, settings: Settings, stream: str) -> list[CommittedRange]:
    """Every committed range of ``stream`` (its ``'*'`` rows) with the messages it held and its earliest commit."""
    rows = store.query_rows(
        f"SELECT first_seq, last_seq, max(messages), toUnixTimestamp64Milli(min(committed_at)) "
        f"FROM {_table(settings, LEDGER)} WHERE stream = {sql_str(stream)} AND data_type = '{ALL_TYPES}' "
        "GROUP BY first_seq, last_seq ORDER BY first_seq, last_seq"
    )
    return [CommittedRange(int(a), int(b), int(n), int(t)) for a, b, n, t in rows]


def hour_rows(store: Store, settings: Settings, data_type: str, hour_ms: int) -> int:
    """Rows the ledger says were inserted for ``data_type`` with event time in the hour (every stream, epoch)."""
    value = store.query_value(
        f"SELECT sum(rows) FROM {_table(settings, LEDGER)} FINAL "
        f"WHERE data_type = {sql_str(data_type)} AND hour = toDateTime({hour_ms // 1000}, 'UTC')"
    )
    return int(value or 0)


def last_commit_ms(store: Store, settings: Settings, stream: str) -> int | None:
    """When the writer last committed a range of ``stream`` (int ms), None if never."""
    value = store.query_value(
        f"SELECT toUnixTimestamp64Milli(max(committed_at)) FROM {_table(settings, LEDGER)} "
        f"WHERE stream = {sql_str(stream)}"
    )
    return int(value) if value else None


# ---------------------------------------------------------------------------- lost ranges (ledger.lost)


def ensure_lost_table(store: Store, settings: Settings) -> None:
    """The markers' table (the writer creates it with the other meta tables; a store that only ran ``init`` may
    lack it)."""
    db = settings.storage.ledger_database
    # one store call (each read of the markers runs this); the migrations: a table created before a column was
    # added, whose older rows then read as its default
    store.run_statements([f"CREATE DATABASE IF NOT EXISTS `{db}`", meta_ddl(db, LOST), *meta_migrations(db, LOST)])


def _read_markers(store: Store, settings: Settings, where: str) -> list[Marker]:
    ensure_lost_table(store, settings)
    # one row per key; were a range's hour both refilled and accepted, 'accepted' (< 'venue_history') wins: an
    # acceptance never reads as a refill
    rows = store.query_rows(
        "SELECT stream, first_seq, last_seq, any(missing), data_type, toUnixTimestamp(hour) * 1000, max(refilled), "
        "max(held), any(detail), any(source_gaps), min(resolution), toUnixTimestamp64Milli(min(recorded_at)) "
        f"FROM {_table(settings, LOST)} FINAL WHERE {where} "
        "GROUP BY stream, first_seq, last_seq, data_type, hour ORDER BY stream, first_seq, data_type, hour"
    )
    return [Marker(str(s), int(a), int(b), int(m), str(t), int(h), int(r), int(held), str(d), str(g), str(res),
                   int(at)) for s, a, b, m, t, h, r, held, d, g, res, at in rows]


def markers(store: Store, settings: Settings, stream: str, hour_ms: int | None = None) -> list[Marker]:
    """The markers of ``stream`` (of one hour when ``hour_ms`` is given), one per (range, type, hour)."""
    hour = f" AND hour = toDateTime({hour_ms // 1000}, 'UTC')" if hour_ms is not None else ""
    return _read_markers(store, settings, f"stream = {sql_str(stream)}{hour}")


def markers_of(store: Store, settings: Settings, resolution: str) -> list[Marker]:
    """Every stream's markers of one resolution (``ledger.lost.ACCEPTED``: the losses operators accepted)."""
    return _read_markers(store, settings, f"resolution = {sql_str(resolution)}")


def write_markers(store: Store, settings: Settings, marks: Sequence[Marker], now_ms: int) -> None:
    """Insert ``marks``; the token names each (range, type, hour), whatever its resolution, so a repeated marking
    inserts nothing twice (and the table replaces by that key)."""
    if not marks:
        return
    ensure_lost_table(store, settings)
    for m in marks:
        row = (m.stream, m.first, m.last, m.missing, m.data_type, m.hour_ms // 1000, m.refilled, m.held, m.detail,
               m.source_gaps, now_ms, m.resolution)
        token = f"lost:{m.stream}:{m.first}-{m.last}:{m.data_type}:{m.hour_ms}"
        store.execute(insert_rows(settings, LOST, [row], token))


# ---------------------------------------------------------------------------- epochs


def archive_stream(store: Store, settings: Settings, stream: str, archived: str) -> None:
    """Copy ``stream``'s ledger rows under the name ``archived``; the copy's token is fixed, so a repeated
    archive (a crash during an epoch switch) inserts it once."""
    rest = LEDGER.column_names[1:]
    store.execute(insert_sql(
        settings.storage.ledger_database, LEDGER.name, LEDGER.column_names,
        select=f"SELECT {sql_str(archived)}, {column_list(rest)} FROM {_table(settings, LEDGER)} "
               f"WHERE stream = {sql_str(stream)}",
        token=f"epoch-archive:{archived}",
    ))


def forget_stream(store: Store, settings: Settings, stream: str) -> None:
    """Delete ``stream``'s ledger and intent rows (its watermark is 0 again)."""
    for table in WRITER_META_TABLES:
        store.execute(f"ALTER TABLE {_table(settings, table)} DELETE WHERE stream = {sql_str(stream)} "
                      "SETTINGS mutations_sync = 2")


def epoch_rows(store: Store, settings: Settings, stream: str) -> list[tuple[Any, ...]]:
    """(epoch, created) of ``stream``'s newest epoch, or no row."""
    return store.query_rows(
        f"SELECT epoch, argMax(created, recorded_at) FROM {_table(settings, EPOCHS)} "
        f"WHERE stream = {sql_str(stream)} GROUP BY epoch ORDER BY epoch DESC LIMIT 1"
    )


def record_epoch_sql(settings: Settings, stream: str, epoch: int, created: str, previous_watermark: int,
                     reason: str, now_ms: int) -> str:
    return insert_rows(settings, EPOCHS, [(stream, epoch, created, previous_watermark, reason, now_ms)])
