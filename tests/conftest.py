"""Shared pytest fixtures: the recorded fixtures, a real nats-server, a real chDB store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from marketprism_dagster.config import Settings, load_config
from marketprism_dagster.nats_server import EmbeddedNats, free_port
from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[1]


def fixtures_path() -> Path:
    env = os.environ.get("MARKETPRISM_FIXTURES")
    path = Path(env) if env else REPO.parent / "shared" / "fixtures"
    if not path.is_dir():
        raise RuntimeError(
            f"fixtures not found at {path}: check out ../shared beside the repo or set MARKETPRISM_FIXTURES"
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixtures_path()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Settings rooted in tmp_path; keyword overrides use key paths with '__' for '.'."""

    def make(nats_url: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "storage.path": str(tmp_path / "ch"),
            "nats.url": nats_url or f"nats://127.0.0.1:{free_port()}",
            "nats.embedded": False,
            "environment": "test",
            # a deployment that has been running for a while (an unset start is the first start's hour)
            "seal.start_date": "2026-01-01",
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(REPO / "config" / "marketprism.yaml", overrides=values, env={}).settings

    return make


@pytest.fixture
def store(settings_factory: Callable[..., Settings]) -> Iterator[EmbeddedStore]:
    settings = settings_factory()
    s = EmbeddedStore(settings.embedded_store_path)
    init_schema(s, settings)
    try:
        yield s
    finally:
        s.close()


def make_record(data_type: str, i: int, now_ms: int, *, price: str = "100.5", quantity: str = "0.25") -> Any:
    """A realistic record of ``data_type`` with identity determined by ``i`` (deterministic)."""
    from marketprism_dagster.records import STRUCTS

    market = {
        "orderbook": ("binance_derivatives", "perpetual", "BTC-USDT", "BTCUSDT"),
        "trade": ("okx_spot", "spot", "BTC-USDT", "BTC-USDT"),
        "volatility_index": ("deribit_derivatives", "options", "BTC", "btc_usd"),
    }.get(data_type, ("okx_derivatives", "perpetual", "ETH-USDT", "ETH-USDT-SWAP"))
    common = dict(
        exchange=market[0],
        market_type=market[1],
        symbol=market[2],
        exchange_symbol=market[3],
        timestamp=now_ms - 1000 + (i % 1000),
        received_at=now_ms,
    )
    ts_unique = dict(common, timestamp=now_ms - 10_000_000 + i)
    payloads: dict[str, dict[str, Any]] = {
        "trade": dict(common, trade_id=str(10_000_000 + i), price=price, quantity=quantity, side="buy"),
        "orderbook": dict(
            common,
            update_id=1_000_000 + i,
            tick=now_ms - now_ms % 1000,
            depth=2,
            bids=[(price, quantity), ("100.4", "1")],
            asks=[("100.6", quantity), ("100.7", "2")],
        ),
        "funding_rate": dict(
            ts_unique, funding_rate="0.0001", next_funding_time=now_ms + 3600_000, mark_price=price, index_price=price
        ),
        "open_interest": dict(
            ts_unique, open_interest=quantity, open_interest_value=price, open_interest_contracts="25"
        ),
        "liquidation": dict(
            ts_unique, side="sell", price=price, quantity=quantity, quantity_contracts=None, status="FILLED"
        ),
        "lsr_top_position": dict(
            ts_unique, period="5m", long_short_ratio=price, long_ratio=quantity, short_ratio="0.4444"
        ),
        "lsr_all_account": dict(
            ts_unique, period="5m", long_short_ratio=price, long_ratio="0.4444", short_ratio=quantity
        ),
        "volatility_index": dict(ts_unique, index_value=price, open=price, high=price, low=price, close=price),
    }
    return STRUCTS[data_type](**payloads[data_type])


@pytest.fixture
def record_factory() -> Callable[..., Any]:
    return make_record


def _open_fds() -> int | None:
    fd_dir = Path("/proc/self/fd")
    return len(list(fd_dir.iterdir())) if fd_dir.is_dir() else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Report leaked file descriptors: the suite runs many servers and sockets in each process
    (an xdist worker hands its count to the controller, which prints one line per worker)."""
    fds = _open_fds()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["open_fds"] = fds
    elif fds is not None:
        print(f"\nopen file descriptors at session end: {fds}")


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_testnodedown(node: Any, error: Any) -> None:
    fds = getattr(node, "workeroutput", {}).get("open_fds")
    if fds is not None:
        print(f"\nopen file descriptors at the end of worker {node.gateway.id}: {fds}")


# The two tests that run a whole `dagster dev` take about 80 s and 95 s. xdist's worksteal gives each
# worker a contiguous half of the collection (the first len // 2 items to one, the rest to the other),
# so the first goes first on one worker and the second first on the other: both start at once, and
# neither is left for the end of the run (where a worker would wait on it alone).
_RUN_FIRST, _RUN_SECOND_HALF = "test_demo_smoke.py", "test_make_run.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.path.name == _RUN_FIRST else 1)
    second = [i for i in items if i.path.name == _RUN_SECOND_HALF]
    rest = [i for i in items if i.path.name != _RUN_SECOND_HALF]
    half = len(items) // 2
    items[:] = rest[:half] + second + rest[half:]
