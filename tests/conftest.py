"""Shared pytest fixtures: the recorded fixtures, a real nats-server, a real chDB store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.nats_server import EmbeddedNats, free_port
from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore
from tests.support.records import make_record
from tests.support.settings import REPO, settings_in


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
    """Settings rooted in tmp_path (``settings_in``)."""
    return settings_in(tmp_path)


@pytest.fixture
def store(settings_factory: Callable[..., Settings]) -> Iterator[EmbeddedStore]:
    settings = settings_factory()
    s = EmbeddedStore(settings.embedded_store_path)
    init_schema(s, settings)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def record_factory() -> Callable[..., Any]:
    """The suite's one record factory (tests/support/records.py) as a fixture."""
    return make_record


def _descriptors_and_threads() -> str | None:
    """Open file descriptors and threads of this process (Linux)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return None
    status = Path("/proc/self/status").read_text()
    threads = next((line.split()[1] for line in status.splitlines() if line.startswith("Threads:")), "?")
    return f"{len(list(fd_dir.iterdir()))} (threads: {threads})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Report leaked file descriptors: the suite runs many servers and sockets in each process
    (an xdist worker hands its count to the controller, which prints one line per worker)."""
    fds = _descriptors_and_threads()
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


# The longest tests: the two that run a whole `dagster dev` (about 60-80 s and 50-95 s) and the real
# 2-minute collector stop (about 145 s). xdist's worksteal gives each worker a contiguous half of the
# collection (the first len // 2 items to one, the rest to the other), so the ones in _RUN_FIRST go first
# on one worker and the second-half one first on the other: none is left for the end of the run (where
# a worker would wait on it alone).
_RUN_FIRST = ("test_demo_smoke.py", "test_downtime_refill_e2e.py")
_RUN_SECOND_HALF = "test_make_run.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _RUN_FIRST.index(item.path.name) if item.path.name in _RUN_FIRST else len(_RUN_FIRST))
    second = [i for i in items if i.path.name == _RUN_SECOND_HALF]
    rest = [i for i in items if i.path.name != _RUN_SECOND_HALF]
    half = len(items) // 2
    items[:] = rest[:half] + second + rest[half:]
