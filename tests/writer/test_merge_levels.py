"""The writer's tables merge small inserts by level: a partition's big part is not rewritten with every few inserts."""

from __future__ import annotations

import time

from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.ingest import ensure_writer_tables

TABLE = "marketprism_meta.ingest_intent"


def _parts(store: EmbeddedStore) -> list[tuple[str, int]]:
    return [(str(n), int(lv)) for n, lv in store.query_rows(
        "SELECT name, level FROM system.parts WHERE active AND database = 'marketprism_meta' "
        "AND table = 'ingest_intent' ORDER BY min_block_number")]


def _insert_one_part_each(store: EmbeddedStore, first: int, count: int) -> None:
    for i in range(first, first + count):
        store.execute(f"INSERT INTO {TABLE} VALUES ('S', {i}, {i}, now64(3))")


def _wait_for_parts(store: EmbeddedStore, at_most: int) -> list[tuple[str, int]]:
    deadline = time.monotonic() + 120
    while (parts := _parts(store)) and len(parts) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return parts


def test_small_inserts_merge_among_themselves_not_into_the_big_part(store: EmbeddedStore, settings_factory) -> None:
    ensure_writer_tables(store, settings_factory())
    with store.hold():  # chDB merges in the background only while a session is open
        _insert_one_part_each(store, 1, 10)
        parts = _wait_for_parts(store, 1)
        assert len(parts) == 1 and parts[0][1] >= 1, parts
        big = parts[0][0]
        _insert_one_part_each(store, 11, 10)  # ten small parts after the big one: they merge into one of their own
        parts = _wait_for_parts(store, 2)
        assert parts[0][0] == big, parts  # the big part was not rewritten
        assert len(parts) == 2 and parts[1][1] >= 1, parts
        assert store.query_value(f"SELECT count() FROM {TABLE}") == 20
