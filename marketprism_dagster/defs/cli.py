"""`marketprism dev | demo | integrity | repair | accept-loss`.

``dev``: embedded NATS (if nats.url does not answer) + ``dagster dev -w workspace.yaml`` with
DAGSTER_HOME under ``<data_dir>/dagster_home``; the supervisor sensor starts the collector
shards and the writer. ``demo``: the same against the local emulator (synth mode, offline).
Ctrl-C / SIGTERM stops everything started here, including long runs and code servers that
``dagster dev`` would leave behind (they all share the dev server's session).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import psutil
import structlog
import typer

from marketprism_dagster.cli import ConfigOpt, SetOpt, fail, load, render_table
from marketprism_dagster.config import LoadedConfig, Settings
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.supervision import pause_marker
from marketprism_dagster.timeutil import DAY_MS, HOUR_MS

log = structlog.get_logger(__name__)

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- process management


def render_instance_yaml(home: Path, template: Path = REPO / "dagster.yaml") -> Path:
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    target.write_text(template.read_text().replace("{base_dir}", str(home.resolve())))
    return target


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` (zombies excluded: they have exited and wait to be reaped)."""
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, OSError):
            if os.getsid(p.pid) == sid and p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def stop_session(proc: subprocess.Popen[bytes], timeout_s: float = 25.0) -> list[int]:
    """SIGINT the dev server (it stops runs and code servers), then SIGTERM / SIGKILL what is left.

    Returns the pids that had to be killed."""
    sid = proc.pid  # started with start_new_session: its pid is the session id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc.poll() is None or session_processes(sid)):
        time.sleep(0.3)
    left = session_processes(sid)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return [p.pid for p in left]


def cancel_service_runs(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Terminate the collector and writer runs as the UI's Terminate button does, with the supervisor
    paused, so they drain and end CANCELED rather than FAILURE ("interrupted unexpectedly") when the
    operator stops dev/demo. Returns run id -> final status."""
    import dagster as dg

    from marketprism_dagster import supervision as sv

    home = (settings.data_path / "dagster_home").resolve()
    sv.pause_marker(settings).touch()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        unfinished = [dg.DagsterRunStatus[s] for s in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")]
        runs = [r for r in instance.get_runs(dg.RunsFilter(statuses=unfinished)) if sv.SERVICE_TAG in r.tags]
        deadline = time.monotonic() + timeout_s
        asked: set[str] = set()
        while True:
            current = [r for r in (instance.get_run_by_id(r.run_id) for r in runs) if r is not None]
            for run in current:
                # a queued run is canceled outright, a started one terminated through its code server; a
                # STARTING one is left until it starts (terminated while starting, Dagster marks it FAILURE)
                if run.run_id in asked or run.is_finished or run.status == dg.DagsterRunStatus.STARTING:
                    continue
                asked.add(run.run_id)
                try:
                    instance.run_coordinator.cancel_run(run.run_id)
                except Exception as exc:  # the code server may be gone: the session stop still ends it
                    log.warning("dev.terminate_failed", run_id=run.run_id, error=repr(exc))
            if all(r.is_finished for r in current) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        for run in current:
            if not run.is_finished:  # its process is killed with the session right after this
                instance.report_run_canceled(run, message="marketprism dev stopped before the run could drain")
        return {r.run_id: r.status.value for r in (instance.get_run_by_id(r.run_id) for r in runs) if r is not None}
    finally:
        instance.dispose()


def _restore_signals() -> None:
    # A backgrounded `dagster dev` inherits SIG_IGN for SIGINT/SIGTERM: restore the defaults.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_dagster_dev(settings: Settings, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    home = (settings.data_path / "dagster_home").resolve()
    render_instance_yaml(home)
    env = {**env, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    dagster = Path(sys.executable).with_name("dagster")
    args = [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    log_path = home / "dagster-dev.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=str(REPO),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_restore_signals,
        )
    log.info("dev.started", pid=proc.pid, url=f"http://127.0.0.1:{port}", dagster_home=str(home), log=str(log_path))
    return proc


def hot_row_counts(settings: Settings) -> dict[str, int]:
    """Rows per hot table (one short store operation; the writer hands the embedded store over)."""
    from marketprism_dagster.storage import open_store

    db = settings.storage.hot_database
    sql = " UNION ALL ".join(f"SELECT '{t}', count() FROM `{db}`.`{t}`" for t in DATA_TYPES)
    with open_store(settings) as store:
        counts = {str(t): int(n) for t, n in store.query_rows(sql)}
    return {t: counts.get(t, 0) for t in DATA_TYPES}


def launch_env(
    loaded: LoadedConfig,
    nats_url: str,
    extra_env: dict[str, str] | None = None,
    extra_overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``dagster dev`` and so of every process it starts (code servers, daemon, sensors,
    service runs): the launcher's effective CLI settings forwarded (``MARKETPRISM_OVERRIDES``, paths made
    absolute), the NATS url that answers, and ``extra_overrides`` (demo: the emulator's venue URLs)."""
    env = {**os.environ, **(extra_env or {})}
    env.update(loaded.forwarding_env({**(extra_overrides or {}), "nats.url": nats_url}))
    env["MARKETPRISM_NATS_URL"] = nats_url
    return env


def run_dev(
    loaded: LoadedConfig,
    port: int,
    extra_env: dict[str, str],
    report_rows_every_s: float | None = None,
    extra_overrides: dict[str, str] | None = None,
) -> int:
    """Serve until Ctrl-C / SIGTERM, then stop every process started here.

    With ``report_rows_every_s`` print a live row count per hot table at that interval."""
    from marketprism_dagster.bootstrap import init_storage, init_streams
    from marketprism_dagster.nats_server import nats_available

    settings = loaded.settings
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with nats_available(settings.nats.url, settings.nats.embedded, settings.nats_store_dir) as url:
            env = launch_env(loaded, url, extra_env, extra_overrides)
            for line in asyncio.run(init_streams(url, settings)) + init_storage(settings):
                log.info("dev.init", what=line)
            pause_marker(settings).unlink(missing_ok=True)
            proc = start_dagster_dev(settings, env, port)
            try:
                next_report = time.monotonic() + (report_rows_every_s or 0)
                while not stopping.is_set() and proc.poll() is None:
                    stopping.wait(0.5)
                    if report_rows_every_s and time.monotonic() >= next_report:
                        next_report = time.monotonic() + report_rows_every_s
                        try:
                            counts = hot_row_counts(settings)
                        except Exception as exc:  # the store may be busy: report and go on
                            log.warning("dev.row_count_failed", error=repr(exc))
                        else:
                            typer.echo("rows  " + "  ".join(f"{t}={n}" for t, n in counts.items()), err=False)
            finally:
                if proc.poll() is None:
                    try:
                        log.info("dev.services_stopped", runs=cancel_service_runs(settings))
                    except Exception as exc:  # never keep the operator from stopping
                        log.warning("dev.cancel_failed", error=repr(exc))
                killed = stop_session(proc)
                log.info("dev.stopped", killed_leftovers=killed)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


# ---------------------------------------------------------------- integrity and repair


def _parse_time(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def repair_range(
    settings: Settings, start: datetime, end: datetime, *, force: bool = False
) -> list[tuple[str, str, str, str]]:
    """Seal every closed hour in [start, end) for every configured type, then replicate full days.

    Hours older than the hot TTL are refused (never sealed); a day is replicated only when all its
    hours sealed here, and never over a non-empty cold partition with fewer rows unless ``force``."""
    from marketprism_dagster.integrity import configured_types
    from marketprism_dagster.jetstream import connect
    from marketprism_dagster.replication import ReplicationFailed, ReplicationRefused, replicate_day
    from marketprism_dagster.sealing import SealRefused, seal_hour
    from marketprism_dagster.storage import open_store

    rows: list[tuple[str, str, str, str]] = []
    h0 = int(start.timestamp() * 1000) // HOUR_MS * HOUR_MS
    h1 = int(end.timestamp() * 1000)
    async def quiet(_exc: Exception) -> None:  # the refusal below says it once
        return None

    nc = await asyncio.wait_for(
        connect(settings.nats.url, name="marketprism-repair", error_cb=quiet), settings.nats.connect_timeout_s + 3
    )
    js = nc.jetstream()
    sealed: dict[str, set[int]] = {}
    try:
        with open_store(settings) as store:
            for t in configured_types(settings):
                for h in range(h0, h1, HOUR_MS):
                    label = datetime.fromtimestamp(h / 1000, UTC).strftime("%Y-%m-%d %H:00")
                    try:
                        rep = await seal_hour(store, settings, t, h, js)
                        sealed.setdefault(t, set()).add(h)
                        rows.append(("seal", t, label, f"ok {rep.rows} rows, repaired {rep.repaired_messages}"))
                    except SealRefused as exc:
                        rows.append(("seal", t, label, f"REFUSED {exc}"))
                for d in range(h0 // DAY_MS * DAY_MS, h1, DAY_MS):
                    if all(h in sealed.get(t, set()) for h in range(d, d + DAY_MS, HOUR_MS)):
                        label = datetime.fromtimestamp(d / 1000, UTC).strftime("%Y-%m-%d")
                        try:
                            r = replicate_day(store, settings, t, d, force=force)
                            rows.append(("replicate", t, label, f"ok {r.rows} rows"))
                        except ReplicationFailed as exc:
                            verdict = "REFUSED" if isinstance(exc, ReplicationRefused) else "FAILED"
                            rows.append(("replicate", t, label, f"{verdict} {exc}"))
    finally:
        await nc.drain()
    return rows


def register(app: typer.Typer) -> None:
    @app.command()
    def dev(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        port: Annotated[int, typer.Option(help="Dagster UI port")] = 3000,
    ) -> None:
        """Embedded NATS + the Dagster UI (dagster dev): collectors, writer, seals, checks, alerts."""
        loaded = load(config, set_)
        raise typer.Exit(run_dev(loaded, port, {}))

    @app.command()
    def demo(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        port: Annotated[int, typer.Option(help="Dagster UI port")] = 3000,
        mode: Annotated[str, typer.Option(help="emulator mode: synth | replay")] = "synth",
        rate: Annotated[float, typer.Option(help="synth messages/s per stream")] = 5.0,
        rows_every: Annotated[float, typer.Option(help="print live row counts every N s (0 = never)")] = 15.0,
    ) -> None:
        """`dev` against the local exchange emulator: fully offline."""
        loaded = load(config, set_)
        from marketprism_dagster.emulator import Emulator, EmulatorConfig

        with Emulator.start_in_thread(EmulatorConfig(mode=mode, rate=rate)) as emu:
            env = {}
            venues: dict[str, str] = {}  # the emulator's URLs beat every other layer in the started processes
            for market, u in emu.urls.items():
                if market in loaded.settings.markets:
                    env[f"MARKETPRISM__MARKETS__{market.upper()}__REST_URL"] = u["rest"]
                    env[f"MARKETPRISM__MARKETS__{market.upper()}__WS_URL"] = u["ws"]
                    venues[f"markets.{market}.rest_url"] = u["rest"]
                    venues[f"markets.{market}.ws_url"] = u["ws"]
            os.environ.update(env)
            raise typer.Exit(run_dev(loaded, port, env, report_rows_every_s=rows_every, extra_overrides=venues))

    @app.command()
    def integrity(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
        gaps_from: Annotated[
            str, typer.Option("--from", help="list source gaps from this ISO time (UTC if no zone); default 24 h ago")
        ] = "",
        gaps_to: Annotated[str, typer.Option("--to", help="source gaps listed up to this ISO time; default: now")] = "",
    ) -> None:
        """Run the integrity rules, then list the source gaps of the window (per market, symbol and type: open,
        repaired with the count recovered, unrecoverable with the reason). Exit 0 only if every rule passes
        (warnings are printed, not fatal)."""
        from marketprism_dagster import integrity as rules
        from marketprism_dagster import source_gaps
        from marketprism_dagster.ledger.lost import ACCEPTED
        from marketprism_dagster.ledger.queries import markers_of
        from marketprism_dagster.storage import open_store

        loaded = load(config, set_)
        try:
            end = _parse_time(gaps_to) if gaps_to else datetime.now(UTC)
            start = _parse_time(gaps_from) if gaps_from else end - timedelta(days=1)
        except ValueError as exc:
            raise fail(f"--from/--to must be ISO times like 2025-01-31T00:00: {exc}") from None
        try:
            with open_store(loaded.settings) as store:
                results = rules.run_all(store, loaded.settings)
                gaps = source_gaps.read_gaps(
                    store, loaded.settings, int(start.timestamp() * 1000), int(end.timestamp() * 1000)
                )
                accepted = rules.accepted_losses(markers_of(store, loaded.settings, ACCEPTED))
        except Exception as exc:
            raise fail(f"integrity checks could not run: {exc} (did you run `marketprism init`?)") from None
        typer.echo(
            render_table(
                ["status", "check", "target", "detail"],
                [(r.status, r.check, r.target, r.description) for r in results],
                fmt,
            )
        )
        if fmt == "table":
            typer.echo(f"\nsource gaps {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC: {len(gaps)}")
        if gaps:
            typer.echo(render_table(source_gaps.LIST_HEADER, source_gaps.rows(gaps), fmt))
        if fmt == "table" and accepted:
            typer.echo(f"\naccepted losses (marketprism accept-loss; those hours sealed 'incomplete'): {len(accepted)}")
        if accepted:
            typer.echo(render_table(rules.ACCEPTED_HEADER, accepted, fmt))
        raise typer.Exit(0 if rules.all_passed(results) else 1)

    @app.command()
    def repair(
        from_: Annotated[str, typer.Option("--from", help="start, ISO time (UTC if no zone)")],
        to: Annotated[str, typer.Option("--to", help="end (exclusive), ISO time")] = "",
        force: Annotated[
            bool, typer.Option("--force", help="let a replicated day replace a cold day that holds more rows")
        ] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Backfill: seal every closed hour in the range (fetching gaps from JetStream), replicate full days."""
        loaded = load(config, set_)
        try:
            start = _parse_time(from_)
            end = _parse_time(to) if to else datetime.now(UTC) - timedelta(seconds=loaded.settings.seal.grace_s)
        except ValueError as exc:
            raise fail(f"--from/--to must be ISO times like 2025-01-31T00:00: {exc}") from None
        try:
            rows = asyncio.run(repair_range(loaded.settings, start, end, force=force))
        except (OSError, TimeoutError) as exc:  # NATS or the store unreachable: nothing was sealed
            from marketprism_dagster.logs import mask_url, redact

            raise fail(
                f"repair could not reach NATS at {mask_url(loaded.settings.nats.url)} or the store: "
                f"{redact(str(exc)) or 'no answer in time'}; start them (marketprism dev) or set nats.url / "
                "storage.url, then retry"
            ) from None
        typer.echo(render_table(["step", "type", "partition", "result"], rows))
        bad = [r for r in rows if not r[3].startswith("ok")]
        raise typer.Exit(1 if bad else 0)

    @app.command("accept-loss")
    def accept_loss(
        type_: Annotated[str, typer.Option("--type", help="the data type whose loss to accept, e.g. liquidation")],
        hour: Annotated[str, typer.Option("--hour", help="the (first) hour, ISO time (UTC if no zone)")],
        to: Annotated[str, typer.Option("--to", help="the last hour, inclusive (default: --hour only)")] = "",
        reason: Annotated[str, typer.Option("--reason", help="why the loss is accepted (kept with the marker)")] = "",
        dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be accepted; write nothing")] = False,
        force: Annotated[
            bool, typer.Option("--force", help="accept a type some venue keeps a history of (beyond its retention)")
        ] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Accept that messages lost from JetStream before the writer committed them cannot be refilled (a type no
        venue keeps a history of): writes an 'accepted' ledger marker per lost range and hour, so the hour seals
        'incomplete' naming the range and the reason. Seal the hours again afterwards (marketprism repair)."""
        from marketprism_dagster import accept_loss as al
        from marketprism_dagster.jetstream import connect
        from marketprism_dagster.logs import mask_url, redact
        from marketprism_dagster.records import RECORD_TYPES
        from marketprism_dagster.storage import open_store
        from marketprism_dagster.timeutil import now_ms

        loaded = load(config, set_)
        settings = loaded.settings
        if type_ not in RECORD_TYPES:
            raise fail(f"--type {type_!r} is not a data type; one of {', '.join(RECORD_TYPES)}")
        try:
            first = _parse_time(hour)
            last = _parse_time(to) if to else first
        except ValueError as exc:
            raise fail(f"--hour/--to must be ISO times like 2025-01-31T00:00: {exc}") from None
        if last < first:
            raise fail(f"--to {to} is before --hour {hour}: give the last hour to accept, at or after the first")
        hours = al.hours_between(int(first.timestamp() * 1000), int(last.timestamp() * 1000))
        text = reason.strip() or "no reason given"
        now = now_ms()

        async def run() -> al.AcceptPlan:
            async def quiet(_exc: Exception) -> None:
                return None

            nc = await asyncio.wait_for(connect(settings.nats.url, name="marketprism-accept-loss", error_cb=quiet),
                                        settings.nats.connect_timeout_s + 3)
            try:
                with open_store(settings) as store:
                    return await al.plan(store, settings, type_, hours, text, nc.jetstream(), now=now)
            finally:
                await nc.drain()

        try:
            plan = asyncio.run(run())
        except (OSError, TimeoutError) as exc:
            raise fail(
                f"accept-loss could not reach NATS at {mask_url(settings.nats.url)} or the store: "
                f"{redact(str(exc)) or 'no answer in time'} (JetStream's first sequence tells which messages are "
                "lost); start them (marketprism dev) or set nats.url / storage.url, then retry"
            ) from None
        why = al.refusal(plan, force=force)
        typer.echo(render_table(al.HEADER, al.rows(plan, dry_run=dry_run or why is not None)))
        if plan.in_stream:
            typer.echo(f"note: ledger gaps JetStream still holds are not lost (the seal repairs them): "
                       f"{', '.join(f'{g.first}-{g.last}' for g in plan.in_stream[:5])}")
        if why is not None:
            raise fail(f"nothing accepted: {why}")
        if dry_run:
            typer.echo(f"dry run: {len(plan.new)} markers would be written")
            raise typer.Exit(0)
        with open_store(settings) as store:
            written = al.accept(store, settings, plan, now=now)
        log.info("accept_loss.accepted", data_type=type_, hours=len(hours), markers=len(written), reason=text)
        end = datetime.fromtimestamp((hours[-1] + HOUR_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%M")
        typer.echo(f"{len(written)} markers written; seal the hours again: materialize the hot partitions or run "
                   f"marketprism repair --from {first:%Y-%m-%dT%H:00} --to {end}")
