"""`marketprism probe`: the collector's connections without publishing; exit 0 only when every feed works.

Against the project's emulator over real sockets on 127.0.0.1: healthy, injected faults (book gaps, bad
checksums, a 429 storm), a closed WebSocket port, and the three OKX books protocol states.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from marketprism_dagster.collector.health import health_path
from marketprism_dagster.collector.lock import InstanceLock
from marketprism_dagster.collector.points import points_path
from marketprism_dagster.collector.probe import FeedResult, Probe, ProbeResult, run_probe, select_markets
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import free_port
from tests.support.collector_helpers import emulator_overrides, metric_value

REPO = Path(__file__).resolve().parents[2]
MARKETPRISM = str(Path(sys.executable).with_name("marketprism"))
ALL_TYPES = [
    "orderbook",
    "trade",
    "funding_rate",
    "open_interest",
    "liquidation",
    "lsr_top_position",
    "lsr_all_account",
]
EVERY_MARKET: dict[str, tuple[list[str], list[str]]] = {
    "binance_spot": (["BTC-USDT", "ETH-USDT"], ["orderbook", "trade"]),
    "binance_derivatives": (["BTC-USDT", "ETH-USDT"], ALL_TYPES),
    "okx_spot": (["BTC-USDT", "ETH-USDT"], ["orderbook", "trade"]),
    "okx_derivatives": (["BTC-USDT", "ETH-USDT"], ALL_TYPES),
    "deribit_derivatives": (["BTC", "ETH"], ["volatility_index"]),
}
REST_ONLY = {"open_interest", "lsr_top_position", "lsr_all_account"}  # Binance USD-M polls these
SECRET = "probe-s3cret-never-printed"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MARKETPRISM") and k != "NATS_URL"}


def _yaml(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _cli(overrides: dict[str, Any], *args: str) -> tuple[int, str, str]:
    argv = [MARKETPRISM, "probe", *args, "--config", str(REPO / "config" / "marketprism.yaml")]
    for k, v in overrides.items():
        argv += ["--set", f"{k}={_yaml(v)}"]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _feed(result: ProbeResult, market: str, data_type: str) -> FeedResult:
    return next(f for f in result.feeds if f.market == market and f.data_type == data_type)


async def _probe(
    settings_factory: Callable[..., Settings],
    cfg: EmulatorConfig,
    markets: dict[str, tuple[list[str], list[str]]],
    seconds: float = 4,
    **overrides: Any,
) -> ProbeResult:
    async with Emulator(cfg) as emu:
        settings = settings_factory(**emulator_overrides(emu.urls, markets), **overrides)
        return await run_probe(settings, select_markets(settings, None), seconds)


async def test_healthy_emulator_every_feed_works_exit_0_publishing_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg = EmulatorConfig(mode="synth", rate=20, seed=11)
    async with Emulator(cfg) as emu:
        overrides = {
            **emulator_overrides(emu.urls, EVERY_MARKET),
            "data_dir": str(data_dir),
            "nats.url": f"nats://127.0.0.1:{free_port()}",
            "nats.embedded": False,
            "storage.password": SECRET,
        }
        # a collector of the default shard is "running": the probe must not clash with its lock
        with InstanceLock(data_dir, "main"):
            code, out, err = await _cli(overrides, "--seconds", "6", "--json")
        served = {name: dict(stats) for name, stats in emu.stats.items()}
    assert code == 0, out + err[-3000:]
    assert SECRET not in out and SECRET not in err
    result = json.loads(out)
    assert result["ok"] is True and result["failures"] == []
    feeds = {(f["market"], f["data_type"]): f for f in result["feeds"]}
    assert set(feeds) == {(m, t) for m, (_, types) in EVERY_MARKET.items() for t in types}
    for (market, data_type), f in feeds.items():
        assert f["ok"] is True, f
        assert f["first_error"] is None, f
        if data_type != "liquidation":
            assert f["records"] > 0, f
        rest_only = data_type in REST_ONLY and (market.startswith("binance") or data_type != "open_interest")
        assert f["connected"] is (None if rest_only else True), f
        if rest_only:
            assert f["rest_status"] == "200" and f["rest_failures"] == 0, f
        if data_type == "orderbook":
            assert f["book_synchronized"] is True and f["resyncs"] == 0, f
        else:
            assert f["book_synchronized"] is None and f["resyncs"] is None, f
    # Binance books start from a REST snapshot: its status is the orderbook row's REST status
    assert feeds[("binance_spot", "orderbook")]["rest_status"] == "200"
    assert feeds[("binance_derivatives", "orderbook")]["rest_status"] == "200"
    # every venue server saw the probe (WebSocket and REST), yet nothing was published or written
    assert all(s["ws_connections"] > 0 and s["rest_requests"] > 0 for s in served.values()), served
    assert not health_path(data_dir, "main").exists() and not health_path(data_dir, "probe").exists()
    assert not points_path(data_dir, "main").exists() and not points_path(data_dir, "probe").exists()


async def test_closed_websocket_port_fails_naming_the_feed_and_refused_connection(tmp_path: Path) -> None:
    closed = free_port()
    markets = {
        "binance_derivatives": (["BTC-USDT"], ["orderbook", "trade", "open_interest"]),
        "okx_spot": (["BTC-USDT"], ["trade"]),
    }
    async with Emulator(EmulatorConfig(mode="synth", rate=20, seed=12, venues=("binance", "okx"))) as emu:
        overrides = {
            **emulator_overrides(emu.urls, markets),
            "markets.binance_derivatives.ws_url": f"ws://127.0.0.1:{closed}",
            "data_dir": str(tmp_path / "data"),
            "nats.embedded": False,
        }
        code, out, err = await _cli(overrides, "--seconds", "4")
    assert code == 1, out + err[-3000:]
    lines = out.splitlines()
    assert (
        f"binance_derivatives orderbook: cannot connect to ws://127.0.0.1:{closed}/public/stream (connection refused)"
        in lines
    )
    assert (
        f"binance_derivatives trade: cannot connect to ws://127.0.0.1:{closed}/market/stream (connection refused)"
        in lines
    )
    assert "2 of 4 feeds failing:" in lines
    # the REST-polled type and the other market still work, and the table says so
    rows = {tuple(line.split()[:2]): line.split() for line in lines if line.startswith(("binance_", "okx_"))}
    assert rows[("binance_derivatives", "open_interest")][-1] == "ok"
    assert rows[("okx_spot", "trade")][-1] == "ok"
    assert rows[("binance_derivatives", "orderbook")][2] == "no"  # connected column
    assert rows[("binance_derivatives", "orderbook")][-1] == "FAIL"


async def test_gaps_in_the_depth_stream_fail_the_book_with_resyncs_and_sequence_gap(
    settings_factory: Callable[..., Settings],
) -> None:
    # every 4th venue frame arms a gap on the next depth diff: about every second diff of the one book is lost
    cfg = EmulatorConfig(
        mode="synth", rate=20, seed=13, venues=("binance_derivatives",), faults="gap@binance_derivatives:every=4"
    )
    result = await _probe(settings_factory, cfg, {"binance_derivatives": (["BTC-USDT"], ["orderbook", "trade"])})
    book = _feed(result, "binance_derivatives", "orderbook")
    assert not result.ok
    assert book.ok is False and book.book_synchronized is False and book.connected is True
    assert book.resyncs is not None and book.resyncs > 0
    assert book.first_error == "sequence_gap on binance_derivatives/public"
    line = next(x for x in result.failures() if x.startswith("binance_derivatives orderbook: "))
    assert "sequence_gap" in line and f"{book.resyncs} resyncs" in line
    assert _feed(result, "binance_derivatives", "trade").ok is True
    assert result.failures() == [line]


async def test_bad_okx_checksums_fail_the_book_with_checksum_failure(
    settings_factory: Callable[..., Settings],
) -> None:
    cfg = EmulatorConfig(
        mode="synth", rate=20, seed=14, venues=("okx",), okx_books="checksum", faults="bad_checksum@okx:every=1"
    )
    result = await _probe(settings_factory, cfg, {"okx_spot": (["BTC-USDT"], ["orderbook", "trade"])})
    book = _feed(result, "okx_spot", "orderbook")
    assert book.ok is False and book.book_synchronized is False
    assert book.resyncs is not None and book.resyncs > 0
    assert book.first_error == "checksum_failure on okx_spot/public"
    assert len(result.failures()) == 1
    assert result.failures()[0].startswith("okx_spot orderbook: ")
    assert f"({book.resyncs} resyncs, checksum_failure" in result.failures()[0]
    assert _feed(result, "okx_spot", "trade").ok is True


async def test_rest_429_storm_fails_every_type_of_the_market_naming_the_instrument_list(
    settings_factory: Callable[..., Settings],
) -> None:
    cfg = EmulatorConfig(
        mode="synth", rate=20, seed=15, venues=("binance",), faults="rest_429@binance_derivatives:every=1"
    )
    markets = {
        "binance_derivatives": (["BTC-USDT"], ["orderbook", "trade", "open_interest"]),
        "binance_spot": (["BTC-USDT"], ["trade"]),
    }
    async with Emulator(cfg) as emu:
        settings = settings_factory(**emulator_overrides(emu.urls, markets))
        result = await run_probe(settings, select_markets(settings, None), 5)
        rest = emu.urls["binance_derivatives"]["rest"]
    assert _feed(result, "binance_spot", "trade").ok is True
    expected = f"instruments not loaded from {rest}/fapi/v1/exchangeInfo (GET {rest}/fapi/v1/exchangeInfo: HTTP 429)"
    assert result.failures() == [
        f"binance_derivatives {t}: {expected}" for t in ("orderbook", "trade", "open_interest")
    ]
    for t in ("orderbook", "trade", "open_interest"):
        f = _feed(result, "binance_derivatives", t)
        assert f.records == 0 and f.messages == 0
        assert f.rest_status == "instruments 429" and f.rest_failures >= 3  # one 429 a second (Retry-After 1)


async def test_okx_rate_limit_code_in_an_http_200_body_fails_the_polled_types_naming_the_code(
    settings_factory: Callable[..., Settings],
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=20, seed=17, venues=("okx",), faults="rest_code_200@okx:every=1:path=rubik")
    markets = {"okx_derivatives": (["BTC-USDT"], ["trade", "lsr_top_position", "lsr_all_account"])}
    async with Emulator(cfg) as emu:
        settings = settings_factory(**emulator_overrides(emu.urls, markets))
        result = await run_probe(settings, select_markets(settings, None), 4)
        rest = emu.urls["okx_derivatives"]["rest"]
    assert _feed(result, "okx_derivatives", "trade").ok is True
    paths = {
        "lsr_top_position": "long-short-position-ratio-contract-top-trader",
        "lsr_all_account": "long-short-account-ratio-contract",
    }
    for data_type, path in paths.items():
        f = _feed(result, "okx_derivatives", data_type)
        assert f.ok is False and f.records == 0 and f.rest_status == "code 50011" and f.rest_failures >= 1
        assert f.first_error is not None
        assert f.first_error.startswith(f"GET {rest}/api/v5/rubik/stat/contracts/{path}: venue code 50011 (Rate limit")
        assert f"okx_derivatives {data_type}: no valid record in " in "\n".join(result.failures())
    assert len(result.failures()) == 2


async def test_okx_books_synchronize_in_every_protocol_state(settings_factory: Callable[..., Settings]) -> None:
    """The three OKX protocol states (docs/venues.md), each its own emulator, probed at once."""
    markets = {
        "okx_spot": (["BTC-USDT", "ETH-USDT"], ["orderbook"]),
        "okx_derivatives": (["BTC-USDT"], ["orderbook", "trade"]),
    }
    states = ("checksum", "zero", "rest")
    results = await asyncio.gather(
        *(
            _probe(
                settings_factory,
                EmulatorConfig(mode="synth", rate=20, seed=16, venues=("okx",), okx_books=state),
                markets,
            )
            for state in states
        )
    )
    for okx_books, result in zip(states, results, strict=True):
        assert result.ok, (okx_books, result.failures())
        for market in markets:
            book = _feed(result, market, "orderbook")
            assert book.book_synchronized is True and book.resyncs == 0 and book.records > 0, (okx_books, book)
            # only the `rest` state takes the book from GET /api/v5/market/books
            assert book.rest_status == ("200" if okx_books == "rest" else None), (okx_books, book)


def test_unknown_and_disabled_markets_are_refused_with_the_fix(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(markets__okx_spot__enabled=False)
    with pytest.raises(ValueError, match=r"unknown market nope; configured: binance_derivatives, binance_spot"):
        select_markets(settings, ["nope"])
    with pytest.raises(ValueError, match=r"--set markets.okx_spot.enabled=true"):
        select_markets(settings, ["okx_spot"])
    assert "okx_spot" not in select_markets(settings, None)
    assert select_markets(settings, ["deribit_derivatives", "binance_spot"]) == ["deribit_derivatives", "binance_spot"]


async def test_a_polled_point_leaves_the_poll_loop_running(settings_factory: Callable[..., Settings]) -> None:
    # the probe counts polled points instead of publishing them; the poll loop then moves the watermark over
    # the accepted ones, which needs the (empty) list of rejected points, not None
    cfg = EmulatorConfig(mode="synth", rate=20, seed=18, venues=("binance_derivatives",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(
            **emulator_overrides(emu.urls, {"binance_derivatives": (["BTC-USDT"], ["open_interest"])})
        )
        probe = Probe(settings, ["binance_derivatives"])
        stop = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(4, stop.set)
        try:
            await probe.run(stop)
        finally:
            timer.cancel()
    assert probe.result is not None
    assert _feed(probe.result, "binance_derivatives", "open_interest").records > 0
    text = probe.metrics.exposition().decode()
    assert metric_value(text, "marketprism_collector_errors_total", code="task_failed") == 0
