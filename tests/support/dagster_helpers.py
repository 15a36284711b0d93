"""Helpers for the tests that drive a running `dagster dev` (demo smoke, make run) or stand in for its run workers."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any


def gql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


def wait_for(what: str, fn: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = fn()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# A stand-in for a Dagster run worker: it installs its own SIGINT handler as Dagster's does (``capture_interrupts``
# replaces whatever was inherited), exits 3 on SIGINT (a graceful drain) and says "ready" once it can take one. It
# must not rely on the inherited disposition: a job started in the background of a non-interactive shell (CI)
# inherits SIGINT ignored, and so would every child started without its own handler.
_RUN_WORKER_CODE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "print('ready', flush=True)\n"
    "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    raise SystemExit(3)"
)


def start_run_worker(run_id: str) -> subprocess.Popen[str]:
    """Start the stand-in run worker for ``run_id`` (in its command line, as a real worker's) once it handles SIGINT."""
    worker = subprocess.Popen([sys.executable, "-c", _RUN_WORKER_CODE, run_id], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    return worker
