"""Runs that touch the store execute their steps in one process with one store session.

The embedded chDB store admits one process at a time, and every open costs time and engine memory
and makes the writer wait: a checks run or an hour's seal of all 8 hot assets opens it once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import chdb.session
import dagster as dg
import pytest

from marketprism_dagster.defs.assets import hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.writer.ingest import ensure_writer_tables
from tests.support.hour_setup import hour_start_ms, prepare_store, publish_and_commit, records_in_hour


class ChdbUse:
    """Every chDB session opened in this process and every statement sent (the real session, counted)."""

    def __init__(self) -> None:
        self.opens: list[str] = []
        self.statements: list[str] = []

    def clear(self) -> None:
        self.opens.clear()
        self.statements.clear()


@pytest.fixture
def chdb_use(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChdbUse]:
    use = ChdbUse()
    real = chdb.session.Session

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, path: str = "", *args: Any, **kwargs: Any) -> None:
            use.opens.append(path.partition("?")[0])  # the store's directory, without its session settings
            super().__init__(path, *args, **kwargs)

        def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
            use.statements.append(sql)
            return super().query(sql, *args, **kwargs)

    monkeypatch.setattr(chdb.session, "Session", Counted)
    yield use


def _step_keys(result: Any) -> set[str]:
    return {e.step_key for e in result.all_events if e.step_key}


def test_integrity_checks_run_one_step_with_one_store_session(
    settings_factory, dagster_instance, make_resources, chdb_use
):
    settings = settings_factory()
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
    defs = build_definitions(make_resources(settings)["settings"])
    job = defs.resolve_job_def("integrity_checks")
    assert job.executor_def is dg.in_process_executor  # the daemon's runs: steps in the run's process
    chdb_use.clear()

    result = job.execute_in_process(instance=dagster_instance, raise_on_error=False)

    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(RECORD_TYPES) * (5 + 2)  # every hot and cold rule evaluated
    assert {e.check_name for e in evaluations} >= {"duplicates", "ledger_gaps", "source_gaps", "schema_parity"}
    assert _step_keys(result) == {"window_checks"}
    assert chdb_use.opens == [str(settings.embedded_store_path.resolve())]
    # each question asked of all 16 tables at once: window + lag, duplicates, ledger, source gaps, cold lag, schemas
    assert len(chdb_use.statements) <= 8, chdb_use.statements


def test_sealing_an_hour_of_all_hot_assets_is_one_step_with_one_store_session(
    nats_server, settings_factory, dagster_instance, make_resources, chdb_use
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(2)
    prepare_store(settings)
    types = ["trade", "funding_rate", "open_interest"]
    publish_and_commit(settings, [r for t in types for r in records_in_hour(t, hour, 5)])
    defs = build_definitions(make_resources(settings)["settings"])
    chdb_use.clear()

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
        selection=[hot_key(t) for t in RECORD_TYPES],
        partition_key=time.strftime("%Y-%m-%d-%H:00", time.gmtime(hour / 1000)),
        resources=make_resources(settings),
        instance=dagster_instance,
    )

    rows = {
        m.asset_key.path[1]: m.metadata["rows"].value
        for m in result.asset_materializations_for_node("hot_seal")
    }
    assert rows == {t: (5 if t in types else 0) for t in RECORD_TYPES}
    assert _step_keys(result) == {"hot_seal", "window_checks"}  # seal of 8 assets, then their checks
    assert chdb_use.opens == [str(settings.embedded_store_path.resolve())]
