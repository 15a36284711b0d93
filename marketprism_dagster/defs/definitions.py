"""Code location ``marketprism``: hot/cold assets, integrity checks, the checks-only schedule,
the automation sensor (starts ON) and the alert sensors."""

from __future__ import annotations

import dagster as dg

from marketprism_dagster.defs import partitions
from marketprism_dagster.defs.assets import build_assets
from marketprism_dagster.defs.checks import build_checks, window_check_keys
from resources import SettingsResource, resources_of
from sensors.alerts import integrity_alerts, run_failure_alerts

CHECKS_EVERY = "*/5 * * * *"


def build_definitions(settings_resource: SettingsResource) -> dg.Definitions:
    """The batch location's definitions; ``settings_resource`` shapes them (partitions, automation) and is the
    ``settings`` resource every asset, check and sensor reads, nested into ``clickhouse`` and ``nats``."""
    settings = settings_resource.load_settings()
    hourly, daily = partitions.hourly(settings), partitions.daily(settings)
    assets = build_assets(settings, hourly, daily)
    checks = build_checks(settings, hourly, daily)
    integrity_job = dg.define_asset_job(
        "integrity_checks",
        selection=dg.AssetSelection.checks(*window_check_keys(checks)),
        description="window rules, lag, duplicates, ledger gaps, hot/cold lag, schema parity; materializes nothing",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[integrity_job],
        schedules=[
            dg.ScheduleDefinition(
                name="integrity_checks_every_5_min",
                job=integrity_job,
                cron_schedule=CHECKS_EVERY,
                default_status=dg.DefaultScheduleStatus.RUNNING,
            )
        ],
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "seal_and_replicate",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
                description=(
                    "seals hot hours a few minutes after they end, and any hour missed within the lookback (daemon "
                    "down, retries exhausted); replicates every day whose 24 hours are sealed"
                ),
            ),
            integrity_alerts,
            run_failure_alerts,
        ],
        resources=resources_of(settings_resource),
        # one process per run: the embedded store admits one chDB session per process, and a
        # subprocess per step would cost more than the step itself
        executor=dg.in_process_executor,
    )


defs = build_definitions(SettingsResource())
