"""One collector per shard: an advisory file lock under data_dir/locks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """Another process holds the shard's lock."""


class InstanceLock:
    """``flock`` on ``data_dir/locks/collector-<shard>.lock``; released when the process exits, even on a crash."""

    def __init__(self, data_dir: str | Path, shard: str) -> None:
        self.path = Path(data_dir) / "locks" / f"collector-{shard}.lock"
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another collector holds {self.path} (pid {holder}); stop it, use another --shard, "
                "or set collector.allow_multiple: true (env ALLOW_MULTIPLE=1)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
