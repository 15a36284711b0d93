"""One collector per shard: an advisory file lock under data_dir/locks, handed over on a planned restart.

A planned restart is make-before-break: the supervisor starts the successor with ``takeover`` while the
old run still holds the lock. The successor then holds the shard's successor lock instead (so there is
never more than one successor), collects beside the old run (identical Nats-Msg-Ids: JetStream drops the
copies) and takes the lock over as soon as the old run has stopped and released it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

HANDOVER_POLL_S = 0.2


class AlreadyRunning(Exception):
    """Another process holds the shard's lock."""


def _try_lock(path: Path) -> int | None:
    """An fd holding ``flock`` on ``path``, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:64] or "unknown"
    except OSError:
        return "unknown"


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class InstanceLock:
    """``flock`` on ``data_dir/locks/collector-<shard>.lock``; released when the process exits, even on a crash."""

    def __init__(self, data_dir: str | Path, shard: str) -> None:
        self.path = Path(data_dir) / "locks" / f"collector-{shard}.lock"
        self.successor_path = self.path.with_name(f"collector-{shard}.successor.lock")
        self._fd: int | None = None
        self._successor_fd: int | None = None

    @property
    def holding(self) -> bool:
        """True once this process holds the shard's lock (a successor: after the handover)."""
        return self._fd is not None

    def acquire(self, takeover: bool = False) -> InstanceLock:
        """Take the shard's lock. With ``takeover`` and the lock held, take the successor lock instead and let
        ``wait_handover`` take the shard's lock once its holder stops. AlreadyRunning otherwise."""
        self._fd = _try_lock(self.path)
        if self._fd is not None:
            return self
        holder = _holder(self.path)
        if not takeover:
            raise AlreadyRunning(
                f"another collector holds {self.path} (pid {holder}); stop it, use another --shard, "
                "or set collector.allow_multiple: true (env ALLOW_MULTIPLE=1)"
            )
        self._successor_fd = _try_lock(self.successor_path)
        if self._successor_fd is None:
            raise AlreadyRunning(
                f"collector pid {holder} holds {self.path} and pid {_holder(self.successor_path)} already waits "
                f"to take it over ({self.successor_path}); stop that successor first"
            )
        log.info("collector.lock_waiting_for_handover", path=str(self.path), holder=holder)
        return self

    async def wait_handover(self) -> None:
        """Return once this successor holds the shard's lock (its previous holder stopped or died)."""
        while self._fd is None:
            fd = _try_lock(self.path)
            if fd is None:
                await asyncio.sleep(HANDOVER_POLL_S)
                continue
            self._fd = fd
        if self._successor_fd is not None:
            _unlock(self._successor_fd)
            self._successor_fd = None
            log.info("collector.lock_taken_over", path=str(self.path))

    def release(self) -> None:
        for fd in (self._fd, self._successor_fd):
            if fd is not None:
                _unlock(fd)
        self._fd = None
        self._successor_fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
