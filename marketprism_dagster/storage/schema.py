"""DDL for hot, cold and meta databases, derived from the column declarations (records, ledger tables)."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.tables import WRITER_META_TABLES, MetaTable
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.columns import TableSettings, ch_type, create_table_sql, sql_row, table_ddl

log = structlog.get_logger(__name__)

def meta_ddl(database: str, table: MetaTable) -> str:
    """The DDL of one of the ingest ledger's tables (``ledger.tables``), derived from its columns."""
    return table_ddl(database, table.name, table.columns, order_by=table.order_by, ttl=table.ttl,
                     settings=table.settings)


def meta_migrations(database: str, table: MetaTable) -> list[str]:
    """The ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` of each column added to ``table`` after its first release
    (``MetaTable.added``), with the default its older rows read as; a no-op on a table that has them."""
    by_name = {c.name: c for c in table.columns}
    out = []
    for name, value in table.added:
        col = by_name[name]
        (literal,) = sql_row([col], [value])
        out.append(f"ALTER TABLE `{database}`.`{table.name}` ADD COLUMN IF NOT EXISTS `{name}` {ch_type(col)} "
                   f"DEFAULT {literal}")
    return out


# MergeTree settings of the tables the hot writer inserts into about once a second (the hot tables, the ledger
# and the intents), as SQL literals:
# * old parts are cleaned every 10 s instead of every second (a background task per table);
# * merges are chosen by level (merge_selector_algorithm 'Trivial': ten adjacent parts whose levels do not
#   decrease merge into one of the next level), so a part is rewritten once per level, log10 of the inserts. The
#   default selector adds a fixed 5 MB to every part's size, so one small insert after another looks as large as
#   a partition's big part, and it rewrote that part with a few small ones every few seconds until the part
#   passed ~6 MB (the day's order book: ~200 MB uncompressed) and kept doing so for the next tier: merge threads
#   grew with the day's partition (7-12% of a core). 8 minutes at 50 rows/s, three runs side by side: merge
#   threads 1.46% of a core with the default selector, 0.46% with 'Trivial', at most ~45 parts per partition.
#   merge_selector_base = 100 (0.29% in the same run) was left out: past ~50 parts the base falls to 2 whatever
#   its value and the big part is rewritten with every ~40 small ones until it reaches 48 x 5 MB.
# Tried and left out: min_parts_to_merge_at_once = 10 (every merge rewrote the big part with ten small ones).
WRITER_TABLE_SETTINGS: dict[str, str] = {
    "merge_tree_clear_old_parts_interval_seconds": "10",
    "merge_selector_algorithm": "'Trivial'",
}


def writer_tables(settings: Settings) -> list[tuple[str, str]]:
    """(database, table) of every table the hot writer inserts into."""
    st = settings.storage
    return [(st.hot_database, name) for name in RECORD_TYPES] + [
        (st.ledger_database, t.name) for t in WRITER_META_TABLES]


def apply_writer_table_settings(store: Store, settings: Settings) -> list[str]:
    """Give the writer's tables ``WRITER_TABLE_SETTINGS`` where they do not have them yet; the tables changed.

    A server that does not know a setting (an older ClickHouse) keeps its defaults: logged, never fatal."""
    wanted = ", ".join(f"{k} = {v}" for k, v in WRITER_TABLE_SETTINGS.items())
    tables = writer_tables(settings)
    dbs = ", ".join(f"'{d}'" for d in sorted({d for d, _ in tables}))
    current = {(str(d), str(t)): str(e) for d, t, e in store.query_rows(
        f"SELECT database, name, engine_full FROM system.tables WHERE database IN ({dbs})")}
    changed: list[str] = []
    for db, table in tables:
        engine = current.get((db, table))
        if engine is None or all(f"{k} = {v}" in engine for k, v in WRITER_TABLE_SETTINGS.items()):
            continue
        try:
            store.execute(f"ALTER TABLE `{db}`.`{table}` MODIFY SETTING {wanted}")
        except Exception as exc:  # the store's own defaults are a working (slower) configuration
            log.warning("schema.table_settings_not_applied", table=f"{db}.{table}", settings=wanted,
                        error=str(exc)[:300])
            return changed
        changed.append(f"{db}.{table}")
    return changed


@dataclass
class SchemaReport:
    created: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"created  {n}" for n in self.created] + [f"verified {n}" for n in self.verified]


def data_tables(settings: Settings) -> list[tuple[str, str, TableSettings]]:
    """(database, table, settings) for the 16 hot and cold tables."""
    st = settings.storage
    out = []
    for name in RECORD_TYPES:
        out.append((st.hot_database, name, TableSettings(ttl_days=st.hot_ttl_days)))
        out.append((st.cold_database, name, TableSettings(ttl_days=st.cold_ttl_days)))
    return out


def init_schema(store: Store, settings: Settings) -> SchemaReport:
    """Create databases and tables that do not exist; idempotent."""
    with store.session():
        return _init_schema(store, settings)


def _init_schema(store: Store, settings: Settings) -> SchemaReport:
    st = settings.storage
    report = SchemaReport()
    databases = (st.hot_database, st.cold_database, st.ledger_database)
    existing_dbs = {str(r[0]) for r in store.query_rows("SELECT name FROM system.databases")}
    for db in databases:
        (report.verified if db in existing_dbs else report.created).append(f"database {db}")
        store.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    existing = {
        f"{d}.{t}"
        for d, t in store.query_rows(
            "SELECT database, name FROM system.tables WHERE database IN ("
            + ", ".join(f"'{d}'" for d in databases)
            + ")"
        )
    }
    for db, table, ts in data_tables(settings):
        full = f"{db}.{table}"
        (report.verified if full in existing else report.created).append(f"table {full}")
        store.execute(create_table_sql(RECORD_TYPES[table], db, ts))
    for meta in WRITER_META_TABLES:
        full = f"{st.ledger_database}.{meta.name}"
        (report.verified if full in existing else report.created).append(f"table {full}")
        store.execute(meta_ddl(st.ledger_database, meta))
    apply_writer_table_settings(store, settings)
    return report
