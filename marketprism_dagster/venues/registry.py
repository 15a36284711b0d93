"""The adapter registry: the one list of venues, read from the venue modules' declarations.

Every module of this package that exposes ``ADAPTER`` (a ``VenueAdapter`` subclass) is registered
under its ``venue`` name when this module is imported, so a new venue is one new module here:
config validation (venue, market types, data types, snapshot depths), the default markets, REST
rate limits and the offline ``normalize`` all ask this registry and name no venue themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marketprism_dagster.venues.base import BookSettings, MarketSettings, MarketSpec, VenueAdapter

_PACKAGE = "marketprism_dagster.venues"
_NOT_VENUES = frozenset({"base", "common", "registry"})
_ADAPTERS: dict[str, type[VenueAdapter]] = {}


def register(adapter: type[VenueAdapter]) -> type[VenueAdapter]:
    """Add a venue (its adapter class); a second venue of the same name is an error."""
    name = adapter.venue
    known = _ADAPTERS.get(name)
    if known is not None and known is not adapter:
        raise ValueError(f"venue {name!r} is declared twice: {known.__module__} and {adapter.__module__}")
    _ADAPTERS[name] = adapter
    return adapter


def unregister(name: str) -> None:
    """Remove a venue (tests declaring a throwaway venue clean up with this)."""
    _ADAPTERS.pop(name, None)


def venue_names() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(venue: str) -> type[VenueAdapter]:
    """The adapter class of ``venue``; ValueError naming the registered venues."""
    adapter = _ADAPTERS.get(venue)
    if adapter is None:
        raise ValueError(f"unknown venue {venue!r}; allowed: {', '.join(venue_names())}")
    return adapter


def adapter_for(market_id: str, market: MarketSettings, orderbook: BookSettings) -> VenueAdapter:
    """A fresh adapter for one configured market, picked by ``market.venue``."""
    return adapter_class(market.venue)(market_id, market, orderbook)


def market_spec(venue: str, market_type: str) -> MarketSpec | None:
    """What ``venue`` declares for ``market_type`` (None: unknown venue or market type)."""
    adapter = _ADAPTERS.get(venue)
    return adapter.markets.get(market_type) if adapter is not None else None


def offered(venue: str, market_type: str) -> tuple[str, ...] | None:
    """The data types ``venue`` offers for ``market_type`` (None: unknown venue or market type)."""
    adapter = _ADAPTERS.get(venue)
    return adapter.offered(market_type) if adapter is not None else None


def market_types() -> list[str]:
    """Every ``venue/market_type`` pair, for messages."""
    return [f"{name}/{m}" for name in venue_names() for m in _ADAPTERS[name].markets]


def weight_header(venue: str) -> str | None:
    adapter = _ADAPTERS.get(venue)
    return adapter.weight_header if adapter is not None else None


def default_markets() -> dict[str, dict[str, Any]]:
    """Market id -> config entry of every venue's declared default markets (``data_types`` filled in
    with everything the market type offers when the declaration leaves it out)."""
    out: dict[str, dict[str, Any]] = {}
    for name in venue_names():
        adapter = _ADAPTERS[name]
        for market_id, entry in adapter.default_markets.items():
            market = {"venue": name, **entry}
            market.setdefault("data_types", list(adapter.offered(entry["market_type"]) or ()))
            out[market_id] = market
    return out


def instrument_paths() -> tuple[str, ...]:
    """REST paths of every venue's instrument listings (offline replay recognizes recorded listings)."""
    return tuple(
        dict.fromkeys(
            spec.instruments_path for a in _ADAPTERS.values() for spec in a.markets.values() if spec.instruments_path
        )
    )


def snapshot_paths() -> Mapping[str, str]:
    """REST path of every venue's order book snapshot -> the query parameter naming the symbol."""
    return {
        spec.snapshot_path: spec.snapshot_symbol_param
        for a in _ADAPTERS.values()
        for spec in a.markets.values()
        if spec.snapshot_path
    }


def _discover() -> None:
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name in _NOT_VENUES or module.name.startswith("_"):
            continue
        adapter = getattr(importlib.import_module(f"{_PACKAGE}.{module.name}"), "ADAPTER", None)
        if adapter is not None:
            register(adapter)


_discover()
