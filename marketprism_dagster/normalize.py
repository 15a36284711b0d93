"""``marketprism normalize``: run the venue adapters and book engine offline over recordings.

Input files use the fixtures' session JSONL schema (``t, kind, url, data[, raw]``). All
files are merged by ``t``; ``*.info.jsonl`` records and instrument-list ``http`` records feed
``load_instruments`` first; ``http`` records whose URL is a depth snapshot feed
``on_snapshot``; ``recv`` records feed ``on_message`` (``received_at`` = ``t`` in ms);
``connect`` records feed ``on_connect``. Output: one wire-format record per line
(``records.encode``), then one ``{"final_book": {...}}`` line per synchronized book. Actions
the adapter asks for (snapshot fetches) are counted, not performed: the
recording already holds what was fetched. Symbols come from the recording, not the config.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
import typer

from marketprism_dagster.cli import fail, load
from marketprism_dagster.records import encode
from marketprism_dagster.sessions import payload_text, read_session
from marketprism_dagster.venues import registry
from marketprism_dagster.venues.base import Output, VenueAdapter, book_record

log = structlog.get_logger(__name__)


def merge_by_time(sessions: Iterable[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Records of several files merged by ``t`` (stable: file order breaks ties)."""
    keyed = [[(r["t"], i, j, r) for j, r in enumerate(s)] for i, s in enumerate(sessions)]
    for _t, _i, _j, rec in heapq.merge(*keyed):
        yield rec


def is_instrument_record(rec: dict[str, Any]) -> bool:
    """An ``http`` record of an instrument listing (any registered venue's ``instruments_path``)."""
    if rec.get("kind") != "http":
        return False
    path = urlsplit(rec.get("url") or "").path
    return any(path.endswith(p) for p in registry.instrument_paths())


@dataclass
class ReplayResult:
    records: list[Any] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    instruments: int = 0

    def absorb(self, out: Output, sink: Callable[[Any], None] | None) -> None:
        if sink is None:
            self.records.extend(out.records)
        else:
            for r in out.records:
                sink(r)
        for k, v in out.events.items():
            self.events[k] = self.events.get(k, 0) + v
        for a in out.actions:
            name = type(a).__name__
            self.actions[name] = self.actions.get(name, 0) + 1


def replay(
    adapter: VenueAdapter,
    records: Iterable[dict[str, Any]],
    sink: Callable[[Any], None] | None = None,
) -> ReplayResult:
    """Feed recorded session records (already merged by ``t``) through ``adapter``."""
    adapter.accept_all_symbols = True
    recs = list(records)
    bodies = {r["url"]: payload_text(r).encode() for r in recs if is_instrument_record(r)}
    result = ReplayResult()
    if bodies:
        result.instruments = len(adapter.load_instruments(bodies))
    for rec in recs:
        kind = rec.get("kind")
        t_ms = round(rec["t"] * 1000)
        url = rec.get("url") or ""
        if kind == "recv":
            result.absorb(adapter.on_message(url, payload_text(rec), t_ms), sink)
        elif kind == "connect":
            result.absorb(adapter.on_connect(url, t_ms), sink)
        elif kind == "http" and not is_instrument_record(rec):
            parts = urlsplit(url)
            # a REST book snapshot of any registered venue: its path and the query parameter naming the symbol
            param = next((p for path, p in registry.snapshot_paths().items() if parts.path.endswith(path)), None)
            if param is not None:
                symbol = parse_qs(parts.query).get(param, [""])[0]
                result.absorb(adapter.on_snapshot(symbol, payload_text(rec).encode(), t_ms), sink)
    return result


def final_books(adapter: VenueAdapter, received_at: int) -> list[dict[str, Any]]:
    """Every synchronized book of the adapter as a record-shaped dict (inverse books keep contracts)."""
    out = []
    depth = adapter.orderbook.depth
    for sym, sync in sorted(getattr(adapter, "books", {}).items()):
        snap = sync.final_snapshot(depth)
        inst = adapter.instruments.get(sym)
        if snap is None or inst is None:
            continue
        rec = book_record(adapter.market_id, adapter.market.market_type, inst, snap, received_at, depth)
        body = msgspec.to_builtins(rec)
        if inst.inverse:
            body["quantity_unit"] = "contracts"
        out.append(body)
    return out


def run(market_id: str, files: list[Path], settings: Any, stdout: Any = None) -> ReplayResult:
    stdout = stdout or sys.stdout
    if market_id not in settings.markets:
        raise ValueError(f"unknown market {market_id!r}; configured: {sorted(settings.markets)}")
    market = settings.markets[market_id]
    adapter = registry.adapter_for(market_id, market, settings.orderbook)
    sessions = [read_session(p) for p in files]
    merged = list(merge_by_time(sessions))
    if adapter.instrument_urls() and not any(is_instrument_record(r) for r in merged):
        raise ValueError(
            f"no instrument metadata in the input: {market.venue} symbols come from its instruments list; "
            "add the recording's *.info.jsonl (exchangeInfo / public/instruments) to the files"
        )
    write = stdout.write

    def sink(record: Any) -> None:
        write(encode(record).decode())
        write("\n")

    result = replay(adapter, merged, sink)
    last_t = round(merged[-1]["t"] * 1000) if merged else 0
    for body in final_books(adapter, last_t):
        write(json.dumps({"final_book": body}, separators=(",", ":")))
        write("\n")
    return result


def register(app: typer.Typer) -> None:
    @app.command("normalize")
    def normalize(
        files: Annotated[list[Path], typer.Argument(help="recorded session JSONL files (ws, http, info)")],
        market: Annotated[str, typer.Option("--market", "-m", help="market id selecting the adapter")],
        config: Annotated[str | None, typer.Option("--config", "-c", help="YAML file")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="key.path=value")] = None,
    ) -> None:
        """Normalize recorded exchange traffic offline: records as JSONL, then final books."""
        loaded = load(config, set_)
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise fail(f"no such file: {', '.join(missing)}")
        try:
            result = run(market, files, loaded.settings)
        except ValueError as exc:
            raise fail(str(exc)) from None
        summary = {"instruments": result.instruments, "events": result.events, "actions_not_performed": result.actions}
        typer.echo(json.dumps({"normalize_summary": summary}), err=True)
