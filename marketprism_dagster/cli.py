"""The ``marketprism`` command line.

Each capability registers its commands from its own module (see ``_COMMAND_MODULES``):
a module exposes ``register(app: typer.Typer) -> None``.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import json
import sys
from typing import Annotated, Any

import typer

from marketprism_dagster.config import ConfigError, LoadedConfig, load_config
from marketprism_dagster.logs import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MarketPrism: crypto market data ETL.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="YAML file (env MARKETPRISM_CONFIG)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: key.path=value (repeatable)")]
NatsOpt = Annotated[str | None, typer.Option("--nats-url", help="NATS url (beats MARKETPRISM_NATS_URL)")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load(config: str | None, sets: list[str] | None, nats_url: str | None = None) -> LoadedConfig:
    """Load config with CLI overrides; a bad config exits 2 with the key, value and allowed values."""
    overrides = list(sets or [])
    if nats_url:
        overrides.append(f"nats.url={nats_url}")
    try:
        loaded = load_config(config, overrides=overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    configure_logging(loaded.settings.log_level, loaded.settings.log_format)
    return loaded


def render_table(header: list[str], rows: list[tuple[Any, ...]], fmt: str = "table") -> str:
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(header, r, strict=True)), default=str) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [header, *[[("" if v is None else str(v)) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@app.command()
def init(config: ConfigOpt = None, set_: SetOpt = None, nats_url: NatsOpt = None) -> None:
    """Create or verify the JetStream streams, databases and tables (idempotent)."""
    from marketprism_dagster.bootstrap import initialize

    loaded = load(config, set_, nats_url)
    try:
        lines = asyncio.run(initialize(loaded.settings))
    except Exception as exc:  # user-facing: name the cause
        raise fail(f"init failed: {exc}") from None
    for line in lines:
        typer.echo(line)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL to run against the configured store")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run SQL against the configured ClickHouse store and print the result."""
    from marketprism_dagster.storage import open_store

    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format {fmt!r} is not one of table, csv, json")
    loaded = load(config, set_)
    try:
        with open_store(loaded.settings) as store:
            result = store.query_arrow(sql)
    except Exception as exc:
        raise fail(f"query failed: {exc}") from None
    header = result.column_names
    cols = [result.column(i).to_pylist() for i in range(result.num_columns)]
    rows = list(zip(*cols, strict=True)) if cols else []
    typer.echo(render_table(header, rows, fmt))


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    nats_url: NatsOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
) -> None:
    """Print every effective value and where it came from (secrets masked)."""
    loaded = load(config, set_, nats_url)
    typer.echo(f"# config file: {loaded.path or '(none: defaults only)'}")
    typer.echo(render_table(["key", "value", "source"], loaded.effective(), fmt))


# Modules that add their own commands (emulate, collect, normalize, write, dev, demo, ...).
_COMMAND_MODULES: tuple[str, ...] = (
    "marketprism_dagster.normalize",
    "marketprism_dagster.emulator.cli",
    "marketprism_dagster.writer.cli",
    "marketprism_dagster.collector.cli",
    "marketprism_dagster.collector.probe",
    "marketprism_dagster.collector.backfill",
    "marketprism_dagster.defs.cli",  # dev, demo, integrity, repair
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    _register_all()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
