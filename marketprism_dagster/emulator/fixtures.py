"""Locate and load the shared fixtures (recorded sessions, documented examples).

The fixtures live next to the repository (``<repo>/../shared/fixtures``); the environment
variable ``MARKETPRISM_FIXTURES`` overrides the location.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from marketprism_dagster.sessions import payload_text, read_session

FIXTURES_ENV = "MARKETPRISM_FIXTURES"


def fixtures_dir(override: Path | str | None = None) -> Path:
    """The fixtures directory: explicit override, then $MARKETPRISM_FIXTURES, then the default."""
    if override is not None:
        path = Path(override)
    elif os.environ.get(FIXTURES_ENV):
        path = Path(os.environ[FIXTURES_ENV])
    else:
        path = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
    path = path.resolve()
    if not (path / "sessions").is_dir():
        raise FileNotFoundError(
            f"fixtures not found at {path}: set {FIXTURES_ENV} to the shared/fixtures directory"
        )
    return path


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One line of sessions/*.jsonl: `payload` holds the exact recorded bytes (or None)."""

    t: float
    kind: str
    url: str
    data: Any
    payload: bytes | None


@lru_cache(maxsize=32)
def load_session(root: Path, name: str) -> tuple[SessionRecord, ...]:
    """Records of sessions/<name>.jsonl in file order."""
    out: list[SessionRecord] = []
    for rec in read_session(root / "sessions" / f"{name}.jsonl"):
        empty = rec.get("raw") is None and rec.get("data") is None
        payload = None if empty else payload_text(rec).encode()
        out.append(SessionRecord(rec["t"], rec["kind"], rec["url"], rec["data"], payload))
    return tuple(out)


@lru_cache(maxsize=64)
def _documented_file(root: Path, name: str) -> dict[str, Any]:
    with (root / "documented" / f"{name}.json").open(encoding="utf-8") as fh:
        result: dict[str, Any] = json.load(fh)
    return result


def documented_example(root: Path, name: str, example_id: str) -> Any:
    """A deep copy of `examples[id == example_id].json` from documented/<name>.json."""
    for example in _documented_file(root, name)["examples"]:
        if example["id"] == example_id:
            if example.get("json") is None:
                raise KeyError(f"documented example {example_id} has no JSON form")
            return copy.deepcopy(example["json"])
    raise KeyError(f"no documented example {example_id} in documented/{name}.json")


def readdress(obj: Any, values: dict[str, Any]) -> Any:
    """Replace, recursively and in place, the value of every key named in `values`."""
    if isinstance(obj, dict):
        for key, val in obj.items():
            if key in values and not isinstance(val, dict | list):
                obj[key] = values[key]
            else:
                readdress(val, values)
    elif isinstance(obj, list):
        for item in obj:
            readdress(item, values)
    return obj
