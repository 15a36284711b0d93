"""The newest data point each REST poll / backfill key has published, kept across collector restarts.

REST answers repeat recent points (a 5 min long/short ratio series returns its last few periods) and
JetStream's duplicate window (120 s) is shorter than most poll periods, so a repeat would otherwise land as
a second row of the same identity. A watermark is saved only once every record submitted before it was
taken is acknowledged, so a saved watermark never covers a point JetStream did not store: a crash can cost
a few repeats (the duplicates check reports them), never a lost point. A watermark moves only over points the
publisher accepted: a point rejected by a full publish buffer stays newer than it and is published by the next
poll that repeats it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from marketprism_dagster.venues.base import Output

log = structlog.get_logger(__name__)


def points_path(data_dir: str | Path, shard: str) -> Path:
    return Path(data_dir) / "collector" / f"published-points-{shard}.json"


class PublishedPoints:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.newest: dict[str, int] = self._load() if path is not None else {}
        self._saved = dict(self.newest)
        self._pending: list[tuple[float, dict[str, int]]] = []  # checkpoints not yet known to be acknowledged

    def _load(self) -> dict[str, int]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("collector.points_unreadable", path=str(self.path), error=repr(exc))
            return {}
        if not isinstance(raw, dict):
            log.warning("collector.points_unreadable", path=str(self.path), error="not a JSON object")
            return {}
        return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}

    def drop_repeats(self, key: str, out: Output) -> Output:
        """Keep only the records of ``out`` newer than the newest point ``key`` already published."""
        newest = self.newest.get(key, -1)
        fresh = [r for r in out.records if r.timestamp > newest]
        if len(fresh) != len(out.records):
            out.count("repeated_point", len(out.records) - len(fresh))
            out.records = fresh
        return out

    def advance(self, key: str, submitted: list[Any], rejected: list[Any]) -> None:
        """Move ``key``'s watermark over the points the publisher accepted, never over a rejected one (a full
        buffer): a rejected point stays newer than the watermark, so the next poll that repeats it publishes it."""
        rejected_ids = {id(r) for r in rejected}
        oldest_rejected = min((r.timestamp for r in rejected), default=None)
        accepted = [
            r.timestamp
            for r in submitted
            if id(r) not in rejected_ids and (oldest_rejected is None or r.timestamp < oldest_rejected)
        ]
        if accepted:
            self.newest[key] = max(self.newest.get(key, -1), max(accepted))

    def checkpoint(self, now: float) -> None:
        """Remember the watermarks as of ``now`` (monotonic). Every point in them was submitted at or before
        ``now``: records are handed to the publisher in the same step that moves a watermark."""
        if self.newest != (self._pending[-1][1] if self._pending else self._saved):
            self._pending.append((now, dict(self.newest)))

    def save_acknowledged(self, oldest_pending: float | None) -> bool:
        """Save the newest checkpoint taken before the oldest unacknowledged submit (``None``: nothing is
        pending, so every checkpoint qualifies). False when writing failed (logged; the next call retries)."""
        ready = [cp for cp in self._pending if oldest_pending is None or cp[0] < oldest_pending]
        if not ready or self.path is None:
            return True
        snapshot = ready[-1][1]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(snapshot, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("collector.points_save_failed", path=str(self.path), error=repr(exc))
            return False
        self._saved = snapshot
        del self._pending[: len(ready)]
        return True
