"""Small helpers shared by the venue modules: exact decimal strings, periods, record fields."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog

from marketprism_dagster.book import BookSnapshot
from marketprism_dagster.records import OrderBook
from marketprism_dagster.venues.base import Instrument, Output, RestPoll, VenueAdapter

log = structlog.get_logger(__name__)

PERIOD_SECONDS: dict[str, int] = {
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "12h": 43200,
    "1d": 86400,
}
LSR_LIMIT = 3  # long/short ratio points per poll; JetStream dedup drops the repeats


def decimal_str(value: Any) -> str:
    """A plain decimal string for a venue number: strings kept as sent when already plain,
    exponent forms ("1e-05") and JSON numbers (Deribit) rewritten exactly; never via float
    arithmetic. Raises ValueError on anything that is not a finite number."""
    if isinstance(value, str):
        if value and "e" not in value and "E" not in value and value.lstrip("-").replace(".", "", 1).isdigit():
            return value
        text = value
    elif isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    else:
        text = repr(value)  # ints, and floats only from JSON text (shortest round-trip repr)
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return format(d, "f")


def scale(qty: str, factor: Decimal | None) -> str:
    """``qty * factor`` exactly (contracts -> base units), as a plain decimal string."""
    if factor is None:
        return qty
    out = format(Decimal(qty) * factor, "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".") or "0"
    return out


def loads_exact(raw: bytes | str) -> Any:
    """JSON with floats kept as their decimal text (for venues that send JSON numbers)."""
    return json.loads(raw, parse_float=decimal_str)


# a name that goes into NATS subjects and identities: no separators, wildcards or spaces
_NAME_FORBIDDEN = frozenset(". *>\t\r\n\x00")
ENTRY_ERRORS = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)  # one malformed listing entry


def is_name(value: Any) -> bool:
    """A venue's symbol or asset name we can use: a non-empty string of at most 64 characters, no NATS
    subject separator, wildcard or whitespace."""
    return type(value) is str and 0 < len(value) <= 64 and _NAME_FORBIDDEN.isdisjoint(value)


def name_of(value: Any, key: str) -> str:
    """``value[key]`` when it is a usable name (``is_name``), else ValueError naming the key and value."""
    name = value[key]
    if not is_name(name):
        raise ValueError(f"{key} {name!r} is not a symbol name")
    return name  # type: ignore[no-any-return]


def entry_label(entry: Any, *keys: str) -> str:
    """A short label for a listing entry in a log line (its name if it has one)."""
    if isinstance(entry, dict):
        for k in keys:
            v = entry.get(k)
            if isinstance(v, str):
                return v[:64]
    return type(entry).__name__


def period_ms(period: str) -> int:
    return PERIOD_SECONDS[period] * 1000


def keep_instruments(
    adapter: VenueAdapter,
    listed: Iterable[Instrument],
    hint: str,
    eligible: Callable[[Instrument], bool] = lambda i: True,
) -> dict[str, Instrument]:
    """Set and return ``adapter.instruments`` (by exchange symbol) from the venue's listing: the
    first listing of each exchange symbol; all of them under ``accept_all_symbols``, else the
    configured ``market.symbols`` among the ``eligible`` ones. Raises ValueError naming unknown
    symbols, the URL that listed the others and ``hint`` (how to spell a symbol)."""
    found: dict[str, Instrument] = {}
    for inst in listed:
        found.setdefault(inst.exchange_symbol, inst)
    if adapter.accept_all_symbols:
        adapter.instruments = found
        return found
    by_norm = {i.symbol: i for i in found.values() if eligible(i)}
    symbols = adapter.market.symbols
    unknown = [s for s in symbols if s not in by_norm]
    if unknown:
        raise ValueError(
            f"markets.{adapter.market_id}.symbols: {unknown} not listed by {adapter.instrument_urls()[0]} ({hint})"
        )
    adapter.instruments = {by_norm[s].exchange_symbol: by_norm[s] for s in symbols}
    return adapter.instruments


def rest_poll(market_id: str, data_type: str, symbol: str, url: str, period_s: float) -> RestPoll:
    """A poll of one data type for one exchange symbol, keyed ``<market>/<data_type>/<symbol>``."""
    return RestPoll(
        key=f"{market_id}/{data_type}/{symbol}", data_type=data_type, url=url, period_s=period_s, symbol=symbol
    )


def book_record(
    market_id: str,
    market_type: str,
    inst: Instrument,
    snap: BookSnapshot,
    received_at: int,
    depth: int,
) -> Any:
    """An ``orderbook`` record; levels converted to base units when the instrument has a contract value."""
    bids, asks = snap.bids, snap.asks
    cv = inst.contract_value
    if cv is not None and not inst.inverse:
        bids = [(p, scale(q, cv)) for p, q in bids]
        asks = [(p, scale(q, cv)) for p, q in asks]
    return OrderBook(
        exchange=market_id,
        market_type=market_type,
        symbol=inst.symbol,
        exchange_symbol=inst.exchange_symbol,
        timestamp=snap.timestamp,
        received_at=received_at,
        update_id=snap.update_id,
        tick=snap.tick,
        depth=depth,
        bids=bids,
        asks=asks,
    )


class ErrorLog:
    """Count every bad input; log the first occurrence of each (kind, context) once.

    At most ``max_keys`` (kind, context) pairs are remembered, so a venue that sends endless distinct
    unknown symbols cannot grow it: past the bound every input is still counted, and each kind logs
    one ``venue.bad_input_suppressed`` line (with the first unremembered context as a sample)."""

    MAX_KEYS = 1024
    MAX_CONTEXT = 100  # characters of a context kept in a key (contexts may come from venue input)

    def __init__(self, market_id: str, max_keys: int = MAX_KEYS) -> None:
        self.market_id = market_id
        self.max_keys = max_keys
        self._seen: set[tuple[str, str]] = set()
        self.suppressed: dict[str, int] = {}  # kind -> inputs past the bound (kinds are the adapters' codes)

    def bad(self, out: Output, kind: str, context: Any, raw: bytes | str | None = None, **fields: Any) -> None:
        out.count(kind)
        key = (kind, (context if type(context) is str else repr(context))[: self.MAX_CONTEXT])
        if key in self._seen:
            return
        sample = raw[:200] if raw is not None else None
        if len(self._seen) >= self.max_keys:
            n = self.suppressed.get(kind, 0)
            self.suppressed[kind] = n + 1
            if n == 0:
                log.warning(
                    "venue.bad_input_suppressed",
                    market=self.market_id,
                    kind=kind,
                    context=key[1],
                    sample=sample,
                    remembered=self.max_keys,
                    note="further new contexts of this kind are counted, not logged",
                )
            return
        self._seen.add(key)
        log.warning("venue.bad_input", market=self.market_id, kind=kind, context=key[1], sample=sample, **fields)
