"""Alerts: failed asset checks, freshness state changes and failed runs -> webhook + log line.

OSS Dagster has no alert policies. This sensor reads ASSET_CHECK_EVALUATION and
FRESHNESS_STATE_CHANGE events after its cursor (the event log's storage id), so each event
is posted once. Needs a consolidated event log (dagster.yaml): the run-sharded SQLite
default cannot answer a global query.

Every event after the cursor is handled, in storage-id order: the two event types are read in
pages, and the cursor only moves past ids that both pages have covered and that were handled.
Every alert gets its log line. A webhook failure is logged and counted for that alert alone: the
alert waits in the cursor's retry list (``RETRY_ATTEMPTS`` ticks), then is recorded as a failed
delivery (``alert.delivery_failed``); the alerts after it are sent as usual.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import structlog

from resources.settings import SettingsResource
from sensors.webhook import alert_payload, log_alert, post_alert, send_alert

log = structlog.get_logger(__name__)

BATCH = 200  # events per query and type
RETRY_ATTEMPTS = 10  # POSTs of one alert (one per tick) before it is recorded as a failed delivery
MAX_RETRY_PENDING = 200  # alerts kept for retry in the cursor; beyond that the oldest are given up
TICK_BUDGET_S = 40.0  # a sensor tick must end within 60 s: stop here, the cursor says where to go on
BREAKER_FAILURES = 3  # consecutive failed POSTs in a tick: the webhook is down, defer the rest of the tick


def _check_alert(record: Any) -> dict[str, Any] | None:
    ev = record.event_log_entry.dagster_event.event_specific_data
    if ev.passed:
        return None
    asset = ev.asset_key.to_user_string()
    desc = ev.description or ""
    severity = ev.severity.value if ev.severity else "ERROR"
    return alert_payload(
        "check_failed",
        f"{severity} check {asset} {ev.check_name} failed: {desc}",
        asset=asset,
        check=ev.check_name,
        severity=severity,
        description=desc,
        partition=ev.partition,
        run_id=record.event_log_entry.run_id,
        storage_id=record.storage_id,
    )


def _freshness_alert(record: Any) -> dict[str, Any]:
    ev = record.event_log_entry.dagster_event.event_specific_data
    asset = ev.key.to_user_string()
    return alert_payload(
        "freshness",
        f"freshness of {asset}: {ev.previous_state.value} -> {ev.new_state.value}",
        asset=asset,
        previous_state=ev.previous_state.value,
        new_state=ev.new_state.value,
        storage_id=record.storage_id,
    )


@dataclass
class AlertPage:
    """The events after a cursor, complete up to ``upto``: no event of either type with a smaller id is missing."""

    events: list[tuple[int, dict[str, Any] | None]]  # (storage id, payload or None: no alert needed), ascending
    upto: int  # the cursor once every event here is handled
    more: bool  # a page was full: events after ``upto`` may be waiting


def pending_alerts(instance: dg.DagsterInstance, after: int, limit: int = BATCH) -> AlertPage:
    """One page of the events after ``after``, merged over both event types in storage-id order.

    Each type is read ``limit`` at a time: when one type's page is full, the merged list is only complete
    up to that page's last id, so events beyond it are left for the next page (never skipped)."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    upto: int | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_event_records is deprecated for materializations only
        for event_type, build in (
            (dg.DagsterEventType.ASSET_CHECK_EVALUATION, _check_alert),
            (dg.DagsterEventType.FRESHNESS_STATE_CHANGE, _freshness_alert),
        ):
            records = instance.get_event_records(
                dg.EventRecordsFilter(event_type=event_type, after_cursor=after), limit=limit, ascending=True
            )
            if len(records) >= limit:
                last = records[-1].storage_id
                upto = last if upto is None else min(upto, last)
            out.extend((r.storage_id, build(r)) for r in records)
    out.sort(key=lambda x: x[0])
    if upto is not None:
        return AlertPage([e for e in out if e[0] <= upto], upto, True)
    return AlertPage(out, out[-1][0] if out else after, False)


@dataclass
class AlertCursor:
    """The sensor's cursor: events handled up to ``after``, alerts waiting for a retry, delivery counters."""

    after: int = 0
    retry: list[dict[str, Any]] = field(default_factory=list)  # {"attempts": n, "payload": {...}}
    delivered: int = 0
    failed: int = 0  # alerts given up after RETRY_ATTEMPTS failed POSTs

    @classmethod
    def parse(cls, text: str | None) -> AlertCursor:
        if not text:
            return cls()
        if text.strip().isdigit():  # the cursor before retries existed: a bare storage id
            return cls(after=int(text))
        raw = json.loads(text)
        return cls(
            int(raw.get("after", 0)),
            list(raw.get("retry", [])),
            int(raw.get("delivered", 0)),
            int(raw.get("failed", 0)),
        )

    def dump(self) -> str:
        return json.dumps(
            {"after": self.after, "retry": self.retry, "delivered": self.delivered, "failed": self.failed},
            default=str,
        )


@dataclass
class TickReport:
    sent: int = 0
    post_failures: int = 0
    given_up: int = 0
    deferred: int = 0


class _Delivery:
    """POSTs within one tick: counts failures, opens a breaker after consecutive ones (webhook down)."""

    def __init__(self, webhook: str | None, report: TickReport) -> None:
        self.webhook = webhook
        self.report = report
        self.consecutive = 0

    def attempt(self, payload: dict[str, Any]) -> bool | None:
        """True delivered, False failed, None not tried (breaker open)."""
        if not self.webhook:
            return True
        if self.consecutive >= BREAKER_FAILURES:
            self.report.deferred += 1
            return None
        if post_alert(self.webhook, payload) is None:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.report.post_failures += 1
        return False


def _give_up(cursor: AlertCursor, report: TickReport, entry: dict[str, Any]) -> None:
    cursor.failed += 1
    report.given_up += 1
    mp = entry["payload"].get("marketprism", {})
    log.error(
        "alert.delivery_failed",
        text=entry["payload"].get("text"),
        attempts=entry["attempts"],
        kind=mp.get("kind"),
        storage_id=mp.get("storage_id"),
    )


def process_alerts(
    instance: dg.DagsterInstance,
    cursor: AlertCursor,
    webhook: str | None,
    *,
    on_alert: Any = None,
    budget_s: float = TICK_BUDGET_S,
) -> TickReport:
    """One tick: retry the waiting alerts, then every new event after the cursor in order (within the budget)."""
    report = TickReport()
    delivery = _Delivery(webhook, report)
    deadline = time.monotonic() + budget_s
    waiting: list[dict[str, Any]] = []
    for entry in cursor.retry:
        ok = delivery.attempt(entry["payload"])
        if ok:
            cursor.delivered += 1
            report.sent += 1
            continue
        if ok is False:
            entry["attempts"] += 1
        if entry["attempts"] >= RETRY_ATTEMPTS:
            _give_up(cursor, report, entry)
        else:
            waiting.append(entry)
    cursor.retry = waiting
    while time.monotonic() < deadline:
        page = pending_alerts(instance, cursor.after)
        for storage_id, payload in page.events:
            if time.monotonic() >= deadline:
                break
            if payload is not None:
                log_alert(payload)
                if on_alert is not None:
                    on_alert(payload)
                ok = delivery.attempt(payload)
                if ok:
                    cursor.delivered += 1
                    report.sent += 1
                else:
                    cursor.retry.append({"attempts": 1 if ok is False else 0, "payload": payload})
            cursor.after = storage_id
        else:
            cursor.after = max(cursor.after, page.upto)
            if page.more:
                continue
        break
    while len(cursor.retry) > MAX_RETRY_PENDING:
        _give_up(cursor, report, cursor.retry.pop(0))
    return report


@dg.sensor(
    name="integrity_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="failed checks and freshness changes -> one webhook POST each (alerts.webhook_url) + log line",
)
def integrity_alerts(context: dg.SensorEvaluationContext, settings: SettingsResource) -> dg.SkipReason:
    webhook = settings.load_settings().alerts.webhook_url
    cursor = AlertCursor.parse(context.cursor)
    report = process_alerts(
        context.instance, cursor, webhook, on_alert=lambda payload: context.log.warning(payload["text"])
    )
    context.update_cursor(cursor.dump())
    return dg.SkipReason(
        f"{report.sent} alerts sent, {report.post_failures} webhook failures this tick, "
        f"{len(cursor.retry)} waiting for a retry, {report.given_up} given up "
        f"(totals: {cursor.delivered} delivered, {cursor.failed} failed deliveries)"
    )


@dg.run_failure_sensor(
    name="run_failure_alerts",
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="every failed run (seal refused, replication mismatch, collector crash) -> webhook + log",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, settings: SettingsResource) -> None:
    run = context.dagster_run
    payload = alert_payload(
        "run_failed",
        f"run {run.job_name} {run.run_id[:8]} failed: {context.failure_event.message or ''}",
        job=run.job_name,
        run_id=run.run_id,
        tags=dict(run.tags),
    )
    send_alert(settings.load_settings().alerts.webhook_url, payload)
