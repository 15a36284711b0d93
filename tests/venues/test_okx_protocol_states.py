"""OKX books in the venue's three protocol states, proven on the recorded OKX session.

(a) the recording as it is (pushed snapshots, real CRC32 checksums);
(b) the same frames with every ``checksum`` set to 0 (OKX since 2026-06-23);
(c) no pushed snapshot at all: each recorded snapshot is removed from the stream and supplied,
    at the same instant, as the REST answer of ``GET /api/v5/market/books`` (OKX changelog of
    2026-02-12), recorded as an ``http`` record.

``marketprism normalize --market okx_spot`` must publish the same books in all three, and the
final books must be equal level by level. The transformations change nothing but what the issue
names (checksum values; where the snapshot comes from).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import payload_text, read_session, run

OKX_WS = "okx.ws.jsonl"
OKX_INFO = "okx.info.jsonl"
REST_BOOKS = "https://www.okx.com/api/v5/market/books?instId={inst}&sz=400"


def _books_frame(rec: dict[str, Any]) -> dict[str, Any] | None:
    if rec.get("kind") != "recv":
        return None
    msg = orjson.loads(payload_text(rec))
    if isinstance(msg, dict) and (msg.get("arg") or {}).get("channel") == "books" and "data" in msg:
        return msg
    return None


def _write(path: Path, recs: list[dict[str, Any]]) -> Path:
    with path.open("w") as fh:
        for r in recs:
            fh.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n")
    return path


def _with(rec: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in rec.items() if k != "raw"}
    out["data"] = msg
    return out


def zero_checksums(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rec in recs:
        msg = _books_frame(rec)
        if msg is not None:
            for d in msg["data"]:
                d["checksum"] = 0
            rec = _with(rec, msg)
        out.append(rec)
    return out


def rest_snapshots(recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(stream without pushed snapshots, checksums 0; the snapshots as REST ``http`` records)."""
    stream, http = [], []
    for rec in zero_checksums(recs):
        msg = _books_frame(rec)
        if msg is not None and msg.get("action") == "snapshot":
            d = msg["data"][0]
            body = {"code": "0", "msg": "", "data": [{k: v for k, v in d.items() if k != "checksum"}]}
            url = REST_BOOKS.format(inst=msg["arg"]["instId"])
            http.append({"t": rec["t"], "kind": "http", "url": url, "data": body})
            continue
        stream.append(rec)
    return stream, http


def _normalize(files: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    buf = io.StringIO()
    result = run("okx_spot", files, Settings(), stdout=buf)
    books, finals = [], []
    for line in buf.getvalue().splitlines():
        body = json.loads(line)
        if "final_book" in body:
            finals.append(body["final_book"])
        elif "bids" in body and "asks" in body:
            books.append(body)
    return books, finals, {"events": result.events, "actions": result.actions}


@pytest.fixture(scope="module")
def recorded(fixtures_dir: Path) -> list[dict[str, Any]]:
    return read_session(fixtures_dir / "sessions" / OKX_WS)


@pytest.fixture(scope="module")
def baseline(fixtures_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    s = fixtures_dir / "sessions"
    return _normalize([s / OKX_WS, s / OKX_INFO])


def test_the_recording_itself_verifies_every_checksum_and_publishes_books(baseline: Any) -> None:
    books, finals, summary = baseline
    assert books and finals
    assert {b["symbol"] for b in books} == {"BTC-USDT"}  # the spot instrument of the recording
    assert "checksum_failure" not in summary["events"] and "sequence_gap" not in summary["events"]
    assert summary["actions"] == {}


def test_checksum_zero_publishes_the_same_books_as_the_recording(
    recorded: list[dict[str, Any]], fixtures_dir: Path, tmp_path: Path, baseline: Any
) -> None:
    books, finals, summary = _normalize(
        [_write(tmp_path / "okx.ws.jsonl", zero_checksums(recorded)), fixtures_dir / "sessions" / OKX_INFO]
    )
    assert books == baseline[0]
    assert finals == baseline[1]
    assert summary["events"].get("checksum_failure", 0) == 0
    assert summary["events"].get("book_unsynced_update", 0) == 0
    assert summary["actions"] == {}  # no resubscribe, no snapshot fetch


def test_no_pushed_snapshot_bridges_the_rest_snapshot_to_the_same_books(
    recorded: list[dict[str, Any]], fixtures_dir: Path, tmp_path: Path, baseline: Any
) -> None:
    stream, http = rest_snapshots(recorded)
    assert len(http) == 3  # one per recorded instrument (BTC-USDT, BTC-USD-220527, UNI-USD-SWAP)
    assert not any((_books_frame(r) or {}).get("action") == "snapshot" for r in stream)
    books, finals, summary = _normalize(
        [
            _write(tmp_path / "okx.ws.jsonl", stream),
            _write(tmp_path / "okx.http.jsonl", http),
            fixtures_dir / "sessions" / OKX_INFO,
        ]
    )
    assert books == baseline[0]
    assert finals == baseline[1]
    assert summary["events"].get("book_rest_sync") == 3
    assert summary["events"].get("checksum_failure", 0) == 0
    assert "Send" not in summary["actions"]
