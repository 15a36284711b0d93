"""Embedded ClickHouse (chDB) behind a per-operation file lock.

chDB lets one process at a time open a data path. Every operation therefore takes an
exclusive ``flock`` on ``<path>.lock``, opens a session, works and closes. A long-lived
writer may instead ``hold()`` the session across consecutive batches (opening costs
~70 ms); it hands the store over as soon as another process registers as a waiter.

Every open of a chDB session keeps engine memory and threads for the life of the process: with
this schema ~1.6 MB and 5 threads of the engine's global pool per open (chdb 4.4, 2026-12-03: 200
reopens of one store in one process, 32 -> 1026 threads, 365 -> 689 MB RSS, linear; a path without
tables keeps neither; closing returns neither). The writer shows its count as
``marketprism_writer_store_opens``; the supervisor restarts it above ``writer_memory_mb``. A
long holder therefore reopens as rarely as it can: after handing over, it stays away until
other processes have left the store alone for ``SETTLE_S`` (their releases stamp
``<path>.recent``), at most ``SETTLE_MAX_S``, so a burst of short operations from a Dagster
step costs the writer one reopen, not one per operation.

Engine settings (``SESSION_SETTINGS``, startup arguments of the session) keep chDB's own upkeep
small; a long holder's session (the writer: small INSERTs back to back) also runs each statement
on one thread (``LONG_HOLDER_SETTINGS``), where a short session keeps two for scans.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog

from marketprism_dagster.storage.base import ArrowInsert, Store, StoreUnavailable

log = structlog.get_logger(__name__)

# chDB keeps process-global state: serialize every session of this process.
_PROCESS_LOCK = threading.RLock()

# Arrow tables one ``run_statements`` call can bind (chDB's Python() finds them among the caller's locals)
ARROW_SLOTS = 8

# every session: the engine's memory worker (RSS -> memory tracker) polls once a second instead of ten times
# (0.12-0.15% of a core in an idle writer)
SESSION_SETTINGS: dict[str, str] = {"memory_worker_period_ms": "1000"}
# a long holder's session: one thread per statement. A 40-row INSERT ... VALUES costs ~13% less CPU on one
# thread than on two (300 of each, interleaved in one process: 8.43 vs 9.73 ms, 12.83 vs 14.77 ms on a loaded
# machine); the writer's statements are small, and its large Arrow inserts at high rates read one table each
LONG_HOLDER_SETTINGS: dict[str, str] = {"max_threads": "1", "max_insert_threads": "1"}

# a long holder (the writer) re-opens only once other processes left the store alone this long ...
SETTLE_S = 0.3
# ... or after waiting this long (then it takes its turn and hands over again to the next waiter)
SETTLE_MAX_S = 2.0


class EmbeddedStore(Store):
    backend = "embedded"

    def __init__(self, path: str | Path, lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_timeout_s = lock_timeout_s
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._waiters = self.path.with_name(self.path.name + ".waiters")
        self._waiters.mkdir(parents=True, exist_ok=True)
        self._recent = self.path.with_name(self.path.name + ".recent")
        self.opens = 0  # chDB sessions opened by this store object (each keeps engine memory: see the module doc)
        self._session: Any = None
        self._lock_fd: int | None = None
        self._holding = False
        self._tenure_s = 0.0
        self._acquired_at = 0.0
        self._depth = 0

    # ------------------------------------------------------------------ locking

    def _long_holder(self) -> bool:
        return self._holding and self._tenure_s == 0.0

    def _settle(self) -> None:
        """A long holder waits until other processes' operations stopped (see the module docstring)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while time.monotonic() < deadline:
                try:  # held by another process: its operation is running, so the burst is not over
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                fcntl.flock(fd, fcntl.LOCK_UN)
                try:
                    idle = time.time() - self._recent.stat().st_mtime
                except OSError:
                    return
                if idle >= SETTLE_S and not self.others_waiting():
                    return
                time.sleep(0.02)
        finally:
            os.close(fd)

    def _acquire(self) -> None:
        if self._long_holder():
            self._settle()
        marker = self._waiters / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout_s
        marker.touch()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise StoreUnavailable(
                            f"embedded store {self.path} stayed locked by another process for "
                            f"{self.lock_timeout_s:.0f} s; stop that process or raise storage.lock_timeout_s"
                        ) from None
                    time.sleep(0.005)
        finally:
            marker.unlink(missing_ok=True)
        self._lock_fd = fd
        self._acquired_at = time.monotonic()
        try:
            from chdb import session as chdb_session

            self._session = chdb_session.Session(self._connection_string())
            self.opens += 1
        except Exception:
            self._release()
            raise

    def _connection_string(self) -> str:
        params = {**SESSION_SETTINGS, **(LONG_HOLDER_SETTINGS if self._long_holder() else {})}
        return f"{self.path}?" + "&".join(f"{k}={v}" for k, v in params.items())

    def _release(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            finally:
                self._session = None
        if self._lock_fd is not None:
            if not self._long_holder():
                with contextlib.suppress(OSError):
                    self._recent.touch()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def others_waiting(self) -> bool:
        mine = f"{os.getpid()}-"
        return any(not p.name.startswith(mine) for p in self._waiters.iterdir())

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return self.operation()

    @contextlib.contextmanager
    def operation(self) -> Iterator[Any]:
        """The open chDB session for one operation (reentrant)."""
        with _PROCESS_LOCK:
            opened_here = self._session is None
            if opened_here:
                self._acquire()
            self._depth += 1
            try:
                yield self._session
            finally:
                self._depth -= 1
                if self._depth == 0 and (not self._holding or self._hand_over_due()):
                    self._release()

    def _hand_over_due(self) -> bool:
        return time.monotonic() - self._acquired_at >= self._tenure_s and self.others_waiting()

    @contextlib.contextmanager
    def hold(self, tenure_s: float = 0.0) -> Iterator[EmbeddedStore]:
        """Keep the session open across operations; hand over to waiting processes between them once
        the session has been open ``tenure_s`` (a short job of several queries then opens the store once
        instead of once per query, at the price of a waiting writer's delay of at most ``tenure_s``)."""
        self._holding = True
        self._tenure_s = tenure_s
        try:
            yield self
        finally:
            self._holding = False
            self._tenure_s = 0.0
            with _PROCESS_LOCK:
                if self._depth == 0:
                    self._release()

    def yield_to_waiters(self) -> None:
        """Between batches: if another process waits for the store, let it in now."""
        with _PROCESS_LOCK:
            if self._depth == 0 and self._session is not None and self.others_waiting():
                self._release()
                time.sleep(0.02)

    def close(self) -> None:
        with _PROCESS_LOCK:
            self._holding = False
            if self._depth == 0:
                self._release()

    # ------------------------------------------------------------------ Store

    def execute(self, sql: str) -> None:
        with self.operation() as s:
            s.query(sql)

    def query_arrow(self, sql: str) -> pa.Table:
        with self.operation() as s:
            result = s.query(sql, "ArrowTable")
        return result if isinstance(result, pa.Table) else pa.table({})

    def _insert_arrow(self, database: str, table: str, sql: str, data: pa.Table, settings: dict[str, Any]) -> None:
        # chDB's Python() table function resolves the name in this frame's locals.
        mp_arrow_batch = data  # noqa: F841
        stmt = sql.format(src="Python(mp_arrow_batch)")
        if settings:
            stmt += " SETTINGS " + ", ".join(f"{k} = {_sql_literal(v)}" for k, v in settings.items())
        with self.operation() as s:
            s.query(stmt)

    def run_statements(self, steps: Sequence[str | ArrowInsert]) -> None:
        """All steps in one chDB call (a multi-statement query runs in order and stops at the first error)."""
        arrow = [s for s in steps if isinstance(s, ArrowInsert) and s.data.num_rows]
        if len(arrow) > ARROW_SLOTS:
            super().run_statements(steps)
            return
        # chDB's Python() table function resolves these names among this frame's locals
        mp_arrow_0, mp_arrow_1, mp_arrow_2, mp_arrow_3, mp_arrow_4, mp_arrow_5, mp_arrow_6, mp_arrow_7 = (  # noqa: RUF059
            [a.data for a in arrow] + [None] * ARROW_SLOTS)[:ARROW_SLOTS]
        sql: list[str] = []
        slot = 0
        for step in steps:
            if isinstance(step, str):
                sql.append(step)
            elif step.data.num_rows:
                stmt = step.sql(f"Python(mp_arrow_{slot})")
                if step.dedup_token:
                    stmt += f" SETTINGS insert_deduplication_token = {_sql_literal(step.dedup_token)}"
                sql.append(stmt)
                slot += 1
        if not sql:
            return
        with self.operation() as s:
            s.query(";\n".join(sql))


def _sql_literal(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)
