"""One writer per durable consumer: a lease in a JetStream key-value bucket.

The durable consumers (and the ledger the writer orders them by) must have one writer: two would
commit overlapping ranges. Writers can run on different hosts that share one NATS (README,
scale-out), so a file lock under data_dir is not enough; the lease lives where the consumers live.

Key ``<writer.durable_prefix>`` in bucket ``marketprism_writer_lease`` (TTL ``TTL_S``): created
with "only if absent", renewed every ``RENEW_S`` with "only if the revision is still mine". A
second writer finds the key, watches it for a renewal and stops with ``WriterLocked`` naming the
holder (host, pid, start time, health URL). A holder that died stops renewing and its key expires
after the TTL; a holder on this host whose pid is gone is taken over at once. A writer commits only
while its lease is certainly valid (renewed less than ``TTL_S - RENEW_S`` ago), and one that finds
its lease taken over stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.js import api as js_api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from marketprism_dagster.config import Settings

log = structlog.get_logger(__name__)

BUCKET = "marketprism_writer_lease"
TTL_S = 15.0
RENEW_S = 3.0


class WriterLocked(Exception):
    """Another writer holds the lease on the durable consumers."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLease:
    def __init__(self, js: Any, settings: Settings) -> None:
        self.js = js
        self.settings = settings
        self.key = settings.writer.durable_prefix
        self.owner = uuid.uuid4().hex
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.health_url: str | None = None
        self.revision = 0
        self.renewed_at = 0.0
        self.lost: str | None = None
        self._kv: Any = None

    def value(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "started_at": self.started_at, "health": self.health_url}).encode()

    def valid(self) -> bool:
        """Certainly still ours: renewed recently enough that it cannot have expired."""
        return self.lost is None and time.monotonic() - self.renewed_at < TTL_S - RENEW_S

    async def _bucket(self) -> Any:
        if self._kv is None:
            replicas = max(c.replicas for c in self.settings.streams.values())
            self._kv = await self.js.create_key_value(js_api.KeyValueConfig(
                bucket=BUCKET, ttl=TTL_S, history=1, storage=js_api.StorageType.FILE, replicas=replicas,
                description="MarketPrism: one hot writer per durable consumer"))
        return self._kv

    def _locked(self, holder: dict[str, Any]) -> WriterLocked:
        return WriterLocked(
            f"another hot writer holds the durable consumers {self.key}_* (host {holder.get('host')}, pid "
            f"{holder.get('pid')}, started {holder.get('started_at')}, health {holder.get('health') or 'unknown'}); "
            "two writers would commit overlapping ranges. Stop that one first (a supervised writer: Dagster UI, "
            "Runs, tag marketprism/service=writer), or give this one another writer.durable_prefix"
        )

    async def acquire(self) -> None:
        kv = await self._bucket()
        seen: int | None = None
        deadline = time.monotonic() + TTL_S + RENEW_S
        while True:
            try:
                self.revision = await kv.create(self.key, self.value())
                break
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(self.key)
            except KeyNotFoundError:
                continue  # expired meanwhile
            try:
                holder = json.loads(entry.value)
            except ValueError:
                holder = {}
            if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid") or 0)):
                try:  # its process is gone: take over now instead of waiting for the TTL
                    self.revision = await kv.update(self.key, self.value(), last=entry.revision)
                    log.info("writer.lease_taken_over", previous_pid=holder.get("pid"))
                    break
                except KeyWrongLastSequenceError:
                    continue
            if (seen is not None and entry.revision != seen) or time.monotonic() > deadline:
                raise self._locked(holder)
            seen = entry.revision
            await asyncio.sleep(RENEW_S / 2)
        self.renewed_at = time.monotonic()
        log.info("writer.lease_acquired", key=self.key, bucket=BUCKET)

    async def renew(self) -> None:
        kv = await self._bucket()
        try:
            self.revision = await kv.update(self.key, self.value(), last=self.revision)
        except KeyWrongLastSequenceError:
            try:  # expired while NATS was away and nobody took it (we never committed meanwhile): ours again
                self.revision = await kv.create(self.key, self.value())
            except KeyWrongLastSequenceError:
                self.lost = "another writer took over the lease"
                log.error("writer.lease_lost", key=self.key, reason=self.lost)
                return
        self.renewed_at = time.monotonic()

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew every RENEW_S until ``stop``; sets ``stop`` when the lease was lost."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), RENEW_S)
                return
            except TimeoutError:
                pass
            try:
                await self.renew()
            except Exception as exc:  # NATS away: commits pause once the lease might have expired
                log.warning("writer.lease_renew_failed", error=str(exc)[:200])
            if self.lost is not None:
                stop.set()
                return

    async def release(self) -> None:
        if self._kv is None or self.lost is not None or not self.revision:
            return
        try:
            await self._kv.delete(self.key, last=self.revision)
        except Exception as exc:
            log.debug("writer.lease_release_failed", error=str(exc)[:200])
