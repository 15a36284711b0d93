"""Source gaps in a sealed hour's metadata and in the ``source_gaps`` check: gap rows published to a real
JetStream and committed to real chDB as the writer commits them, sealed through Dagster's materialize."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import dagster as dg
import msgspec
from typer.testing import CliRunner

from marketprism_dagster import integrity, records, source_gaps
from marketprism_dagster.cli import _register_all, app
from marketprism_dagster.defs.assets import hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.jetstream import connect
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.storage.columns import records_to_arrow
from marketprism_dagster.writer.ingest import commit_batch
from tests.support.hour_setup import hour_start_ms, prepare_store, publish_and_read, records_in_hour


def gap(hour: int, start_min: float, end_min: float, **fields: Any) -> Any:
    base: dict[str, Any] = dict(
        exchange="okx_spot", market_type="spot", symbol="BTC-USDT", exchange_symbol="BTC-USDT",
        timestamp=hour + int(start_min * 60_000), received_at=hour + int(end_min * 60_000) + 5_000,
        gap_data_type="trade", cause="trade_id_jump", end_time=hour + int(end_min * 60_000),
        first_missing_id="", last_missing_id="", state="open", recovered=0, detail="test",
    )
    base.update(fields)
    return records.SourceGap(**base)


def _store_hour(settings: Any, hour: int, extra: list[Any]) -> None:
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, [*records_in_hour("trade", hour, 20), *extra]))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages)


def _materialize_hot(
    settings: Any, instance: dg.DagsterInstance, data_type: str, hour: int, resources_for: Any, *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """The hot asset of ``data_type`` for ``hour`` (with its checks) through Dagster's materialize."""
    defs = build_definitions(resources_for(settings)["settings"])
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
        selection=[hot_key(data_type)],
        partition_key=time.strftime("%Y-%m-%d-%H:00", time.gmtime(hour / 1000)),
        resources=resources_for(settings),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _seal_trade(settings: Any, instance: dg.DagsterInstance, hour: int, resources_for: Any) -> dict[str, Any]:
    result = _materialize_hot(settings, instance, "trade", hour, resources_for)
    mats = [m for m in result.asset_materializations_for_node("hot_seal") if m.asset_key == hot_key("trade")]
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return {"meta": {k: v.value for k, v in mats[0].metadata.items()}, "evals": evals}


def test_a_trade_gap_refilled_by_id_seals_as_complete_with_continuous_ids(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(3)
    ids = dict(first_missing_id="100", last_missing_id="199")
    open_gap = gap(hour, 10, 11, **ids)
    repaired = msgspec.structs.replace(open_gap, state="repaired", recovered=100, detail="ids 100..199 refilled")
    _store_hour(settings, hour, [open_gap, repaired])
    done = _seal_trade(settings, dagster_instance, hour, make_resources)
    meta = done["meta"]
    assert meta["source"] == "complete" and meta["trade_ids_continuous"] is True
    assert meta["source_gaps_repaired"] == 1 and meta["source_gaps_open"] == 0
    assert meta["source_unrecoverable"] == ""
    assert meta["source_by_symbol"] == {
        "okx_spot:BTC-USDT": {"trade_ids_continuous": True, "repaired": 1, "recovered": 100, "open": 0,
                              "unrecoverable": []}
    }
    assert done["evals"]["source_gaps"].passed


def test_an_hour_without_gaps_is_complete_and_an_open_gap_makes_it_incomplete(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(3)
    other_hour = gap(hour - 7_200_000, 1, 2, first_missing_id="5", last_missing_id="6")  # touches no sealed hour
    _store_hour(settings, hour, [other_hour])
    meta = _seal_trade(settings, dagster_instance, hour, make_resources)["meta"]
    assert meta["source"] == "complete" and meta["trade_ids_continuous"] is True
    assert meta["source_by_symbol"]["okx_spot:BTC-USDT"]["repaired"] == 0

    # an open gap whose window ends inside the hour (it started in the previous one), detected long ago
    late = gap(hour, -1, 0.5, first_missing_id="300", last_missing_id="309", cause="disconnect")
    asyncio.run(publish_and_read_more(settings, [late]))
    done = _seal_trade(settings, dagster_instance, hour, make_resources)
    assert done["meta"]["source"] == "incomplete" and done["meta"]["trade_ids_continuous"] is False
    check = done["evals"]["source_gaps"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "still open" in (check.description or "")


def test_a_gap_recorded_after_its_hour_was_sealed_is_named_by_the_check_until_the_hour_is_sealed_again(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(3)
    _store_hour(settings, hour, [])
    assert _seal_trade(settings, dagster_instance, hour, make_resources)["meta"]["source"] == "complete"

    # the collector comes back after the hour was sealed and records the downtime it spent inside it
    downtime = gap(hour, 20, 30, cause="downtime", received_at=int(time.time() * 1000) + 1_000)
    asyncio.run(publish_and_read_more(settings, [downtime]))
    defs = build_definitions(make_resources(settings)["settings"])
    result = defs.resolve_job_def("integrity_checks").execute_in_process(instance=dagster_instance)
    (check,) = [e for e in result.get_asset_check_evaluations()
                if e.asset_key == hot_key("trade") and e.check_name == "source_gaps"]
    label = time.strftime("%Y-%m-%dT%H:00", time.gmtime(hour / 1000))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, check.description
    assert f"the metadata of 1 sealed hour ({label}) is out of date" in (check.description or "")
    assert f"materialize hot trade partition {label} again" in (check.description or "")
    assert check.metadata["stale_seals"].value == f"{label}: okx_spot:BTC-USDT downtime (test)"

    # sealed again: the metadata says what the store says, and the check has nothing to add (the gap waits in
    # its grace for the refill)
    done = _seal_trade(settings, dagster_instance, hour, make_resources)
    assert done["meta"]["source"] == "incomplete" and done["meta"]["source_gaps_open"] == 1
    assert done["evals"]["source_gaps"].passed, done["evals"]["source_gaps"].description


async def publish_and_read_more(settings: Any, recs: list[Any]) -> None:
    """Publish ``recs`` after what the stream holds and commit them as the writer would."""
    nc = await connect(settings.nats.url)
    try:
        js = nc.jetstream()
        first = (await js.stream_info("MARKET_DATA")).state.last_seq + 1
        for r in recs:
            await js.publish(records.subject(r), records.encode(r), headers={"Nats-Msg-Id": records.msg_id(r)})
        out = []
        for seq in range(first, first + len(recs)):
            m = await js.get_msg("MARKET_DATA", seq=seq)
            out.append(records_message(m))
    finally:
        await nc.drain()
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", out)


def records_message(m: Any) -> Any:
    return StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers)


def test_book_unsynced_seconds_are_clipped_to_the_hour_and_unrecoverable_gaps_warn(store, settings_factory):
    """Pure summaries over rows read back from real chDB: a book window from 10 s before the hour to 30 s into
    it counts 30 s; a second one of 1.5 s inside it adds 1.5 s, a downtime window inside that one adds nothing (no
    valid book either way, counted once); all unrecoverable: WARN, never ERROR."""
    settings = settings_factory()
    hour = hour_start_ms(3)
    init_schema(store, settings)
    book = dict(gap_data_type="orderbook", cause="book_unsynced", state="unrecoverable")
    rows = [
        gap(hour, -10 / 60, 0.5, detail="40.000 s without a valid book", **book),
        gap(hour, 20, 20 + 1.5 / 60, detail="1.500 s without a valid book", **book),
        gap(hour, 20, 20 + 1 / 60, **(book | {"cause": "downtime", "detail": "collector restarted"})),  # overlaps
        gap(hour, 70, 71, **book),  # the next hour
    ]
    store.insert(settings.storage.hot_database, "source_gap", records_to_arrow("source_gap", rows))
    gaps = source_gaps.read_gaps(store, settings, hour, hour + 3_600_000)
    assert len(gaps) == 3
    s = source_gaps.hour_summary(gaps, "orderbook", hour, hour + 3_600_000, ["okx_spot:BTC-USDT"], is_book=True)
    assert s.verdict == "incomplete"
    assert s.metadata()["book_unsynced_s"] == 31.5
    assert sorted(s.by_symbol["okx_spot:BTC-USDT"].unrecoverable) == [
        "book_unsynced: 1.500 s without a valid book", "book_unsynced: 40.000 s without a valid book",
        "downtime: collector restarted",
    ]
    result = integrity.source_gaps(store, settings, "orderbook", now=hour + 3_600_000)
    assert (result.passed, result.severity) == (False, "WARN")
    assert integrity.source_gaps(store, settings, "trade", now=hour + 3_600_000).passed


def test_marketprism_integrity_lists_the_source_gaps_of_the_window_with_their_state(settings_factory):
    settings = settings_factory()
    hour = hour_start_ms(3)
    ids = dict(first_missing_id="100", last_missing_id="199")
    trade = gap(hour, 10, 11, **ids)
    rows = [
        trade,
        msgspec.structs.replace(trade, state="repaired", recovered=100, detail="ids 100..199 refilled"),
        gap(hour, 20, 20.5, gap_data_type="orderbook", cause="book_unsynced", state="unrecoverable",
            detail="30.000 s without a valid book"),
        gap(hour, 30, 32, gap_data_type="open_interest", cause="poll_failed", detail="2 polls failed"),
        gap(hour - 3 * 3_600_000, 30, 32, gap_data_type="funding_rate", cause="disconnect"),  # before the window
    ]
    with open_store(settings) as store:
        init_schema(store, settings)
        store.insert(settings.storage.hot_database, "source_gap", records_to_arrow("source_gap", rows))
    _register_all()
    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(hour / 1000))
    end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(hour / 1000 + 3600))
    result = CliRunner().invoke(app, [
        "integrity", "--format", "json", "--from", start, "--to", end,
        "--set", f"data_dir={settings.data_dir}", "--set", f"storage.path={settings.embedded_store_path}",
        "--set", "nats.embedded=false",
    ])
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    listed = [(g["market"], g["symbol"], g["type"], g["cause"], g["ids"], g["state"], g["recovered"], g["detail"])
              for g in lines if "cause" in g]
    assert listed == [
        ("okx_spot", "BTC-USDT", "open_interest", "poll_failed", "", "open", 0, "2 polls failed"),
        ("okx_spot", "BTC-USDT", "orderbook", "book_unsynced", "", "unrecoverable", 0,
         "30.000 s without a valid book"),
        ("okx_spot", "BTC-USDT", "trade", "trade_id_jump", "100..199", "repaired", 100, "ids 100..199 refilled"),
    ], result.output
    # the rules ran too: the open poll gap is past the grace (ERROR), so the command fails
    checks = {(r["check"], r["target"]): r["status"] for r in lines if "check" in r}
    assert checks[("source_gaps", "hot.open_interest")] == "FAIL"
    assert checks[("source_gaps", "hot.orderbook")] == "WARN" and checks[("source_gaps", "hot.trade")] == "PASS"
    assert result.exit_code == 1


def test_an_aged_out_hour_of_a_type_without_venue_history_is_refused_with_cause_and_fix(
    nats_server, settings_factory, dagster_instance, make_resources
):
    """The hot asset's path for a ledger gap that aged out of JetStream, for liquidations (no venue keeps their
    history): the materialization fails, not retried, naming the retention and the fix."""
    settings = settings_factory(
        nats_url=nats_server.url, **{"streams.MARKET_DATA.max_age_s": 2, "streams.MARKET_DATA.duplicate_window_s": 1}
    )
    hour = hour_start_ms(3)
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("liquidation", hour, 10)))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages[:3])
        commit_batch(store, settings, "MARKET_DATA", messages[6:])
    time.sleep(3)  # messages 4-6 age out of JetStream
    result = _materialize_hot(settings, dagster_instance, "liquidation", hour, make_resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = failure.step_failure_data.user_failure_data
    assert "seq 4 is no longer in JetStream" in data.description
    assert "no venue keeps a history of liquidation" in data.description
    assert "streams.MARKET_DATA.max_age_s" in data.description
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []
