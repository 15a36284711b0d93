"""Recorded sessions: the fixtures' session JSONL schema (``t, kind, url, data[, raw]``), read once.

One line is one record: ``kind`` is ``connect``, ``send``, ``recv`` or ``http``; ``raw`` holds
the exact received text when the recorder kept it, else ``data`` is the parsed JSON. Pure
(no I/O beyond reading the file): ``marketprism normalize``, the emulator's replay and the
tests read sessions through these two functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def payload_text(rec: dict[str, Any]) -> str:
    """The recorded payload exactly as received: ``raw``, or ``data`` in compact JSON."""
    raw = rec.get("raw")
    if raw is not None:
        return str(raw)
    data = rec.get("data")
    if isinstance(data, str):
        return data
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def read_session(path: Path) -> list[dict[str, Any]]:
    """The records of one session file in file order; each names its ``_file`` and ``_line``."""
    out = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh):
            if line.strip():
                rec = json.loads(line)
                rec["_file"] = path.name
                rec["_line"] = n
                out.append(rec)
    return out
