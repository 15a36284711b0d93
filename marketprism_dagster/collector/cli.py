"""``marketprism collect``: run one collector shard in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from marketprism_dagster.cli import ConfigOpt, NatsOpt, SetOpt, fail, load
from marketprism_dagster.config import ConfigError


def register(app: typer.Typer) -> None:
    @app.command()
    def collect(
        shard: Annotated[str, typer.Option("--shard", help="collector.shards entry to run")] = "main",
        config: ConfigOpt = None,
        set_: SetOpt = None,
        nats_url: NatsOpt = None,
    ) -> None:
        """Collect market data for one shard: exchanges -> normalized records -> NATS JetStream."""
        from marketprism_dagster.collector.lock import AlreadyRunning
        from marketprism_dagster.collector.runtime import run_collector

        settings = load(config, set_, nats_url).settings
        try:
            settings.shard_markets(shard)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        try:
            asyncio.run(run_collector(settings, shard))
        except AlreadyRunning as exc:
            raise fail(str(exc), code=3) from None
