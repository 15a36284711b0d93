"""Alerts: failed asset checks, freshness state changes and failed runs -> webhook + log line.

OSS Dagster has no alert policies. This sensor reads ASSET_CHECK_EVALUATION and
FRESHNESS_STATE_CHANGE events after its cursor (the event log's storage id), so each event
is posted once. Needs a consolidated event log (dagster.yaml): the run-sharded SQLite
default cannot answer a global query.
"""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from marketprism_dagster.config import settings_from_env
from sensors.webhook import alert_payload, send_alert

BATCH = 200


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


def pending_alerts(instance: dg.DagsterInstance, after: int) -> list[tuple[int, dict[str, Any] | None]]:
    """(storage id, payload or None for events that need no alert), ascending."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_event_records is deprecated for materializations only
        for event_type, build in (
            (DagsterEventType.ASSET_CHECK_EVALUATION, _check_alert),
            (DagsterEventType.FRESHNESS_STATE_CHANGE, _freshness_alert),
        ):
            records = instance.get_event_records(
                dg.EventRecordsFilter(event_type=event_type, after_cursor=after), limit=BATCH, ascending=True
            )
            out.extend((r.storage_id, build(r)) for r in records)
    return sorted(out, key=lambda x: x[0])


@dg.sensor(
    name="integrity_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="failed checks and freshness changes -> one webhook POST each (alerts.webhook_url) + log line",
)
def integrity_alerts(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    webhook = settings_from_env().alerts.webhook_url
    cursor = int(context.cursor or 0)
    sent = 0
    for storage_id, payload in pending_alerts(context.instance, cursor):
        if payload is not None:
            if not send_alert(webhook, payload):
                break  # retry this one on the next tick; nothing after it is skipped
            context.log.warning(payload["text"])
            sent += 1
        cursor = storage_id
    context.update_cursor(str(cursor))
    return dg.SkipReason(f"{sent} alerts sent")


@dg.run_failure_sensor(
    name="run_failure_alerts",
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="every failed run (seal refused, replication mismatch, collector crash) -> webhook + log",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    payload = alert_payload(
        "run_failed",
        f"run {run.job_name} {run.run_id[:8]} failed: {context.failure_event.message or ''}",
        job=run.job_name,
        run_id=run.run_id,
        tags=dict(run.tags),
    )
    send_alert(settings_from_env().alerts.webhook_url, payload)
