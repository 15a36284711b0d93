"""`marketprism collect`: runs a shard until SIGTERM, flushes, exits 0; bad shard is a user-facing error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from marketprism_dagster.collector.health import read_health
from marketprism_dagster.collector.lock import InstanceLock
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from tests.support.collector_helpers import emulator_overrides, until

REPO = Path(__file__).resolve().parents[2]
MARKETPRISM = str(Path(sys.executable).with_name("marketprism"))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MARKETPRISM") and k not in ("NATS_URL",)}


def _yaml(value: object) -> str:
    return (
        "[" + ", ".join(value) + "]"
        if isinstance(value, list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


async def test_collect_runs_until_sigterm_then_flushes_and_exits_cleanly(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    markets = {"binance_spot": (["BTC-USDT"], ["orderbook", "trade"])}
    async with Emulator(EmulatorConfig(mode="synth", rate=50, seed=4, venues=("binance_spot",))) as emu:
        overrides = {
            **emulator_overrides(emu.urls, markets),
            "data_dir": str(tmp_path / "data"),
            "nats.url": nats_server.url,
            "nats.embedded": False,
            "collector.grace_s": 0,
        }
        args = [MARKETPRISM, "collect", "--config", str(REPO / "config" / "marketprism.yaml")]
        for k, v in overrides.items():
            args += ["--set", f"{k}={_yaml(v)}"]
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=REPO, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            await until(lambda: (read_health(tmp_path / "data") or {}).get("status") == "healthy", 30, 0.2)
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.decode()[-2000:]
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    flushed = [e for e in events if e["event"] == "collector.flushed"]
    assert len(flushed) == 1 and flushed[0]["complete"] is True and flushed[0]["acked"] > 0
    final = read_health(tmp_path / "data")
    assert final is not None and final["status"] == "stopped"
    assert final["coverage"]["trade"]["binance_spot"]["last_success_ts"] is not None
    with InstanceLock(tmp_path / "data", "main"):  # the shard lock was released
        pass


async def test_collect_unknown_shard_names_the_configured_ones(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        MARKETPRISM,
        "collect",
        "--shard",
        "nope",
        "--config",
        str(REPO / "config" / "marketprism.yaml"),
        "--set",
        f"data_dir={tmp_path}",
        cwd=REPO,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "unknown shard 'nope'" in err.decode() and "collector.shards" in err.decode()
