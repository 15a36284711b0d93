"""Records a collector could not hand to JetStream before it stopped, kept on disk for its next start.

At shutdown the collector waits ``collector.shutdown_flush_s`` for NATS to take its publish buffer;
whatever is still unacknowledged is written here (one JSON line per message: subject, Nats-Msg-Id,
payload) and queued again, first, by the next run of the shard. The Msg-Ids make a message that was
in fact stored (its ack lost) a counted duplicate, never a second row. The file is removed once every
replayed message is acknowledged; a run that stops before that writes the ones still pending again.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import structlog

log = structlog.get_logger(__name__)

Entry = tuple[str, bytes, str]  # subject, payload, msg_id


def spill_path(data_dir: str | Path, shard: str) -> Path:
    return Path(data_dir) / "collector" / f"unpublished-{shard}.jsonl"


def write_spill(path: Path, entries: list[Entry]) -> None:
    """Replace ``path`` with ``entries`` atomically (a crash leaves the old file or the new one). OSError on
    failure: the caller counts and logs the records as lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        for subject, payload, msg_id in entries:
            f.write(orjson.dumps({"subject": subject, "msg_id": msg_id, "payload": payload.decode()}) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_spill(path: Path) -> tuple[list[Entry], int]:
    """(entries, unreadable line count). A missing file is empty; a bad line is skipped and counted."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        log.error("collector.spill_unreadable", path=str(path), error=repr(exc))
        return [], 0
    entries: list[Entry] = []
    bad = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            entry = (doc["subject"], doc["payload"].encode(), doc["msg_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
            bad += 1
            continue
        if not all(isinstance(v, str) and v for v in (entry[0], entry[2])):
            bad += 1
            continue
        entries.append(entry)
    if bad:
        log.error("collector.spill_lines_skipped", path=str(path), skipped=bad, kept=len(entries))
    return entries, bad
