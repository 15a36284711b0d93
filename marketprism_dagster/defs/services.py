"""Code location ``marketprism_services``: the collector shards and the hot writer as long runs,
kept alive by the supervisor sensor. Separate from the batch location so reloading batch code
never touches the collectors."""

import dagster as dg

from marketprism_dagster.defs.runner import RunHeartbeat, collector_program, run_until_terminated, writer_program
from resources import SettingsResource
from sensors.supervisor import build_supervisor


class ServiceConfig(dg.Config):
    kind: str = "collector"  # collector | writer
    shard: str = ""
    takeover: bool = False  # a planned restart's successor: takes the shard over from the run it replaces


@dg.op(description="runs the service's asyncio program until the run is terminated")
def run_service(context: dg.OpExecutionContext, config: ServiceConfig, settings: SettingsResource) -> None:
    settings_now = settings.load_settings()
    beat = RunHeartbeat(context.instance, context.run_id, cpu_window_s=settings_now.supervisor.mon_interval_s)
    if config.kind == "collector":
        shard = config.shard or next(iter(settings_now.collector.shards))

        def program(stop, hb):  # type: ignore[no-untyped-def]
            return collector_program(settings_now, shard, stop, hb, takeover=config.takeover)
    else:

        def program(stop, hb):  # type: ignore[no-untyped-def]
            return writer_program(settings_now, stop, hb)

    run_until_terminated(context.log, beat, program)


@dg.job(
    name="collector",
    executor_def=dg.in_process_executor,
    description="one collector shard (tag marketprism/service=collector:<shard>); started by service_supervisor",
)
def collector_job() -> None:
    run_service()


@dg.job(
    name="writer",
    executor_def=dg.in_process_executor,
    description="the hot writer: JetStream -> ClickHouse hot tables; started by service_supervisor",
)
def writer_job() -> None:
    run_service()


defs = dg.Definitions(
    jobs=[collector_job, writer_job],
    sensors=[build_supervisor([collector_job, writer_job])],
    resources={"settings": SettingsResource()},
)
