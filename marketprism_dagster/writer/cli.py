"""``marketprism write``: run the hot writer until SIGTERM / SIGINT."""

import asyncio
from typing import Annotated

import typer

from marketprism_dagster.cli import ConfigOpt, NatsOpt, SetOpt, fail, load


def register(app: typer.Typer) -> None:
    @app.command()
    def write(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        nats_url: NatsOpt = None,
        health_port: Annotated[
            int | None, typer.Option("--health-port", help="port of /health and /metrics (0 = any free port)")
        ] = None,
    ) -> None:
        """Consume JetStream into the hot tables (durable, ack after insert, exactly once in effect)."""
        import structlog

        from marketprism_dagster.nats_server import nats_available
        from marketprism_dagster.writer.consumer import ConsumerConflict
        from marketprism_dagster.writer.lease import WriterLocked
        from marketprism_dagster.writer.service import WriterFailure, run_writer

        sets = list(set_ or [])
        if health_port is not None:
            sets.append(f"writer.health_port={health_port}")
        settings = load(config, sets, nats_url).settings
        log = structlog.get_logger("marketprism_dagster.writer")

        async def main() -> None:
            with nats_available(settings.nats.url, settings.nats.embedded, settings.nats_store_dir) as url:
                effective = settings.model_copy(update={"nats": settings.nats.model_copy(update={"url": url})})
                await run_writer(
                    effective,
                    on_started=lambda svc: log.info("writer.listening", health_port=svc.http_port),
                )

        try:
            asyncio.run(main())
        except (ConsumerConflict, WriterFailure, WriterLocked) as exc:
            raise fail(str(exc)) from None
        except (ConnectionError, OSError) as exc:
            raise fail(f"writer could not start: {exc}") from None
