"""An operator accepts a loss no venue history can refill (real nats-server, chDB, the real seal, the CLI): a
liquidation hour whose range the writer committed without 3 messages JetStream no longer held refuses aged_out
naming ``marketprism accept-loss``; after ``accept-loss`` it seals ``incomplete`` naming the range, the reason and
when; accepting twice leaves one marker; ``integrity`` lists the acceptance. A markers table created before the
``resolution`` column gets it, its rows read as refills."""

from __future__ import annotations

import asyncio
import json
import time

from typer.testing import CliRunner

from marketprism_dagster.cli import _register_all, app
from marketprism_dagster.config import Settings
from marketprism_dagster.ledger.lost import ACCEPTED, VENUE_HISTORY, Marker
from marketprism_dagster.ledger.queries import markers, markers_of, write_markers
from marketprism_dagster.ledger.tables import LOST
from marketprism_dagster.sealing import SealRefused, SealReport
from marketprism_dagster.storage import open_store
from marketprism_dagster.storage.columns import table_ddl
from marketprism_dagster.writer.ingest import commit_batch
from tests.support.hour_setup import hour_start_ms, prepare_store, publish_and_read, records_in_hour
from tests.support.seal_helpers import seal_at_close


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    _register_all()
    result = CliRunner().invoke(app, [
        *args, "--set", f"data_dir={settings.data_dir}", "--set", f"storage.path={settings.embedded_store_path}",
        "--set", "nats.embedded=false", "--set", f"nats.url={settings.nats.url}",
    ])
    return result.exit_code, result.output


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ms / 1000))


def _marker_rows(settings: Settings) -> int:
    with open_store(settings) as store:
        return int(store.query_value(f"SELECT count() FROM {settings.storage.ledger_database}.{LOST.name}") or 0)


def test_a_liquidation_hour_whose_loss_is_accepted_seals_incomplete_naming_the_range(
    nats_server, settings_factory
) -> None:
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0)
    hour = hour_start_ms(3)
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("liquidation", hour, 10)))
    with open_store(settings) as store:  # as the writer commits 1-10 when seqs 4-6 were gone when it got there
        commit_batch(store, settings, "MARKET_DATA", messages[:3] + messages[6:], first_seq=1, last_seq=10)

    refused = asyncio.run(seal_at_close(settings, ["liquidation"], hour))["liquidation"]
    assert isinstance(refused, SealRefused) and refused.aged_out, refused
    assert f"marketprism accept-loss --type liquidation --hour {_iso(hour)} --reason TEXT" in str(refused)

    code, out = _cli(settings, "accept-loss", "--type", "liquidation", "--hour", _iso(hour), "--dry-run")
    assert code == 0, out
    assert "MARKET_DATA seq 1-10 (3 messages)  would accept" in out and _marker_rows(settings) == 0

    for _ in range(2):  # accepting twice writes one marker
        code, out = _cli(settings, "accept-loss", "--type", "liquidation", "--hour", _iso(hour),
                         "--reason", "writer down 2 days")
        assert code == 0, out
    assert "already accepted at" in out and "writer down 2 days" in out
    assert _marker_rows(settings) == 1
    with open_store(settings) as store:
        (mark,) = markers(store, settings, "MARKET_DATA")
    assert (mark.first, mark.last, mark.missing, mark.data_type, mark.hour_ms, mark.resolution, mark.detail) == (
        1, 10, 3, "liquidation", hour, ACCEPTED, "writer down 2 days")

    sealed = asyncio.run(seal_at_close(settings, ["liquidation", "trade"], hour))
    liquidation = sealed["liquidation"]
    assert isinstance(liquidation, SealReport), liquidation
    meta = liquidation.metadata()
    assert meta["source"] == "incomplete" and meta["proof"] == "ledger+jetstream+accepted_loss"
    accepted_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(mark.recorded_at_ms / 1000))
    assert meta["lost_accepted"] == meta["lost_ranges"] == (
        f"MARKET_DATA seq 1-10: 3 messages lost from the stream, loss accepted by operator at {accepted_at}: "
        "writer down 2 days")
    assert liquidation.rows == liquidation.ledger_rows == 7 and meta["unledgered_rows"] == 0
    # the acceptance is liquidation's: trade (kept in the venues' history) still refuses, and may not be accepted
    assert isinstance(sealed["trade"], SealRefused) and sealed["trade"].aged_out
    code, out = _cli(settings, "accept-loss", "--type", "trade", "--hour", _iso(hour))
    assert code == 2 and "materialize the hot partition" in out and "marketprism backfill" in out, out
    # an hour the lost messages cannot concern (it starts after they were stored): nothing to accept
    code, out = _cli(settings, "accept-loss", "--type", "liquidation", "--hour", _iso(hour_start_ms(-2)))
    assert code == 2 and "nothing is lost in hour" in out, out
    assert _marker_rows(settings) == 1

    code, out = _cli(settings, "integrity", "--format", "json")
    listed = [json.loads(x) for x in out.splitlines() if x.startswith("{") and '"reason"' in x]
    assert listed == [{"stream": "MARKET_DATA", "seq": "1-10", "lost_messages": 3, "type": "liquidation",
                       "hours": _iso(hour).replace("T", " "), "accepted_at": accepted_at[:19],
                       "reason": "writer down 2 days"}], out
    gaps = [json.loads(x) for x in out.splitlines() if '"ledger_gaps"' in x]
    assert gaps[0]["status"] == "PASS" and "loss accepted by an operator" in gaps[0]["detail"], gaps


def test_a_markers_table_from_before_the_resolution_column_gets_it_and_its_rows_read_as_refills(
    settings_factory,
) -> None:
    settings = settings_factory()
    db = settings.storage.ledger_database
    old = LOST.columns[:-1]
    assert [c.name for c in LOST.columns[len(old):]] == ["resolution"]
    with open_store(settings) as store:
        store.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        store.execute(table_ddl(db, LOST.name, old, order_by=LOST.order_by, settings=LOST.settings))
        store.execute(f"INSERT INTO `{db}`.`{LOST.name}` VALUES ('MARKET_DATA', 1, 10, 3, 'trade', "
                      "'2026-01-01 00:00:00', 3, 7, 'refilled', '', '2026-01-01 02:00:00.000')")
        (before,) = markers(store, settings, "MARKET_DATA")  # reading migrates the table
        write_markers(store, settings, [Marker("MARKET_DATA", 1, 10, 3, "liquidation", before.hour_ms, 0, 0,
                                               "accepted", "", ACCEPTED)], 0)
        after = markers(store, settings, "MARKET_DATA")
        accepted = markers_of(store, settings, ACCEPTED)
    assert (before.data_type, before.resolution, before.refilled) == ("trade", VENUE_HISTORY, 3)
    assert [(m.data_type, m.resolution) for m in after] == [("liquidation", ACCEPTED), ("trade", VENUE_HISTORY)]
    assert [m.data_type for m in accepted] == ["liquidation"]
