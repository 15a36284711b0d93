"""The gap tracker's state across restarts: ``<data_dir>/collector/gaps-<shard>.json`` (collector/gaps.py).

Written every housekeeping pass and at shutdown (atomically: a temporary file renamed over the old
one), read once at start. It holds the last time the run was alive and each id series' contiguous
mark, so the next run can record its own downtime as ``source_gap`` rows with exact ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def gaps_path(data_dir: str | Path, shard: str) -> Path:
    return Path(data_dir) / "collector" / f"gaps-{shard}.json"


def read_gap_state(path: Path) -> tuple[dict[str, Any], bool]:
    """(the saved state, readable): ``{}`` and True when there is none (a first start); ``{}`` and False
    (logged) when the file cannot be read: the downtime before this start is then unknown."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, True
    except (OSError, ValueError) as exc:
        log.warning("collector.gap_state_unreadable", path=str(path), error=repr(exc))
        return {}, False
    if not isinstance(raw, dict):
        log.warning("collector.gap_state_unreadable", path=str(path), error="not a JSON object")
        return {}, False
    return raw, True


def write_gap_state(path: Path, state: dict[str, Any]) -> bool:
    """Replace the file with ``state``; False (logged) when writing failed (the next pass retries)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("collector.gap_state_save_failed", path=str(path), error=repr(exc))
        return False
    return True
