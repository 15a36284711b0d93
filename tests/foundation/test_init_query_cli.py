"""`marketprism init`, `query`, `config show` as a user runs them (subprocess, real NATS + chDB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from marketprism_dagster.nats_server import free_port
from marketprism_dagster.records import DATA_TYPES

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketprism_dagster.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPRISM", "NATS_URL"))}
    env.update(
        MARKETPRISM_CONFIG=str(REPO / "config" / "marketprism.yaml"),
        MARKETPRISM_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        MARKETPRISM__DATA_DIR=str(tmp_path / "data"),
    )
    return env


def test_init_creates_streams_and_16_tables_then_changes_nothing(tmp_path):
    env = _env(tmp_path)
    first = _run(["init"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    created = [line for line in first.stdout.splitlines() if line.startswith("created")]
    assert "created  stream MARKET_DATA" in created and "created  stream ORDERBOOK_SNAP" in created
    tables = [
        line
        for line in created
        if line.startswith("created  table marketprism_hot.") or line.startswith("created  table marketprism_cold.")
    ]
    assert len(tables) == 2 * len(DATA_TYPES)

    second = _run(["init"], tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert not [line for line in second.stdout.splitlines() if not line.startswith("verified")]
    assert "verified stream MARKET_DATA" in second.stdout

    q = _run(
        [
            "query",
            "--format",
            "json",
            "SELECT database, count() AS n FROM system.tables WHERE database LIKE 'marketprism_%' "
            "GROUP BY database ORDER BY database",
        ],
        tmp_path,
        env,
    )
    assert q.returncode == 0, q.stderr
    rows = [json.loads(line) for line in q.stdout.splitlines()]
    assert rows == [
        {"database": "marketprism_cold", "n": len(DATA_TYPES)},
        {"database": "marketprism_hot", "n": len(DATA_TYPES)},
        {"database": "marketprism_meta", "n": 2},
    ]
    # the embedded data lives under data_dir
    assert (tmp_path / "data" / "clickhouse").is_dir() and (tmp_path / "data" / "nats" / "jetstream").is_dir()


def test_config_show_names_the_source_of_each_value(tmp_path):
    env = _env(tmp_path)
    env["CLICKHOUSE_PASSWORD"] = "s3cret"
    out = _run(["config", "show", "--format", "csv", "--set", "orderbook.depth=50"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    rows = {line.split(",")[0]: line.split(",") for line in out.stdout.splitlines()[2:]}
    assert rows["orderbook.depth"][1:] == ["50", "cli"]
    assert rows["nats.url"][2] == "env:MARKETPRISM_NATS_URL"
    assert rows["storage.password"][1:] == ["****", "env:CLICKHOUSE_PASSWORD"]
    assert rows["orderbook.cadence_ms"][2].startswith("yaml:")
    assert rows["storage.lock_timeout_s"][2] == "default"
    assert "s3cret" not in out.stdout


def test_query_reports_sql_errors_without_traceback(tmp_path):
    env = _env(tmp_path)
    out = _run(["query", "SELEC nonsense"], tmp_path, env)
    assert out.returncode == 2
    assert "query failed" in out.stderr and "Traceback" not in out.stderr
