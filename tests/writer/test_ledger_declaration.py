"""The ledger's tables are declared once: DDL, Arrow schema and SQL literals derive from the declaration;
a range's ledger rows are a pure function of what it inserted."""

from __future__ import annotations

import pyarrow as pa
import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.queries import insert_rows, ledger_sql
from marketprism_dagster.ledger.rows import TypeRows, ledger_rows
from marketprism_dagster.ledger.tables import INTENT, LEDGER
from marketprism_dagster.storage.columns import arrow_schema
from marketprism_dagster.storage.schema import meta_ddl
from marketprism_dagster.storage.sql import insert_sql

H = 1_780_000_000_000 - 1_780_000_000_000 % 3_600_000  # an hour start, ms


def test_ledger_ddl_is_derived_from_the_declared_columns() -> None:
    ddl = meta_ddl("meta", LEDGER)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `meta`.`ingest_ledger` (\n  `stream` LowCardinality(String),")
    for line in ("`hour` DateTime('UTC')", "`min_ts` Nullable(DateTime64(3, 'UTC'))", "`rows` UInt64",
                 "`committed_at` DateTime64(3, 'UTC')\n)", "ORDER BY (`stream`, `first_seq`, `data_type`, `hour`)",
                 "SETTINGS non_replicated_deduplication_window = 10000"):
        assert line in ddl, line
    assert "TTL toDateTime(created_at) + INTERVAL 30 DAY DELETE" in meta_ddl("meta", INTENT)
    schema = arrow_schema(LEDGER.columns)
    assert schema.names == list(LEDGER.column_names)
    assert schema.field("hour").type == pa.timestamp("s", tz="UTC")
    assert schema.field("min_ts").type == pa.timestamp("ms", tz="UTC")


def test_a_range_has_a_star_row_and_one_row_per_type_and_hour() -> None:
    trades = TypeRows("trade", "S:1-9:trade", [H + 5, H + 3_600_000 + 1, H + 2, H + 3_600_000 + 7])
    rates = TypeRows("funding_rate", "S:1-9:funding_rate", [H + 9])
    rows = ledger_rows("S", 1, 9, 9, 2, "S:1-9", [trades, rates], committed_at_ms=H + 7_200_000)
    hour = H // 1000
    assert rows == [
        ("S", 1, 9, "*", hour, 9, 5, 2, H + 2, H + 3_600_007, "S:1-9:*", H + 7_200_000),
        ("S", 1, 9, "funding_rate", hour, 0, 1, 0, H + 9, H + 9, "S:1-9:funding_rate", H + 7_200_000),
        ("S", 1, 9, "trade", hour, 0, 2, 0, H + 2, H + 5, "S:1-9:trade", H + 7_200_000),
        ("S", 1, 9, "trade", hour + 3600, 0, 2, 0, H + 3_600_001, H + 3_600_007, "S:1-9:trade", H + 7_200_000),
    ]
    # a range of dead letters only: hour 0, no event times
    assert ledger_rows("S", 10, 12, 3, 3, "S:10-12", [], 5) == [
        ("S", 10, 12, "*", 0, 3, 0, 3, None, None, "S:10-12:*", 5)]


def test_ledger_rows_become_literals_column_by_column() -> None:
    settings = Settings()
    sql = ledger_sql(settings, [("it's", 10, 12, "*", 0, 3, 0, 3, None, None, "S:10-12:*", 1_000_000_001_234)],
                     "ledger:S:10-12")
    assert sql == (
        "INSERT INTO `marketprism_meta`.`ingest_ledger` (" + ", ".join(f"`{c}`" for c in LEDGER.column_names) + ") "
        "SETTINGS insert_deduplicate = 1, insert_deduplication_token = 'ledger:S:10-12' "
        "VALUES ('it\\'s', 10, 12, '*', '1970-01-01 00:00:00', 3, 0, 3, NULL, NULL, 'S:10-12:*', "
        "'2001-09-09 01:46:41.234')"
    )
    assert insert_rows(settings, INTENT, [("S", 1, 5, 0)]).endswith("VALUES ('S', 1, 5, '1970-01-01 00:00:00.000')")


def test_the_insert_builder_writes_each_kind_of_source() -> None:
    assert insert_sql("d", "t", ["a", "b"], select_from="{src}") == (
        "INSERT INTO `d`.`t` (`a`, `b`) SELECT `a`, `b` FROM {src}")
    assert insert_sql("d", "t", ["a"], select="SELECT 1", token="x") == (
        "INSERT INTO `d`.`t` (`a`) SETTINGS insert_deduplicate = 1, insert_deduplication_token = 'x' SELECT 1")
    assert insert_sql("d", "t", ["a"], values=[["1"], ["2"]]) == "INSERT INTO `d`.`t` (`a`) VALUES (1), (2)"
    with pytest.raises(ValueError, match="exactly one"):
        insert_sql("d", "t", ["a"])
    with pytest.raises(ValueError, match="exactly one"):
        insert_sql("d", "t", ["a"], select="SELECT 1", values=[["1"]])
