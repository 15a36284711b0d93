"""The alert sensor over a real Dagster instance: every pending event alerted once, in order; a failing
webhook costs only the alert it failed on (logged, counted, retried, then recorded as a failed delivery)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import structlog
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange

from resources import SettingsResource
from sensors import alerts
from sensors.alerts import AlertCursor, integrity_alerts

SHM = Path("/dev/shm")


@pytest.fixture
def fast_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A real instance with the consolidated SQLite event log (as dagster.yaml), on tmpfs when there is one:
    hundreds of events are written one commit each."""
    with tempfile.TemporaryDirectory(dir=SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else tmp_path) as home:
        overrides = {
            "event_log_storage": {
                "module": "dagster._core.storage.event_log",
                "class": "ConsolidatedSqliteEventLogStorage",
                "config": {"base_dir": str(Path(home) / "storage")},
            }
        }
        with dg.instance_for_test(overrides=overrides, temp_dir=home) as instance:
            yield instance


class Receiver:
    """A webhook on 127.0.0.1: records each POST; ``refuse(payload)`` True answers HTTP 500."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        self.refuse: Callable[[dict[str, Any]], bool] = lambda _p: False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.refuse(body):
                    outer.refused.append(body)
                    self.send_response(500)
                else:
                    outer.got.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/T0KEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ids(self) -> list[int]:
        return [p["marketprism"]["storage_id"] for p in self.got]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", r.url)
    try:
        yield r
    finally:
        r.server.shutdown()


def failed_check(instance: dg.DagsterInstance, name: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(["hot", "trade"]), check_name=name, passed=False, description=name
        )
    )


def freshness_change(instance: dg.DagsterInstance) -> None:
    instance.report_runless_asset_event(
        FreshnessStateChange(
            key=dg.AssetKey(["hot", "trade"]),
            new_state=FreshnessState.FAIL,
            previous_state=FreshnessState.PASS,
            state_change_timestamp=time.time(),
        )
    )


def alert_ids(instance: dg.DagsterInstance) -> list[int]:
    """Storage ids of every event the sensor must alert on, ascending (read without any page limit)."""
    ids: list[int] = []
    for event_type in (dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.DagsterEventType.FRESHNESS_STATE_CHANGE):
        ids += [r.storage_id for r in instance.get_event_records(dg.EventRecordsFilter(event_type=event_type))]
    return sorted(ids)


def tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[str | None, str]:
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"settings": SettingsResource()})
    result = integrity_alerts(ctx)
    return ctx.cursor, str(result.skip_message)


def test_alert_sensor_pages_through_every_pending_event_in_order(fast_instance, receiver):
    """More pending events than one query returns (BATCH per type), two types interleaved: each is posted once,
    in event-log order; the old merge of two capped queries moved the cursor past checks it never fetched."""
    checks = alerts.BATCH + 40
    for i in range(checks):
        failed_check(fast_instance, f"c{i}")
        if i % 3 == 0:
            freshness_change(fast_instance)
    expected = alert_ids(fast_instance)
    assert len(expected) == checks + (checks + 2) // 3 > alerts.BATCH

    cursor, summary = tick(fast_instance, None)
    assert receiver.ids() == expected  # every one, in order, none twice
    assert summary.startswith(f"{len(expected)} alerts sent, 0 webhook failures")
    kinds = [p["marketprism"]["kind"] for p in receiver.got]
    assert kinds.count("check_failed") == checks and kinds.count("freshness") == (checks + 2) // 3
    assert {p["marketprism"]["check"] for p in receiver.got if "check" in p["marketprism"]} == {
        f"c{i}" for i in range(checks)
    }

    cursor, summary = tick(fast_instance, cursor)  # nothing new: nothing sent again
    assert len(receiver.got) == len(expected) and summary.startswith("0 alerts sent")
    failed_check(fast_instance, "late")
    tick(fast_instance, cursor)
    assert [p["marketprism"].get("check") for p in receiver.got[len(expected) :]] == ["late"]


def test_pages_stop_at_the_first_full_page_and_resume_there(fast_instance):
    """A page is complete only up to the last id of a full page of either type; the next page starts there."""
    for i in range(6):
        failed_check(fast_instance, f"c{i}")
        freshness_change(fast_instance)
    everything = alert_ids(fast_instance)
    first = alerts.pending_alerts(fast_instance, 0, limit=4)
    # checks are ids 1,3,5,7 in the first page and freshness 2,4,6,8: complete up to 7
    assert first.more and first.upto == everything[6]
    assert [i for i, _ in first.events] == everything[:7]
    second = alerts.pending_alerts(fast_instance, first.upto, limit=4)
    assert [i for i, _ in second.events] == everything[7:] and not second.more


def test_a_failing_webhook_is_logged_and_counted_per_alert_and_does_not_stop_the_others(fast_instance, receiver):
    for i in range(8):
        failed_check(fast_instance, f"c{i}")
    expected = alert_ids(fast_instance)
    receiver.refuse = lambda p: p["marketprism"]["check"] in {"c2", "c5"}
    with structlog.testing.capture_logs() as logs:
        cursor, summary = tick(fast_instance, None)
    assert [p["marketprism"]["check"] for p in receiver.got] == ["c0", "c1", "c3", "c4", "c6", "c7"]
    assert summary.startswith("6 alerts sent, 2 webhook failures this tick, 2 waiting for a retry")
    assert sorted(e["check"] for e in logs if e["event"] == "alert") == [f"c{i}" for i in range(8)]  # every one
    failures = [e for e in logs if e["event"] == "alert.post_failed"]
    assert [(e["storage_id"], e["error"]) for e in failures] == [
        (expected[2], "HTTP Error 500: Internal Server Error"),
        (expected[5], "HTTP Error 500: Internal Server Error"),
    ]
    assert all("T0KEN" not in str(e) for e in logs)  # the webhook's token is never logged
    state = AlertCursor.parse(cursor)
    assert state.after == expected[-1] and state.delivered == 6
    assert [(r["attempts"], r["payload"]["marketprism"]["check"]) for r in state.retry] == [(1, "c2"), (1, "c5")]

    receiver.refuse = lambda p: p["marketprism"]["check"] == "c5"  # c2's webhook recovers, c5 keeps failing
    cursor, summary = tick(fast_instance, cursor)
    assert [p["marketprism"]["check"] for p in receiver.got][6:] == ["c2"]
    with structlog.testing.capture_logs() as logs:
        for _ in range(alerts.RETRY_ATTEMPTS - 2):
            cursor, summary = tick(fast_instance, cursor)
    state = AlertCursor.parse(cursor)
    assert state.retry == [] and state.failed == 1 and state.delivered == 7
    gave_up = [e for e in logs if e["event"] == "alert.delivery_failed"]
    assert [(e["storage_id"], e["attempts"]) for e in gave_up] == [(expected[5], alerts.RETRY_ATTEMPTS)]
    assert "c5" in gave_up[0]["text"] and summary.endswith("(totals: 7 delivered, 1 failed deliveries)")
    assert len(receiver.refused) == 1 + alerts.RETRY_ATTEMPTS  # c2 once, c5 on every attempt
    assert len([p for p in receiver.got if p["marketprism"]["check"] == "c2"]) == 1


def test_a_dead_webhook_defers_the_rest_of_the_tick_without_losing_any_alert(fast_instance, monkeypatch):
    """Connection refused: after BREAKER_FAILURES failed POSTs the tick stops posting, still logs every alert
    and keeps the rest for the next tick, so one tick never spends 5 s per alert on a dead webhook."""
    dead = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{dead.server_port}/hook"
    dead.server_close()  # nothing listens there now
    monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
    for i in range(6):
        failed_check(fast_instance, f"c{i}")
    with structlog.testing.capture_logs() as logs:
        cursor, _ = tick(fast_instance, None)
    assert len([e for e in logs if e["event"] == "alert"]) == 6
    assert len([e for e in logs if e["event"] == "alert.post_failed"]) == alerts.BREAKER_FAILURES
    state = AlertCursor.parse(cursor)
    assert len(state.retry) == 6 and state.after == alert_ids(fast_instance)[-1]
    assert [r["attempts"] for r in state.retry] == [1] * alerts.BREAKER_FAILURES + [0] * (6 - alerts.BREAKER_FAILURES)
