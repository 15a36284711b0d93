"""`make run` (= `marketprism dev`) on the embedded default: creates both streams and the 16 tables,
serves the UI, exits 0 on Ctrl-C, and a second run creates nothing.

Every market's URLs point at a closed loopback port: the collector the supervisor starts only
ever fails to connect to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marketprism_dagster.nats_server import free_port
from marketprism_dagster.records import DATA_TYPES
from tests.support.dagster_helpers import gql, wait_for

REPO = Path(__file__).resolve().parents[2]
MARKETS = ("binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives")
pytestmark = pytest.mark.slow


def run_dev(tmp: Path, run: int, env: dict[str, str], *, until_ui: bool) -> tuple[int, list[str], dict[str, str]]:
    """Start `marketprism dev`, wait for the UI (``until_ui``) or only for its init (Ctrl-C while Dagster
    starts), Ctrl-C it; (exit code, its init lines, the final status of the service runs it stopped)."""
    port = free_port()
    log = tmp / f"dev-{run}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("marketprism")), "dev", "--port", str(port)],
            cwd=str(REPO),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if until_ui:
                wait_for("the Dagster UI", lambda: gql(port, "{ version }"), 180)
            else:
                wait_for("dev.started", lambda: b'"dev.started"' in log.read_bytes(), 60)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    stopped = [e["runs"] for e in lines if e.get("event") == "dev.services_stopped"]
    return code, [e["what"] for e in lines if e.get("event") == "dev.init"], stopped[0] if stopped else {}


def test_make_run_creates_streams_and_tables_exits_0_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MARKETPRISM_CONFIG": str(REPO / "config" / "marketprism.yaml"),
        "MARKETPRISM__DATA_DIR": str(tmp_path / "data"),
        "MARKETPRISM_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "HEALTH_CHECK_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "MARKETPRISM__WRITER__HEALTH_PORT": str(free_port()),
        "LOG_FORMAT": "json",
    }
    closed = f"127.0.0.1:{free_port()}"
    for m in MARKETS:
        env[f"MARKETPRISM__MARKETS__{m.upper()}__REST_URL"] = f"http://{closed}"
        env[f"MARKETPRISM__MARKETS__{m.upper()}__WS_URL"] = f"ws://{closed}"

    code, first, runs = run_dev(tmp_path, 1, env, until_ui=True)
    assert code == 0, (tmp_path / "dev-1.log").read_text()[-3000:]
    # the services were just launched (queued or starting): stopping still leaves no run unfinished
    assert set(runs.values()) <= {"CANCELED"}, runs
    created = [line.split()[-1] for line in first if line.startswith("created")]
    assert {"MARKET_DATA", "ORDERBOOK_SNAP"} <= set(created)
    tables = [c for c in created if c.startswith(("marketprism_hot.", "marketprism_cold."))]
    assert len(tables) == 2 * len(DATA_TYPES), first

    # the second run is stopped while Dagster is still starting: a Ctrl-C at any moment exits 0
    code, second, _ = run_dev(tmp_path, 2, env, until_ui=False)
    assert code == 0, (tmp_path / "dev-2.log").read_text()[-3000:]
    assert second and all(line.startswith("verified") for line in second), second
    assert sorted(line.split()[-1] for line in second) == sorted(line.split()[-1] for line in first)
