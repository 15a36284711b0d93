"""TEST SUPPORT ONLY: the table contract both store backends must meet, asserted in one place.

Used by tests/foundation (EmbeddedStore) and tests/storage_server (ServerStore over the chDB HTTP shim).
"""

from __future__ import annotations

from collections.abc import Iterable

from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES
from marketprism_dagster.storage.base import Store


def assert_hot_and_cold_columns_match_records(store: Store, hot_database: str, cold_database: str) -> None:
    """Every data type's hot and cold tables have the same columns, named as its record type declares."""
    for data_type in DATA_TYPES:
        hot = store.table_columns(hot_database, data_type)
        cold = store.table_columns(cold_database, data_type)
        assert hot == cold
        assert [n for n, _ in hot] == list(RECORD_TYPES[data_type].column_names)


def assert_replacing_merge_trees(store: Store, ttl_days_by_database: Iterable[tuple[str, int]]) -> None:
    """Each table is a ReplacingMergeTree ordered by the record identity, partitioned by day, with the TTL."""
    for db, ttl in ttl_days_by_database:
        for data_type, rt in RECORD_TYPES.items():
            engine, sorting, partition, ddl = store.query_rows(
                "SELECT engine, sorting_key, partition_key, create_table_query FROM system.tables "
                f"WHERE database = '{db}' AND name = '{data_type}'"
            )[0]
            assert engine == "ReplacingMergeTree"
            assert [k.strip() for k in sorting.split(",")] == list(rt.identity)
            assert partition == "toYYYYMMDD(timestamp)"
            assert f"toIntervalDay({ttl})" in ddl
