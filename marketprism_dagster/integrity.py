"""Integrity rules as pure functions over a Store and Settings (the seeds' ``manage_all.sh integrity``).

Each rule returns a ``CheckResult``; the Dagster asset checks and ``marketprism integrity``
call the same functions. Times are compared in the database (``timestamp`` = exchange event
time) and returned as int ms UTC so both backends give the same answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from marketprism_dagster import source_gaps as sg
from marketprism_dagster.collector.health import FeedStatus, collector_feed_status
from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.lost import ACCEPTED, Marker, absent_ranges, marked
from marketprism_dagster.ledger.queries import committed_rows, markers
from marketprism_dagster.ledger.ranges import SeqRange, gaps_between, merge_ranges
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.columns import identity_sql

Severity = Literal["ERROR", "WARN"]
HOT_COLD_LAG_WARN_S = 3600
SOURCE_GAP_WINDOW_MS = 86_400_000  # the source_gaps rule looks at the gaps of the last day


@dataclass(frozen=True)
class CheckResult:
    """One rule's verdict. ``severity`` is what a failure means (ERROR fails the run, WARN warns)."""

    check: str
    target: str  # "hot.trade", "cold.trade", "MARKET_DATA", ...
    passed: bool
    severity: Severity
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else ("WARN" if self.severity == "WARN" else "FAIL")


def now_ms() -> int:
    return int(time.time() * 1000)


def configured_types(settings: Settings) -> list[str]:
    """Data types some enabled market collects, in declaration order."""
    wanted = {t for m in settings.enabled_markets().values() for t in m.data_types}
    return [t for t in RECORD_TYPES if t in wanted]


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- several types in one statement
# A checks run asks the same question of every table: one UNION ALL statement answers it for all of
# them (the embedded store then stays a short while in the run's hands instead of one query per type).


@dataclass(frozen=True)
class HotFacts:
    """What window_presence and data_lag read from one hot table."""

    rows_in_window: int
    series_in_window: int
    newest_ms: int | None


def hot_facts(store: Store, settings: Settings, data_types: list[str], *, now: int) -> dict[str, HotFacts]:
    """Rows and series within each type's window (``window_rules``) and its newest event time."""
    if not data_types:
        return {}
    db = settings.storage.hot_database
    parts = []
    for t in data_types:
        since = now - settings.window_rules[t].window_s * 1000
        within = f"timestamp >= fromUnixTimestamp64Milli({since}) AND timestamp <= fromUnixTimestamp64Milli({now})"
        parts.append(
            f"SELECT '{t}' AS t, countIf({within}) AS n, uniqExactIf(exchange, symbol, {within}) AS s, "
            f"if(count() = 0, NULL, toUnixTimestamp64Milli(max(timestamp))) AS newest FROM `{db}`.`{t}`"
        )
    rows = store.query_rows(" UNION ALL ".join(parts))
    return {str(t): HotFacts(int(n), int(s), None if newest is None else int(newest)) for t, n, s, newest in rows}


def newest_by_type(store: Store, database: str, before_ms: dict[str, int | None]) -> dict[str, int | None]:
    """Each type's newest event time (before ``before_ms[type]`` when that is not None)."""
    if not before_ms:
        return {}
    parts = []
    for t, before in before_ms.items():
        where = f" WHERE timestamp < fromUnixTimestamp64Milli({before})" if before is not None else ""
        parts.append(
            f"SELECT '{t}' AS t, if(count() = 0, NULL, toUnixTimestamp64Milli(max(timestamp))) AS newest "
            f"FROM `{database}`.`{t}`{where}"
        )
    return {str(t): None if v is None else int(v) for t, v in store.query_rows(" UNION ALL ".join(parts))}


def duplicate_counts(store: Store, database: str, data_types: list[str], where: str = "") -> dict[str, tuple[int, int]]:
    """(identities stored more than once, extra rows) per type, without FINAL: what is physically stored."""
    if not data_types:
        return {}
    cond = f" WHERE {where}" if where else ""
    parts = []
    for t in data_types:
        ident = identity_sql(RECORD_TYPES[t])
        parts.append(
            f"SELECT '{t}' AS t, count() AS k, sum(c - 1) AS extra FROM (SELECT {ident}, count() AS c "
            f"FROM `{database}`.`{t}`{cond} GROUP BY {ident} HAVING c > 1)"
        )
    return {str(t): (int(k or 0), int(x or 0)) for t, k, x in store.query_rows(" UNION ALL ".join(parts))}


Columns = dict[tuple[str, str], list[tuple[str, str]]]  # (database, table) -> [(name, type)]


def columns_by_table(store: Store, databases: list[str], tables: list[str]) -> Columns:
    """(name, type) of every column of ``databases`` x ``tables``, in order; a missing table is absent."""
    dbs = ", ".join(f"'{d}'" for d in databases)
    names = ", ".join(f"'{t}'" for t in tables)
    out: Columns = {}
    for db, table, name, typ in store.query_rows(
        "SELECT database, table, name, type FROM system.columns "
        f"WHERE database IN ({dbs}) AND table IN ({names}) ORDER BY database, table, position"
    ):
        out.setdefault((str(db), str(table)), []).append((str(name), str(typ)))
    return out


# ---------------------------------------------------------------- window presence and lag


def window_presence(
    store: Store,
    settings: Settings,
    data_type: str,
    *,
    now: int | None = None,
    feeds: FeedStatus | None = None,
    facts: HotFacts | None = None,
) -> CheckResult:
    """Rows must exist within the type's window (trade/orderbook 5 min, liquidation 1 h, others 8 h).

    A sparse type's events are rare (``RecordType.sparse``): an empty window passes while the collector
    reports the type's feeds healthy (``feeds``, from ``collector_feed_status``).
    """
    now = now_ms() if now is None else now
    rule = settings.window_rules[data_type]
    facts = facts or hot_facts(store, settings, [data_type], now=now)[data_type]
    rows, symbols = facts.rows_in_window, facts.series_in_window
    window = _fmt_age(rule.window_s)
    meta: dict[str, Any] = {"rows_in_window": rows, "series_in_window": symbols, "window_s": rule.window_s}
    if rows > 0 or not RECORD_TYPES[data_type].venue_type:  # source_gap: rows are exceptions, none is good
        return CheckResult(
            "recent_window", f"hot.{data_type}", True, "ERROR", f"{rows} rows in the last {window}", meta
        )
    sparse = RECORD_TYPES[data_type].sparse
    if sparse and feeds is not None and feeds.healthy:
        meta["feeds"] = feeds.detail
        return CheckResult(
            "recent_window",
            f"hot.{data_type}",
            True,
            "ERROR",
            f"no {data_type} rows in the last {window}, accepted: the collector reports its {data_type} feeds "
            f"healthy ({feeds.detail})",
            meta,
        )
    why = ""
    if sparse:
        meta["feeds"] = feeds.detail if feeds else "collector did not answer"
        why = f"; {data_type} feeds: {meta['feeds']}"
    return CheckResult(
        "recent_window", f"hot.{data_type}", False, "ERROR", f"no {data_type} rows in the last {window}{why}", meta
    )


def newest_ms(store: Store, database: str, data_type: str, before_ms: int | None = None) -> int | None:
    return newest_by_type(store, database, {data_type: before_ms})[data_type]


def data_lag(
    store: Store, settings: Settings, data_type: str, *, now: int | None = None, facts: HotFacts | None = None
) -> CheckResult:
    """Newest event time vs now: WARN over ``lag_warn_s``, ERROR over ``lag_error_s``."""
    now = now_ms() if now is None else now
    rule = settings.window_rules[data_type]
    newest = facts.newest_ms if facts else newest_ms(store, settings.storage.hot_database, data_type)
    target = f"hot.{data_type}"
    if not RECORD_TYPES[data_type].venue_type:  # source_gap: an old newest row means no gap since
        return CheckResult("data_lag", target, True, "ERROR", f"{data_type}: rows only where gaps were",
                           {"lag_s": None})
    if newest is None:
        return CheckResult("data_lag", target, False, "ERROR", f"no {data_type} rows at all", {"lag_s": None})
    lag_s = max(0.0, (now - newest) / 1000)
    meta = {"lag_s": round(lag_s, 3), "newest_ms": newest, "warn_s": rule.lag_warn_s, "error_s": rule.lag_error_s}
    if lag_s > rule.lag_error_s:
        return CheckResult("data_lag", target, False, "ERROR", f"newest {data_type} is {_fmt_age(lag_s)} old", meta)
    if lag_s > rule.lag_warn_s:
        return CheckResult("data_lag", target, False, "WARN", f"newest {data_type} is {_fmt_age(lag_s)} old", meta)
    return CheckResult("data_lag", target, True, "ERROR", f"newest {data_type} is {_fmt_age(lag_s)} old", meta)


# ---------------------------------------------------------------- duplicates and ledger gaps


def duplicates(
    store: Store,
    settings: Settings,
    data_type: str,
    *,
    database: str | None = None,
    where: str = "",
    counts: tuple[int, int] | None = None,
) -> CheckResult:
    """Rows sharing an identity (without FINAL: what is physically stored). Must be 0."""
    db = database or settings.storage.hot_database
    dup_keys, dup_rows = counts or duplicate_counts(store, db, [data_type], where)[data_type]
    kind = "hot" if db == settings.storage.hot_database else "cold"
    meta = {
        "duplicate_identities": dup_keys,
        "extra_rows": dup_rows,
        "identity": list(RECORD_TYPES[data_type].identity),
    }
    if dup_rows:
        return CheckResult(
            "duplicates",
            f"{kind}.{data_type}",
            False,
            "ERROR",
            f"{dup_rows} extra rows over {dup_keys} identities",
            meta,
        )
    return CheckResult("duplicates", f"{kind}.{data_type}", True, "ERROR", "0 duplicates by identity", meta)


def ledger_gaps(store: Store, settings: Settings, stream: str) -> CheckResult:
    """Committed JetStream sequence ranges must be contiguous and hold every message they span: 0 gaps, 0 absent.

    A gap or absent stretch that a ledger marker names (``ledger.lost``: lost from the stream, its hours refilled
    from the venues' history) is accounted for: listed, not failed. Which hours and types it still keeps from
    sealing, the seal of each hour says."""
    rows = committed_rows(store, settings, stream)
    ranges = merge_ranges(SeqRange(r.first, r.last) for r in rows)
    gaps = gaps_between(ranges)
    absent = absent_ranges(rows)
    marks = markers(store, settings, stream) if gaps or absent else []
    open_gaps = [g for g in gaps if not marked(g.first, g.last, marks)]
    open_absent = [a for a in absent if not marked(a.first, a.last, marks)]
    refills = [m for m in marks if m.resolution != ACCEPTED]
    acceptances = [m for m in marks if m.resolution == ACCEPTED]

    def named(by: list[Marker]) -> list[str]:
        return [f"{g.first}-{g.last}" for g in gaps if marked(g.first, g.last, by)] + [
            f"{a.first}-{a.last} ({a.missing} absent)" for a in absent if marked(a.first, a.last, by)]

    accounted, accepted = named(refills), named(acceptances)
    missing = sum(g.count for g in open_gaps)
    meta: dict[str, Any] = {
        "gaps": len(open_gaps),
        "missing_messages": missing,
        "first_seq": ranges[0].first if ranges else None,
        "last_seq": ranges[-1].last if ranges else None,
        "gap_ranges": [f"{g.first}-{g.last}" for g in open_gaps[:20]],
        "absent_ranges": [a.label() for a in open_absent[:20]],
        "lost_accounted": accounted[:20],
        "lost_accepted": accepted[:20],
    }
    if open_gaps:
        return CheckResult(
            "ledger_gaps",
            stream,
            False,
            "ERROR",
            f"{len(open_gaps)} gaps, {missing} messages never committed; run `marketprism repair` to fetch them "
            "(messages JetStream no longer holds: materialize the hot hours they concern to refill them from "
            "the venues' history)",
            meta,
        )
    if open_absent:
        lost = sum(a.missing for a in open_absent)
        return CheckResult(
            "ledger_gaps",
            stream,
            False,
            "ERROR",
            f"{lost} messages were no longer in JetStream when the writer committed their ranges "
            f"({open_absent[0].label()}, ...); materialize the hot hours they concern to refill them from the "
            "venues' history",
            meta,
        )
    desc = f"seq {ranges[0].first}..{ranges[-1].last} contiguous" if ranges else "nothing committed yet"
    if accounted:
        desc += f"; lost and refilled from venue history: {', '.join(accounted[:5])}"
    if accepted:
        desc += f"; lost, loss accepted by an operator (marketprism accept-loss): {', '.join(accepted[:5])}"
    return CheckResult("ledger_gaps", stream, True, "ERROR", desc, meta)


def recent_source_gaps(store: Store, settings: Settings, *, now: int) -> list[sg.Gap]:
    """The source gaps touching the last day (``SOURCE_GAP_WINDOW_MS``), every type in one statement."""
    return sg.read_gaps(store, settings, now - SOURCE_GAP_WINDOW_MS, now)


def source_gaps(
    store: Store, settings: Settings, data_type: str, *, now: int, gaps: list[sg.Gap] | None = None,
    sealed_at: dict[int, int] | None = None,
) -> CheckResult:
    """Source gaps of the last day: ERROR for a refillable gap still open ``seal.source_gap_grace_s`` after it
    was detected, WARN for unrecoverable ones and for sealed hours whose metadata predates a gap (``sealed_at``:
    hour start -> when it was sealed, where known) (docs/source_gaps.md). ``gaps``: ``recent_source_gaps`` when
    already read."""
    if gaps is None:
        gaps = recent_source_gaps(store, settings, now=now)
    v = sg.check(gaps, data_type, now=now, grace_s=settings.seal.source_gap_grace_s, sealed_at=sealed_at)
    severity: Severity = "WARN" if v.severity == "WARN" else "ERROR"
    return CheckResult("source_gaps", f"hot.{data_type}", v.passed, severity, v.description, v.metadata)


# ---------------------------------------------------------------- hot / cold


def content_digest(store: Store, database: str, data_type: str, where: str) -> tuple[int, int]:
    """(rows, checksum) over the FINAL rows matching ``where``: sum of cityHash64 of each whole row
    (hashed as text so NULLs count: cityHash64 of a NULL argument is NULL and sum() would skip it)."""
    cols = ", ".join(f"`{c}`" for c in RECORD_TYPES[data_type].column_names)
    rows, digest = store.query_rows(
        f"SELECT count(), toString(sum(cityHash64(toString(tuple({cols}))))) "
        f"FROM `{database}`.`{data_type}` FINAL WHERE {where}"
    )[0]
    return int(rows), int(digest or 0)


def time_where(start_ms: int, end_ms: int) -> str:
    """Event time in [start_ms, end_ms)."""
    return f"timestamp >= fromUnixTimestamp64Milli({start_ms}) AND timestamp < fromUnixTimestamp64Milli({end_ms})"


def day_where(day_ms: int) -> str:
    return time_where(day_ms, day_ms + 86_400_000)


def hot_cold_parity(
    store: Store, settings: Settings, data_type: str, day_ms: int, cold: Store | None = None
) -> CheckResult:
    """Hot and cold hold the same rows for the day: equal count and content checksum."""
    st = settings.storage
    where = day_where(day_ms)
    hot_rows, hot_sum = content_digest(store, st.hot_database, data_type, where)
    cold_rows, cold_sum = content_digest(cold or store, st.cold_database, data_type, where)
    meta = {"hot_rows": hot_rows, "cold_rows": cold_rows, "hot_checksum": str(hot_sum), "cold_checksum": str(cold_sum)}
    ok = hot_rows == cold_rows and hot_sum == cold_sum
    desc = f"{hot_rows} rows, checksums equal" if ok else f"hot {hot_rows} rows vs cold {cold_rows}, checksums differ"
    return CheckResult("hot_cold_parity", f"cold.{data_type}", ok, "ERROR", desc, meta)


def hot_cold_lag(
    store: Store,
    settings: Settings,
    data_type: str,
    *,
    horizon_ms: int,
    cold: Store | None = None,
    newest: tuple[int | None, int | None] | None = None,
) -> CheckResult:
    """How far cold trails hot, over the data that could be replicated (event time < ``horizon_ms``,
    the end of the newest fully sealed day). WARN over 60 minutes. ``newest``: (hot newest before the
    horizon, cold newest) when already read."""
    st = settings.storage
    if newest is None:
        newest = (
            newest_ms(store, st.hot_database, data_type, before_ms=horizon_ms),
            newest_ms(cold or store, st.cold_database, data_type),
        )
    hot_newest, cold_newest = newest
    meta: dict[str, Any] = {"hot_newest_ms": hot_newest, "cold_newest_ms": cold_newest, "horizon_ms": horizon_ms}
    target = f"cold.{data_type}"
    if hot_newest is None:
        return CheckResult("hot_cold_lag", target, True, "WARN", "nothing replicable in hot yet", meta)
    lag_s = max(0.0, (hot_newest - (cold_newest or 0)) / 1000) if cold_newest is not None else None
    meta["lag_s"] = lag_s
    if lag_s is None:
        return CheckResult("hot_cold_lag", target, False, "WARN", "cold is empty while hot has replicable rows", meta)
    if lag_s > HOT_COLD_LAG_WARN_S:
        return CheckResult("hot_cold_lag", target, False, "WARN", f"cold trails hot by {_fmt_age(lag_s)}", meta)
    return CheckResult("hot_cold_lag", target, True, "WARN", f"cold trails hot by {_fmt_age(lag_s)}", meta)


def schema_parity(
    store: Store,
    settings: Settings,
    data_type: str,
    cold: Store | None = None,
    columns: Columns | None = None,
) -> CheckResult:
    """Hot and cold tables have identical columns (names, types, order). ``columns``: from
    ``columns_by_table`` when already read (one store)."""
    st = settings.storage
    if columns is not None:
        hot_cols = columns.get((st.hot_database, data_type), [])
        cold_cols = columns.get((st.cold_database, data_type), [])
    else:
        hot_cols = store.table_columns(st.hot_database, data_type)
        cold_cols = (cold or store).table_columns(st.cold_database, data_type)
    differences = [f"{n} {t}" for n, t in sorted(set(hot_cols) ^ set(cold_cols))]
    meta = {"hot_columns": len(hot_cols), "cold_columns": len(cold_cols), "differences": differences}
    if not hot_cols or not cold_cols:
        return CheckResult(
            "schema_parity", f"cold.{data_type}", False, "ERROR", "table missing; run `marketprism init`", meta
        )
    if hot_cols != cold_cols:
        what = ", ".join(differences) or "column order differs"
        return CheckResult("schema_parity", f"cold.{data_type}", False, "ERROR", f"schemas differ: {what}", meta)
    return CheckResult("schema_parity", f"cold.{data_type}", True, "ERROR", f"{len(hot_cols)} columns identical", meta)


# ---------------------------------------------------------------- accepted losses, for the CLI


ACCEPTED_HEADER = ["stream", "seq", "lost_messages", "type", "hours", "accepted_at", "reason"]


def accepted_losses(marks: Iterable[Marker]) -> list[tuple[Any, ...]]:
    """One row per lost range and type whose loss an operator accepted (``ledger.lost.ACCEPTED`` markers): its
    hours (first .. last and how many), when it was first accepted, and the reason."""
    groups: dict[tuple[str, int, int, str], list[Marker]] = {}
    for m in marks:
        if m.resolution == ACCEPTED:
            groups.setdefault((m.stream, m.first, m.last, m.data_type), []).append(m)
    out: list[tuple[Any, ...]] = []
    for (stream, first, last, data_type), ms in sorted(groups.items()):
        hours = sorted(m.hour_ms for m in ms)
        span = _utc(hours[0], "%Y-%m-%d %H:00") + (
            f" .. {_utc(hours[-1], '%Y-%m-%d %H:00')} ({len(hours)} hours)" if len(hours) > 1 else "")
        reasons = sorted({m.detail for m in ms})
        out.append((stream, f"{first}-{last}", ms[0].missing, data_type, span,
                    _utc(min(m.recorded_at_ms for m in ms), "%Y-%m-%dT%H:%M:%S"), "; ".join(reasons)))
    return out


def _utc(ms: int, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(ms / 1000))


# ---------------------------------------------------------------- everything, for the CLI


def run_all(
    store: Store,
    settings: Settings,
    *,
    now: int | None = None,
    horizon_ms: int | None = None,
    feed_status: FeedStatus | Literal["probe"] | None = "probe",
    cold: Store | None = None,
) -> list[CheckResult]:
    """Every rule for every configured type: what ``marketprism integrity`` prints."""
    now = now_ms() if now is None else now
    horizon = horizon_ms if horizon_ms is not None else (now // 86_400_000) * 86_400_000
    results: list[CheckResult] = []
    types = configured_types(settings)
    st = settings.storage
    facts = hot_facts(store, settings, types, now=now)
    dups = duplicate_counts(store, st.hot_database, types)
    hot_newest = newest_by_type(store, st.hot_database, dict.fromkeys(types, horizon))
    cold_newest = newest_by_type(cold or store, st.cold_database, dict.fromkeys(types))
    columns = None if cold is not None else columns_by_table(store, [st.hot_database, st.cold_database], types)
    for t in types:
        feeds = None
        if RECORD_TYPES[t].sparse:
            feeds = collector_feed_status(settings, t) if feed_status == "probe" else feed_status
        results.append(window_presence(store, settings, t, now=now, feeds=feeds, facts=facts[t]))
        results.append(data_lag(store, settings, t, now=now, facts=facts[t]))
        results.append(duplicates(store, settings, t, counts=dups[t]))
        newest = (hot_newest[t], cold_newest[t])
        results.append(hot_cold_lag(store, settings, t, horizon_ms=horizon, cold=cold, newest=newest))
        results.append(schema_parity(store, settings, t, cold=cold, columns=columns))
    for stream in sorted({s for t in configured_types(settings) if (s := settings.stream_for(t)) is not None}):
        results.append(ledger_gaps(store, settings, stream))
    gaps = recent_source_gaps(store, settings, now=now)
    results.extend(source_gaps(store, settings, t, now=now, gaps=gaps) for t in types if RECORD_TYPES[t].venue_type)
    return results


def all_passed(results: Iterable[CheckResult]) -> bool:
    """Exit-0 rule of ``marketprism integrity``: every ERROR rule passes (WARNs are reported only)."""
    return all(r.passed or r.severity == "WARN" for r in results)
