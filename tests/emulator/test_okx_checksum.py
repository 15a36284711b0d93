"""The OKX checksum function reproduces every recorded checksum and the documented examples."""

from __future__ import annotations

import json
from pathlib import Path

from marketprism_dagster.emulator.okx import checksum_string, okx_checksum
from marketprism_dagster.sessions import read_session


def _apply(side: dict[str, list[str]], levels: list[list[str]]) -> None:
    for level in levels:
        if level[1] == "0":
            side.pop(level[0], None)
        else:
            side[level[0]] = level


def test_checksum_reproduces_all_290_recorded_okx_checksums(fixtures_root: Path) -> None:
    books: dict[str, tuple[dict[str, list[str]], dict[str, list[str]]]] = {}
    checked = 0
    for rec in read_session(fixtures_root / "sessions" / "okx.ws.jsonl"):
        msg = rec["data"]
        if not isinstance(msg, dict) or msg.get("arg", {}).get("channel") != "books" or "data" not in msg:
            continue
        inst = msg["arg"]["instId"]
        if msg["action"] == "snapshot":
            books[inst] = ({}, {})
        bids, asks = books[inst]
        data = msg["data"][0]
        _apply(bids, data["bids"])
        _apply(asks, data["asks"])
        top_bids = sorted(bids.values(), key=lambda lv: -float(lv[0]))
        top_asks = sorted(asks.values(), key=lambda lv: float(lv[0]))
        assert okx_checksum(top_bids, top_asks) == data["checksum"]
        checked += 1
    assert checked == 290


def test_checksum_string_matches_documented_worked_examples(fixtures_root: Path) -> None:
    doc = json.loads((fixtures_root / "documented" / "okx_orderbook_books.json").read_text())
    examples = {e["id"]: e for e in doc["examples"]}
    full = examples["okx/books/checksum_input_25plus"]["json"]
    short = examples["okx/books/checksum_input_lt25"]["json"]
    assert checksum_string(full["bids"], full["asks"]) == "3366.1:7:3366.8:9:3366:6:3368:8"
    assert checksum_string(short["bids"], short["asks"]) == "3366.1:7:3366.8:9:3368:8:3372:8"
    assert '"3366.1:7:3366.8:9:3366:6:3368:8"' in examples["okx/books/checksum_string_25plus"]["verbatim"]
