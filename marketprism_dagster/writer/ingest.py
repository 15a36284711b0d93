"""Commit one contiguous JetStream sequence range into the hot tables: the writer's reusable core.

``commit_batch(store, settings, stream, messages)`` decodes the messages, sets aside the
poison ones (with a reason), inserts the good records per table with a deduplication token
derived from the sequence range, and then writes the ledger. The hot writer calls it (in
two steps, ``prepare_batch`` + ``commit_prepared``, so it can publish dead letters between
them); the seal/repair path calls it with messages it re-read from JetStream.

Exactly once, the argument
--------------------------
Definitions: per stream, the *watermark* W is the highest ``last_seq`` of the stream's
``'*'`` rows in ``marketprism_meta.ingest_ledger`` (``ledger.queries.watermark``). The writer commits ranges strictly in
order: the next range always starts at W + 1 and contains every message of the stream
between its first and last sequence (sequences the stream no longer holds are recorded
as absent: ``messages`` < ``last_seq - first_seq + 1``). So ledger ranges tile 1..W with no gap
and no overlap, and the ledger alone says which sequences are in the tables.

A commit of range [a, b] is, in this order:

1. an *intent* row (a, h) in ``marketprism_meta.ingest_intent`` (``ledger.tables.INTENT``), h >= b: "sequences up to
   h may be in flight". The hot writer declares a *horizon* h = b + ``writer.batch_size`` and writes the
   next intent only when a range passes it, so at low rates one intent covers minutes of ranges instead
   of costing an insert (a part to write and merge) per range;
2. dead letters published to JetStream and acknowledged by the server (writer only);
3. one insert per table, token ``f"{stream}:{a}-{b}:{data_type}"``;
4. the ledger rows (``'*'`` plus one per (data_type, hour): ``ledger.rows``) in one insert;
5. the JetStream ack (AckPolicy.ALL on the highest delivered message of the range).

Steps 1, 3 and 4 reach the store as one call (embedded: one chDB multi-statement query). Its
statements still run one by one, in this order, and stop at the first that fails, so every case
below holds as if they were separate calls.

A crash can happen between any two steps, and JetStream redelivers everything not acked.

* Crash before 1, or after 4: nothing of [a, b] is in the tables (before 1), or all of it
  and the ledger says so (after 4). On restart W is read from the ledger; redelivered
  messages at or below W are acknowledged without insert; the rest are new work.
* Crash between 1 and 4: the tables may hold any subset of the range (a table insert is
  atomic per part, but several tables and partitions are several parts), the ledger does
  not. Ranges are committed one at a time, so only sequences in W + 1 .. h of an intent
  with ``first_seq <= W + 1 <= last_seq`` can be partly in the tables. On restart every range
  that starts at or below that h is committed in *recovery* mode (however the ranges are
  grouped now: recovery mode is correct for any grouping): for each table the identities of
  the batch already present in the table (looked up in the batch's time range) are removed,
  and only the rest is inserted; the insert tokens are fresh. This does not trust
  ClickHouse's insert-deduplication log to have survived the crash (a kill between its
  log append and the part rename would otherwise make the retry look like a duplicate
  and drop it); it trusts only the rows that are there.
* Duplicates in flight within one process (a retry after StoreUnavailable, a server
  timeout after the insert landed) reuse the same prepared batch and tokens, and
  ClickHouse drops the repeated block (``non_replicated_deduplication_window``).
* AckPolicy.ALL is safe because the writer acks sequence b only after every sequence
  <= b is in the ledger: the implicit acks it gives never cover uncommitted messages.
  One writer per durable consumer is required (two would race on W).

So after any sequence of kills, each sequence <= W is in the tables exactly once, and
sequences > W are still unacknowledged in JetStream.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import pyarrow as pa
import structlog

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.ledger.queries import ensure_tables, intent_sql, ledger_sql
from marketprism_dagster.ledger.rows import TypeRows, ledger_rows
from marketprism_dagster.records import RECORD_TYPES, RecordType, Wire, decode, subject, to_columns
from marketprism_dagster.storage.base import ArrowInsert, Store
from marketprism_dagster.storage.columns import to_arrow
from marketprism_dagster.storage.sql import insert_sql, sql_str, values_rows
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.validation import fault
from marketprism_dagster.writer.epoch import token_stream

log = structlog.get_logger(__name__)


def ensure_writer_tables(store: Store, settings: Settings) -> None:
    """The writer's meta tables (ledger, intent, epochs; also created by ``init_schema``; idempotent)."""
    ensure_tables(store, settings)


# ---------------------------------------------------------------------------- data shapes


@dataclass(frozen=True, slots=True)
class Poison:
    """A message that cannot become a row: dead-lettered with ``reason`` (``kind`` is the metric label)."""

    message: StreamMessage
    kind: str
    reason: str


@dataclass
class TableBatch:
    data_type: str
    records: list[Any]
    table: pa.Table
    token: str


@dataclass
class PreparedBatch:
    """A decoded range, ready to commit. ``first_seq``/``last_seq`` bound the range even if ends are absent."""

    stream: str
    first_seq: int
    last_seq: int
    messages: int
    tables: dict[str, TableBatch] = field(default_factory=dict)
    poison: list[Poison] = field(default_factory=list)
    epoch: int = 0  # the stream's ledger epoch (see ``epoch``): part of every token

    @property
    def rows(self) -> int:
        return sum(t.table.num_rows for t in self.tables.values())

    @property
    def range_token(self) -> str:
        return f"{token_stream(self.stream, self.epoch)}:{self.first_seq}-{self.last_seq}"


@dataclass
class BatchResult:
    stream: str
    first_seq: int
    last_seq: int
    messages: int
    rows_by_table: dict[str, int]
    poison: list[Poison]
    recovered: bool = False  # committed in recovery mode
    skipped_existing: int = 0  # recovery mode: rows already present, not reinserted
    insert_seconds: float = 0.0
    inserted_by_table: dict[str, int] = field(default_factory=dict)  # rows sent (recovery: only the missing)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_table.values())


def data_token(stream: str, first_seq: int, last_seq: int, data_type: str) -> str:
    return f"{stream}:{first_seq}-{last_seq}:{data_type}"


# ---------------------------------------------------------------------------- decoding


def classify(msg: StreamMessage) -> tuple[str, Any] | Poison:
    """(data_type, record) or the reason the message cannot be stored."""
    data_type = msg.subject.split(".", 1)[0]
    if data_type not in RECORD_TYPES:
        return Poison(msg, "unknown_data_type", f"subject {msg.subject!r} names no known data type")
    try:
        record = decode(msg.data, data_type)
    except msgspec.ValidationError as exc:
        return Poison(msg, "schema_invalid", f"{data_type}: {exc}")
    except msgspec.DecodeError as exc:
        return Poison(msg, "undecodable", f"not JSON: {exc}")
    expected = subject(record)
    if expected != msg.subject:
        return Poison(msg, "subject_mismatch", f"record belongs on {expected!r}, arrived on {msg.subject!r}")
    # the semantic rules (validation.py): a value Arrow would wrap (beyond Decimal(38, 18)) or that cannot be
    # true (a negative price, a crossed book) is dead-lettered with the rule, never stored
    broken = fault(record)
    if broken is not None:
        column = broken.split(":", 1)[0]
        value = repr(getattr(record, column, None))
        if len(value) > 120:
            value = value[:120] + "..."
        kind = "schema_invalid" if broken.endswith(":time_range") else "invalid_value"  # times: as before
        return Poison(msg, kind, f"{data_type}.{broken}: {value}")
    return data_type, record


def _arrow_or_poison(
    data_type: str, pairs: list[tuple[StreamMessage, Any]]
) -> tuple[pa.Table, list[Any], list[Poison]]:
    """Typed Arrow for the records; a record Arrow rejects (bad decimal, overflow) becomes poison."""
    records = [r for _, r in pairs]
    try:
        return to_arrow(data_type, to_columns(data_type, records)), records, []
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    good: list[Any] = []
    poison: list[Poison] = []
    for msg, rec in pairs:
        try:
            to_arrow(data_type, to_columns(data_type, [rec]))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            poison.append(Poison(msg, "invalid_value", f"{data_type}: {type(exc).__name__}: {exc}"))
        else:
            good.append(rec)
    return to_arrow(data_type, to_columns(data_type, good)), good, poison


def prepare_batch(stream: str, messages: Sequence[StreamMessage], first_seq: int | None = None,
                  last_seq: int | None = None, epoch: int = 0) -> PreparedBatch:
    """Decode and classify a contiguous range; pure (no I/O).

    ``first_seq``/``last_seq`` default to the messages' extremes; pass them when the range's
    ends are sequences the stream no longer holds, so the ledger still tiles the sequence space.
    """
    if not messages and (first_seq is None or last_seq is None):
        raise ValueError("an empty batch needs explicit first_seq and last_seq")
    seqs = [m.seq for m in messages]
    lo = min(seqs) if first_seq is None else first_seq
    hi = max(seqs) if last_seq is None else last_seq
    if seqs and (min(seqs) < lo or max(seqs) > hi):
        raise ValueError(f"messages {min(seqs)}..{max(seqs)} fall outside the range {lo}..{hi}")
    batch = PreparedBatch(stream, lo, hi, len(messages), epoch=epoch)
    by_type: dict[str, list[tuple[StreamMessage, Any]]] = defaultdict(list)
    for msg in messages:
        out = classify(msg)
        if isinstance(out, Poison):
            batch.poison.append(out)
        else:
            by_type[out[0]].append((msg, out[1]))
    for data_type, pairs in by_type.items():
        table, records, poison = _arrow_or_poison(data_type, pairs)
        batch.poison.extend(poison)
        if records:
            token = data_token(token_stream(stream, epoch), lo, hi, data_type)
            batch.tables[data_type] = TableBatch(data_type, records, table, token)
    return batch


# ---------------------------------------------------------------------------- committing


def _ledger_sql(settings: Settings, batch: PreparedBatch, token: str) -> str:
    types = [TypeRows(data_type, tb.token, (r.timestamp for r in tb.records)) for data_type, tb in batch.tables.items()]
    rows = ledger_rows(batch.stream, batch.first_seq, batch.last_seq, batch.messages, len(batch.poison),
                       batch.range_token, types, now_ms())
    return ledger_sql(settings, rows, token)


def _identity_select(rt: RecordType) -> str:
    parts = []
    for name in rt.identity:
        wire = rt.column(name).wire
        if wire in (Wire.TIME_MS, Wire.OPT_TIME_MS):
            parts.append(f"toUnixTimestamp64Milli(`{name}`)")
        else:
            parts.append(f"`{name}`")
    return ", ".join(parts)


def _key_value(wire: Wire, value: Any) -> Any:
    if wire in (Wire.DECIMAL, Wire.OPT_DECIMAL) and value is not None:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return str(value)
    if wire in (Wire.TIME_MS, Wire.OPT_TIME_MS, Wire.UINT) and value is not None:
        return int(value)
    return value


def identity_key(rt: RecordType, record: Any) -> tuple[Any, ...]:
    return tuple(_key_value(rt.column(n).wire, getattr(record, n)) for n in rt.identity)


def existing_identities(store: Store, database: str, data_type: str, records: Iterable[Any]) -> set[tuple[Any, ...]]:
    """Identities among ``records`` already present in ``database.data_type`` (no FINAL needed)."""
    rt = RECORD_TYPES[data_type]
    recs = list(records)
    if not recs:
        return set()
    lo = min(r.timestamp for r in recs)
    hi = max(r.timestamp for r in recs)
    exchanges = sorted({r.exchange for r in recs})
    symbols = sorted({r.symbol for r in recs})
    sql = (
        f"SELECT {_identity_select(rt)} FROM `{database}`.`{data_type}` "
        f"WHERE `timestamp` BETWEEN fromUnixTimestamp64Milli({lo}) AND fromUnixTimestamp64Milli({hi}) "
        f"AND `exchange` IN ({', '.join(sql_str(e) for e in exchanges)}) "
        f"AND `symbol` IN ({', '.join(sql_str(s) for s in symbols)})"
    )
    wires = [rt.column(n).wire for n in rt.identity]
    wanted = {identity_key(rt, r) for r in recs}
    found = set()
    for row in store.query_rows(sql):
        key = tuple(_key_value(w, v) for w, v in zip(wires, row, strict=True))
        if key in wanted:
            found.add(key)
    return found


# A small range lands through INSERT ... VALUES: about 3.7 ms of chDB CPU per statement against 12 ms
# through an Arrow scan (5 trade rows, measured). Large ranges, where the Arrow scan's ~1M rows/s wins,
# and order books (800 levels a row) go through Arrow.
VALUES_MAX_ROWS = 256


def _table_step(database: str, tb: TableBatch) -> str | ArrowInsert:
    rows = values_rows(tb.table) if tb.table.num_rows <= VALUES_MAX_ROWS else None
    if rows is None:
        return ArrowInsert(database, tb.data_type, tb.table, tb.token)
    return insert_sql(database, tb.data_type, tb.table.column_names, values=rows, token=tb.token)


def _intent_sql(settings: Settings, stream: str, first_seq: int, last_seq: int, epoch: int = 0) -> str:
    token = f"intent:{token_stream(stream, epoch)}:{first_seq}-{last_seq}"
    return intent_sql(settings, stream, first_seq, last_seq, token, now_ms())


def write_intent(store: Store, settings: Settings, stream: str, first_seq: int, last_seq: int,
                 epoch: int = 0) -> None:
    store.execute(_intent_sql(settings, stream, first_seq, last_seq, epoch))


def commit_prepared(store: Store, settings: Settings, batch: PreparedBatch, *, recovery: bool = False,
                    intent: bool = True, horizon: int | None = None) -> BatchResult:
    """Steps 1, 3 and 4 of the module docstring for a prepared batch. Raises StoreUnavailable untouched.

    ``intent=False`` when an earlier intent already covers ``batch.last_seq``; ``horizon`` (default: the
    batch's last sequence) is the end the intent declares.

    ``recovery=True`` inserts only the identities not already in the tables (used for the range
    a crashed writer left in flight, and by the repair path, which re-commits a range whose
    history is unknown); a retry of the same prepared batch in one process can use either mode.
    """
    started = time.perf_counter()
    hot = settings.storage.hot_database
    ledger_token = f"ledger:{batch.range_token}"
    rows_by_table = {data_type: tb.table.num_rows for data_type, tb in batch.tables.items()}
    if not recovery:
        # Steps 1, 3 and 4 as ONE call to the store (embedded: one chDB multi-statement query). The statements
        # still run one by one in this order and the first failure stops the rest, so a crash or an error
        # leaves the same states as separate calls would (the docstring's argument is unchanged); what is
        # saved is the fixed cost of a call per statement.
        steps: list[str | ArrowInsert] = []
        if intent:
            steps.append(_intent_sql(settings, batch.stream, batch.first_seq, max(batch.last_seq, horizon or 0),
                                     batch.epoch))
        steps.extend(_table_step(hot, tb) for _, tb in sorted(batch.tables.items()))
        steps.append(_ledger_sql(settings, batch, ledger_token))
        store.run_statements(steps)
        return BatchResult(stream=batch.stream, first_seq=batch.first_seq, last_seq=batch.last_seq,
                           messages=batch.messages, rows_by_table=rows_by_table, poison=list(batch.poison),
                           insert_seconds=time.perf_counter() - started, inserted_by_table=dict(rows_by_table))
    if intent:
        write_intent(store, settings, batch.stream, batch.first_seq, max(batch.last_seq, horizon or 0), batch.epoch)
    skipped = 0
    inserted: dict[str, int] = {}
    for data_type, tb in sorted(batch.tables.items()):  # recovery mode: only the identities not yet present
        rt = RECORD_TYPES[data_type]
        present = existing_identities(store, hot, data_type, tb.records)
        missing = [r for r in tb.records if identity_key(rt, r) not in present]
        skipped += len(tb.records) - len(missing)
        inserted[data_type] = len(missing)
        if missing:
            # a fresh token: the crashed attempt's token may sit in the dedup log without its part
            store.insert(hot, data_type, to_columns(data_type, missing),
                         dedup_token=f"{tb.token}:recover:{uuid.uuid4().hex}")
    ledger_token += f":recover:{uuid.uuid4().hex}"
    store.execute(_ledger_sql(settings, batch, ledger_token))
    return BatchResult(
        stream=batch.stream,
        first_seq=batch.first_seq,
        last_seq=batch.last_seq,
        messages=batch.messages,
        rows_by_table=rows_by_table,
        poison=list(batch.poison),
        recovered=recovery,
        skipped_existing=skipped,
        insert_seconds=time.perf_counter() - started,
        inserted_by_table=inserted,
    )


def commit_batch(
    store: Store,
    settings: Settings,
    stream: str,
    messages: Sequence[StreamMessage],
    *,
    first_seq: int | None = None,
    last_seq: int | None = None,
    recovery: bool = True,
    on_poison: Callable[[list[Poison]], None] | None = None,
) -> BatchResult:
    """Decode, classify, insert per table with range tokens, and write the ledger.

    ``messages`` must be every message the stream holds in ``first_seq..last_seq`` (defaults:
    the messages' extremes). Poison messages are returned in ``BatchResult.poison`` with their
    reason; ``on_poison`` (if given) is called with them BEFORE the ledger is written, so a
    caller that dead-letters them cannot lose them to a crash. ``recovery=True`` (the default,
    right for the repair path) never inserts an identity that is already present.
    Raises ``StoreUnavailable`` when the store cannot be reached; nothing is half-recorded in
    the ledger then, and calling again with the same arguments is safe.
    """
    batch = prepare_batch(stream, messages, first_seq, last_seq)
    if batch.poison and on_poison is not None:
        on_poison(batch.poison)
    return commit_prepared(store, settings, batch, recovery=recovery)
