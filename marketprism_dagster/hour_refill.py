"""Refill one hot hour from the venues' history: what a seal does when JetStream no longer holds the hour.

A seal repairs a ledger gap from JetStream; once the gap's messages aged out of the stream
(``streams.<S>.max_age_s``) it refuses (``SealRefused.aged_out``). For a data type some venue keeps a
history of (``venues/history.py``), ``refill_hour`` then runs ``marketprism backfill``'s code for the hour
on every enabled market collecting the type (``collector/backfill.run_backfill``: fetch the history, ask
the hot table which identities it already holds, publish only the missing ones; where the live channel
aggregates matches into pushes, a match inside a stored push is held too: ``venues/history.held_matches``),
and waits until the writer has committed what was published. A type no venue keeps a history of is refused by
``no_history_reason`` with the cause and the fix.

Once the hour is whole again, ``refill_hour`` writes a ledger marker (``ledger.lost.Marker``) for each lost
range the seal named: "stream S seqs a..b lost, hour H of type T refilled from the venues' history", which
accounts for the range in that hour's seal. "Whole" means: every enabled market collecting the type keeps its
history, every symbol's walk covered the hour (state ``repaired``), and what was published is committed (the
writer's watermark reached the stream's last sequence after the publish; nothing published: the table already
held every record the history has). The marker is written after the rows, as the writer writes its ledger
after its rows: a crash between them leaves refilled rows and no marker, so the seal still refuses and the
next refill finds every record held (refilled records carry their live identities), publishes nothing and
writes the marker. A repeated marker is one row (its insert token and the table's key are the range, type
and hour).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from marketprism_dagster.collector.backfill import BackfillError, run_backfill
from marketprism_dagster.collector.gaps import REPAIRED
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect
from marketprism_dagster.ledger.lost import LostRange, Marker
from marketprism_dagster.ledger.queries import watermark, write_markers
from marketprism_dagster.source_gaps import read_gaps
from marketprism_dagster.storage import open_store
from marketprism_dagster.timeutil import HOUR_MS, now_ms
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.history import history_for

log = structlog.get_logger(__name__)

WRITER_WAIT_S = 120.0
WRITER_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Refilled:
    """One market and symbol of a refilled hour."""

    market: str
    symbol: str
    fetched: int  # records the venue's history holds for the hour
    stored: int  # of those, already in the hot table
    published: int  # published now and committed by the writer
    state: str  # the walk's outcome: repaired (complete), unrecoverable, open (venue unreachable)
    detail: str

    def label(self) -> str:
        return f"{self.market}:{self.symbol} {self.state} +{self.published} ({self.stored}/{self.fetched} held)"


def history_markets(settings: Settings, data_type: str) -> list[str]:
    """The enabled markets collecting ``data_type`` whose venue keeps a history of it."""
    out = []
    for market, mc in settings.enabled_markets().items():
        if data_type in mc.data_types and history_for(adapter_for(market, mc, settings.orderbook), data_type):
            out.append(market)
    return out


def markets_without_history(settings: Settings, data_type: str) -> list[str]:
    """The enabled markets collecting ``data_type`` whose venue keeps no history of it."""
    having = set(history_markets(settings, data_type))
    return [m for m, mc in settings.enabled_markets().items() if data_type in mc.data_types and m not in having]


def hour_whole(refilled: Sequence[Refilled], without_history: Sequence[str], committed: bool) -> str | None:
    """Why a refill does not make the hour whole (no marker may be written), None when it does."""
    if without_history:
        return f"no history of the type on {', '.join(without_history)}"
    if not refilled:
        return "no market's history answered"
    walks = [r.label() for r in refilled if r.state != REPAIRED]
    if walks:
        return f"the history walk did not cover the hour: {'; '.join(walks)}"
    if not committed:
        return "the writer has not committed the refilled records yet"
    return None


def hour_markers(stream: str, data_type: str, hour_ms: int, lost: Sequence[LostRange],
                 refilled: Sequence[Refilled], source_gaps: str) -> list[Marker]:
    """One marker per lost range for a refilled (type, hour)."""
    detail = "; ".join(r.label() for r in refilled)
    published, held = sum(r.published for r in refilled), sum(r.stored for r in refilled)
    return [Marker(stream, x.first, x.last, x.missing, data_type, hour_ms, published, held, detail, source_gaps)
            for x in lost]


def no_history_reason(settings: Settings, data_type: str, hour_ms: int, refused: str) -> str:
    """The refusal of an aged-out hour of a type without venue history: the cause and the fix."""
    stream = settings.stream_for(data_type) or ""
    max_age = settings.streams[stream].max_age_s if stream in settings.streams else 0
    return (
        f"{refused}. The lost messages aged out of JetStream ({stream} keeps {max_age} s, "
        f"streams.{stream}.max_age_s) and no venue keeps a history of {data_type}, so nothing can refill it: "
        "the hour stays unsealed (and its day is not replicated to cold). Fix for the next outage: keep the writer "
        "running (its lag alert fires long before retention), or "
        f"raise streams.{stream}.max_age_s so an outage can be repaired from JetStream"
    )


async def refill_hour(
    settings: Settings, data_type: str, hour_ms: int, lost: Sequence[LostRange] = (), *,
    wait_s: float = WRITER_WAIT_S,
) -> list[Refilled]:
    """Backfill ``hour_ms`` of ``data_type`` from every market with its history; wait up to ``wait_s`` for the
    writer (another process) to commit what was published (a writer that slow leaves the seal refusing, retried
    later); then mark the ``lost`` ranges (``SealRefused.lost``) accounted for in the hour when it is whole."""
    out: list[Refilled] = []
    for market in history_markets(settings, data_type):
        try:
            reports = await run_backfill(settings, market, data_type, None, hour_ms, hour_ms + HOUR_MS - 1)
        except BackfillError as exc:
            log.warning("hour_refill.refused", market=market, data_type=data_type, error=str(exc))
            continue
        out.extend(Refilled(market, r.symbol, r.fetched, r.stored, r.published, r.state, r.detail) for r in reports)
    stream = settings.stream_for(data_type) or ""
    committed = True
    if any(r.published for r in out) and not (committed := await wait_for_writer(settings, stream, wait_s)):
        log.warning("hour_refill.writer_behind", data_type=data_type, hour_ms=hour_ms, waited_s=wait_s)
    log.info("hour_refill.done", data_type=data_type, hour_ms=hour_ms, published=sum(r.published for r in out))
    if lost:
        why_not = hour_whole(out, markets_without_history(settings, data_type), committed)
        if why_not is not None:
            log.warning("hour_refill.not_marked", data_type=data_type, hour_ms=hour_ms, reason=why_not,
                        lost=[x.label() for x in lost])
        else:
            mark(settings, stream, data_type, hour_ms, lost, out)
    return out


def mark(settings: Settings, stream: str, data_type: str, hour_ms: int, lost: Sequence[LostRange],
         refilled: Sequence[Refilled]) -> None:
    """Write the markers of a whole refilled hour (after its rows: see the module docstring)."""
    with open_store(settings) as store:
        gaps = read_gaps(store, settings, hour_ms, hour_ms + HOUR_MS, [data_type])
        labels = "; ".join(f"{g.series} {g.cause} {g.first_id}..{g.last_id} {g.state}" if g.first_id
                           else f"{g.series} {g.cause} {g.state}" for g in gaps)
        marks = hour_markers(stream, data_type, hour_ms, lost, refilled, labels)
        write_markers(store, settings, marks, now_ms())
    for m in marks:
        log.info("hour_refill.marked", marker=m.label(), data_type=data_type, hour_ms=hour_ms)


async def wait_for_writer(settings: Settings, stream: str, wait_s: float) -> bool:
    """Until the writer has committed every message ``stream`` holds now (True), or ``wait_s`` passed."""
    nc = await connect(settings.nats.url, name="marketprism-hour-refill")
    try:
        last = int((await nc.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await nc.close()
    deadline = time.monotonic() + wait_s
    while True:
        with open_store(settings) as store:
            if watermark(store, settings, stream) >= last:
                return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(WRITER_POLL_S)
