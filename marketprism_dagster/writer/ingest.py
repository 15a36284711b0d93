"""Commit one contiguous JetStream sequence range into the hot tables: the writer's reusable core.

``commit_batch(store, settings, stream, messages)`` decodes the messages, sets aside the
poison ones (with a reason), inserts the good records per table with a deduplication token
derived from the sequence range, and then writes the ledger. The hot writer calls it (in
two steps, ``prepare_batch`` + ``commit_prepared``, so it can publish dead letters between
them); the seal/repair path calls it with messages it re-read from JetStream.

Exactly once, the argument
--------------------------
Definitions: per stream, the *watermark* W is the highest ``last_seq`` of the stream's
``'*'`` rows in ``marketprism_meta.ingest_ledger``. The writer commits ranges strictly in
order: the next range always starts at W + 1 and contains every message of the stream
between its first and last sequence (sequences the stream no longer holds are recorded
as absent: ``messages`` < ``last_seq - first_seq + 1``). So ledger ranges tile 1..W with no gap
and no overlap, and the ledger alone says which sequences are in the tables.

A commit of range [a, b] is, in this order:

1. an *intent* row (a, h) in ``marketprism_meta.ingest_intent`` (``INTENT_TABLE``), h >= b: "sequences up to
   h may be in flight". The hot writer declares a *horizon* h = b + ``writer.batch_size`` and writes the
   next intent only when a range passes it, so at low rates one intent covers minutes of ranges instead
   of costing an insert (a part to write and merge) per range;
2. dead letters published to JetStream and acknowledged by the server (writer only);
3. one insert per table, token ``f"{stream}:{a}-{b}:{data_type}"``;
4. the ledger rows (``'*'`` plus one per (data_type, hour)) in one insert;
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
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import pyarrow as pa
import structlog

from marketprism_dagster.config import Settings
from marketprism_dagster.records import RECORD_TYPES, RecordType, Wire, decode, subject, to_columns
from marketprism_dagster.storage.base import ArrowInsert, Store
from marketprism_dagster.storage.columns import to_arrow
from marketprism_dagster.storage.schema import INTENT_TABLE, LEDGER_TABLE, intent_ddl, ledger_ddl
from marketprism_dagster.validation import fault
from marketprism_dagster.writer.epoch import ensure_epoch_table, token_stream

log = structlog.get_logger(__name__)

ALL_TYPES = "*"  # the ledger's per-batch row


_LEDGER_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("first_seq", pa.uint64()),
        ("last_seq", pa.uint64()),
        ("data_type", pa.string()),
        ("hour", pa.timestamp("s", tz="UTC")),
        ("messages", pa.uint64()),
        ("rows", pa.uint64()),
        ("dead_letters", pa.uint64()),
        ("min_ts", pa.timestamp("ms", tz="UTC")),
        ("max_ts", pa.timestamp("ms", tz="UTC")),
        ("token", pa.string()),
        ("committed_at", pa.timestamp("ms", tz="UTC")),
    ]
)
_INTENT_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("first_seq", pa.uint64()),
        ("last_seq", pa.uint64()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def ensure_writer_tables(store: Store, settings: Settings) -> None:
    """The ledger and intent tables (also created by ``init_schema``; idempotent)."""
    db = settings.storage.ledger_database
    store.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    store.execute(ledger_ddl(db))
    store.execute(intent_ddl(db))
    ensure_epoch_table(store, settings)


# ---------------------------------------------------------------------------- data shapes


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One JetStream message as the writer sees it, whatever delivered it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    raw_headers: bytes | None = None  # as received (raw pull consumer); parsed only when needed

    def header_map(self) -> dict[str, str] | None:
        if self.headers is not None or not self.raw_headers:
            return self.headers
        from marketprism_dagster.writer.pull import parse_headers

        return parse_headers(self.raw_headers)


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ledger_rows(batch: PreparedBatch) -> pa.Table:
    now = _now_ms()
    cols: dict[str, list[Any]] = {name: [] for name in _LEDGER_SCHEMA.names}

    def add(data_type: str, hour_s: int, messages: int, rows: int, dead: int, lo: int | None, hi: int | None,
            token: str) -> None:
        for k, v in (
            ("stream", batch.stream),
            ("first_seq", batch.first_seq),
            ("last_seq", batch.last_seq),
            ("data_type", data_type),
            ("hour", hour_s),
            ("messages", messages),
            ("rows", rows),
            ("dead_letters", dead),
            ("min_ts", lo),
            ("max_ts", hi),
            ("token", token),
            ("committed_at", now),
        ):
            cols[k].append(v)

    all_lo: int | None = None
    all_hi: int | None = None
    per_hour: list[tuple[str, int, int, int, int, str]] = []
    for data_type, tb in sorted(batch.tables.items()):
        groups: dict[int, list[int]] = {}
        for rec in tb.records:
            ts = rec.timestamp
            hour = ts // 3_600_000 * 3600
            g = groups.get(hour)
            if g is None:
                groups[hour] = [1, ts, ts]
            else:
                g[0] += 1
                if ts < g[1]:
                    g[1] = ts
                if ts > g[2]:
                    g[2] = ts
        for hour, (n, lo, hi) in sorted(groups.items()):
            per_hour.append((data_type, hour, n, lo, hi, tb.token))
            all_lo = lo if all_lo is None else min(all_lo, lo)
            all_hi = hi if all_hi is None else max(all_hi, hi)
    star_hour = (all_lo // 3_600_000 * 3600) if all_lo is not None else 0
    add(ALL_TYPES, star_hour, batch.messages, batch.rows, len(batch.poison), all_lo, all_hi,
        f"{batch.range_token}:{ALL_TYPES}")
    for data_type, hour, n, lo, hi, token in per_hour:
        add(data_type, hour, 0, n, 0, lo, hi, token)
    return pa.table(cols, schema=_LEDGER_SCHEMA)


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


def _sql_str(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
        f"AND `exchange` IN ({', '.join(_sql_str(e) for e in exchanges)}) "
        f"AND `symbol` IN ({', '.join(_sql_str(s) for s in symbols)})"
    )
    wires = [rt.column(n).wire for n in rt.identity]
    wanted = {identity_key(rt, r) for r in recs}
    found = set()
    for row in store.query_rows(sql):
        key = tuple(_key_value(w, v) for w, v in zip(wires, row, strict=True))
        if key in wanted:
            found.add(key)
    return found


def _ms_literal(ms: int | None) -> str:
    if ms is None:
        return "NULL"
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return f"'{dt:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d}'"


def values_insert_sql(database: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[str]],
                      token: str) -> str:
    """``INSERT ... VALUES`` with a deduplication token: ~3 ms in chDB against ~9 ms through an Arrow scan."""
    cols = ", ".join(f"`{c}`" for c in columns)
    values = ", ".join("(" + ", ".join(r) + ")" for r in rows)
    return (f"INSERT INTO `{database}`.`{table}` ({cols}) "
            f"SETTINGS insert_deduplicate = 1, insert_deduplication_token = {_sql_str(token)} VALUES {values}")


# A small range lands through INSERT ... VALUES: about 3.7 ms of chDB CPU per statement against 12 ms
# through an Arrow scan (5 trade rows, measured). Large ranges, where the Arrow scan's ~1M rows/s wins,
# and order books (800 levels a row) go through Arrow.
VALUES_MAX_ROWS = 256


def _column_literals(col: pa.ChunkedArray) -> list[str] | None:
    """SQL literals of a typed Arrow column (values already checked by Arrow); None for a type
    this path does not write (lists: the order book levels)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_timestamp(t):
        return [_ms_literal(v) for v in col.cast(pa.int64()).to_pylist()]
    if pa.types.is_decimal(t):
        return ["NULL" if v is None else format(v, "f") for v in col.to_pylist()]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ["NULL" if v is None else _sql_str(v) for v in col.to_pylist()]
    if pa.types.is_integer(t):
        return ["NULL" if v is None else str(v) for v in col.to_pylist()]
    return None


def values_rows(table: pa.Table) -> list[list[str]] | None:
    """The rows of ``table`` as SQL literals, or None when a column cannot be written that way."""
    columns = []
    for col in table.columns:
        literals = _column_literals(col)
        if literals is None:
            return None
        columns.append(literals)
    return [list(row) for row in zip(*columns, strict=True)]


def _table_step(database: str, tb: TableBatch) -> str | ArrowInsert:
    rows = values_rows(tb.table) if tb.table.num_rows <= VALUES_MAX_ROWS else None
    if rows is None:
        return ArrowInsert(database, tb.data_type, tb.table, tb.token)
    return values_insert_sql(database, tb.data_type, tb.table.column_names, rows, tb.token)


def intent_sql(settings: Settings, stream: str, first_seq: int, last_seq: int, epoch: int = 0) -> str:
    row = (_sql_str(stream), str(first_seq), str(last_seq), _ms_literal(_now_ms()))
    return values_insert_sql(settings.storage.ledger_database, INTENT_TABLE, _INTENT_SCHEMA.names, [row],
                             f"intent:{token_stream(stream, epoch)}:{first_seq}-{last_seq}")


def write_intent(store: Store, settings: Settings, stream: str, first_seq: int, last_seq: int,
                 epoch: int = 0) -> None:
    store.execute(intent_sql(settings, stream, first_seq, last_seq, epoch))


def _ledger_values(table: pa.Table) -> list[list[str]]:
    out = []
    for row in table.to_pylist():
        vals = []
        for name in _LEDGER_SCHEMA.names:
            v = row[name]
            if name in ("stream", "data_type", "token"):
                vals.append(_sql_str(v))
            elif name == "hour":
                vals.append(f"'{v:%Y-%m-%d %H:%M:%S}'")
            elif name in ("min_ts", "max_ts", "committed_at"):
                vals.append("NULL" if v is None else _ms_literal(int(v.timestamp() * 1000)))
            else:
                vals.append(str(int(v)))
        out.append(vals)
    return out


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
            steps.append(intent_sql(settings, batch.stream, batch.first_seq, max(batch.last_seq, horizon or 0),
                                    batch.epoch))
        steps.extend(_table_step(hot, tb) for _, tb in sorted(batch.tables.items()))
        steps.append(values_insert_sql(settings.storage.ledger_database, LEDGER_TABLE, _LEDGER_SCHEMA.names,
                                       _ledger_values(_ledger_rows(batch)), ledger_token))
        store.run_statements(steps)
        return BatchResult(stream=batch.stream, first_seq=batch.first_seq, last_seq=batch.last_seq,
                           messages=batch.messages, rows_by_table=rows_by_table, poison=list(batch.poison),
                           insert_seconds=time.perf_counter() - started)
    if intent:
        write_intent(store, settings, batch.stream, batch.first_seq, max(batch.last_seq, horizon or 0), batch.epoch)
    skipped = 0
    for data_type, tb in sorted(batch.tables.items()):  # recovery mode: only the identities not yet present
        rt = RECORD_TYPES[data_type]
        present = existing_identities(store, hot, data_type, tb.records)
        missing = [r for r in tb.records if identity_key(rt, r) not in present]
        skipped += len(tb.records) - len(missing)
        if missing:
            # a fresh token: the crashed attempt's token may sit in the dedup log without its part
            store.insert(hot, data_type, to_columns(data_type, missing),
                         dedup_token=f"{tb.token}:recover:{uuid.uuid4().hex}")
    ledger_token += f":recover:{uuid.uuid4().hex}"
    store.execute(values_insert_sql(settings.storage.ledger_database, LEDGER_TABLE, _LEDGER_SCHEMA.names,
                                    _ledger_values(_ledger_rows(batch)), ledger_token))
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


# ---------------------------------------------------------------------------- resuming


@dataclass(frozen=True, slots=True)
class ResumePoint:
    stream: str
    watermark: int  # highest committed last_seq (0 = nothing yet)
    intent_last_seq: int | None  # sequences watermark + 1 .. this may be partly in the tables (a crash)


def resume_point(store: Store, settings: Settings, stream: str) -> ResumePoint:
    meta = settings.storage.ledger_database
    s = _sql_str(stream)
    watermark = store.query_value(
        f"SELECT max(last_seq) FROM `{meta}`.`{LEDGER_TABLE}` WHERE stream = {s} AND data_type = '{ALL_TYPES}'"
    )
    w = int(watermark or 0)
    pending = store.query_value(  # an intent declares a horizon: it covers every range it was written before
        f"SELECT max(last_seq) FROM `{meta}`.`{INTENT_TABLE}` WHERE stream = {s} AND first_seq <= {w + 1} "
        f"AND last_seq > {w}"
    )
    p = int(pending) if pending else None
    return ResumePoint(stream, w, p if p and p > w else None)
