"""Alert sensor posts each failed check once to a local HTTP receiver; cold replication through Dagster."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import msgspec
import pytest

from marketprism_dagster.defs.assets import cold_key, hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.storage.columns import records_to_arrow
from sensors.alerts import integrity_alerts

DAY_MS = 86_400_000


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", got
    finally:
        server.shutdown()


def test_alert_sensor_posts_each_failed_check_once(
    settings_factory, dagster_instance, make_resources, receiver, monkeypatch
):
    url, got = receiver
    monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
    settings = settings_factory()
    with open_store(settings) as store:
        init_schema(store, settings)  # empty tables: every window rule fails
    defs = build_definitions(make_resources(settings)["settings"])
    result = defs.resolve_job_def("integrity_checks").execute_in_process(instance=dagster_instance)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert {(e.asset_key.to_user_string(), e.check_name) for e in failed} >= {
        ("hot/trade", "recent_window"),
        ("hot/orderbook", "data_lag"),
    }
    only_settings = {"settings": make_resources(settings)["settings"]}
    ctx = dg.build_sensor_context(instance=dagster_instance, cursor=None, resources=only_settings)
    integrity_alerts(ctx)
    assert len(got) == len(failed)
    posted = {(p["marketprism"]["asset"], p["marketprism"]["check"]) for p in got}
    assert posted == {(e.asset_key.to_user_string(), e.check_name) for e in failed}
    assert all(p["text"].startswith("[MarketPrism]") for p in got)  # Slack-compatible
    # next tick with the saved cursor: nothing is sent twice
    ctx2 = dg.build_sensor_context(instance=dagster_instance, cursor=ctx.cursor, resources=only_settings)
    integrity_alerts(ctx2)
    assert len(got) == len(failed)


def _yesterday() -> int:
    return (int(time.time()) // 86_400 - 1) * DAY_MS


def _seal_hours_runless(instance: dg.DagsterInstance, data_type: str, day_ms: int, hours: int) -> None:
    for h in range(hours):
        key = time.strftime("%Y-%m-%d-%H:00", time.gmtime((day_ms + h * 3_600_000) / 1000))
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=hot_key(data_type), partition=key))


def test_cold_replication_matches_hot_and_refuses_an_unsealed_day(
    settings_factory, dagster_instance, make_resources, record_factory
):
    settings = settings_factory()
    day = _yesterday()
    now = int(time.time() * 1000)
    rows = [
        msgspec.structs.replace(record_factory("open_interest", i, now), timestamp=day + 60_000 * i) for i in range(40)
    ]
    with open_store(settings) as store:
        init_schema(store, settings)
        store.insert(settings.storage.hot_database, "open_interest", records_to_arrow("open_interest", rows))
    defs = build_definitions(make_resources(settings)["settings"])
    key = time.strftime("%Y-%m-%d", time.gmtime(day / 1000))
    everything = [*defs.assets, *defs.asset_checks]

    _seal_hours_runless(dagster_instance, "open_interest", day, 23)
    refused = dg.materialize(
        everything,
        selection=[cold_key("open_interest")],
        partition_key=key,
        resources=make_resources(settings),
        instance=dagster_instance,
        raise_on_error=False,
    )
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert "1 of the day's hours" in failure.step_failure_data.user_failure_data.description

    _seal_hours_runless(dagster_instance, "open_interest", day, 24)
    done = dg.materialize(
        everything,
        selection=[cold_key("open_interest")],
        partition_key=key,
        resources=make_resources(settings),
        instance=dagster_instance,
    )
    meta = {k: v.value for k, v in done.asset_materializations_for_node("cold__open_interest")[0].metadata.items()}
    assert meta["rows"] == 40 and meta["mode"] == "insert-select"
    parity = next(e for e in done.get_asset_check_evaluations() if e.check_name == "hot_cold_parity")
    assert parity.passed and parity.partition == key and parity.blocking
    assert parity.metadata["hot_rows"].value == parity.metadata["cold_rows"].value == 40


def test_one_check_selected_alone_runs_alone(settings_factory, dagster_instance, make_resources):
    """The rules of an asset share one step, which still runs just the checks selected (UI: one check)."""
    settings = settings_factory()
    with open_store(settings) as store:
        init_schema(store, settings)
    defs = build_definitions(make_resources(settings)["settings"])
    one = dg.AssetCheckKey(hot_key("trade"), "duplicates")
    job = dg.define_asset_job("one_check", selection=dg.AssetSelection.checks(one))
    result = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("one_check").execute_in_process(
        instance=dagster_instance
    )
    evaluations = result.get_asset_check_evaluations()
    assert [(e.asset_key, e.check_name, e.passed) for e in evaluations] == [(hot_key("trade"), "duplicates", True)]
