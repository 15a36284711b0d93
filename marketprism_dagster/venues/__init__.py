"""One module per venue: pure parsers (raw message -> records), channel specs, symbol mapping.

A venue module exposes ``ADAPTER: type[VenueAdapter]`` (see ``base``). Adding a venue is one
module here plus config entries; nothing else in the tree changes.
"""

from __future__ import annotations

import importlib

from marketprism_dagster.config import MarketConfig, OrderBookConfig
from marketprism_dagster.venues.base import VenueAdapter


def adapter_class(venue: str) -> type[VenueAdapter]:
    """The adapter class of ``venue`` (its module's ``ADAPTER``)."""
    try:
        module = importlib.import_module(f"marketprism_dagster.venues.{venue}")
    except ModuleNotFoundError:
        raise ValueError(f"no venue module for {venue!r}; allowed: binance, okx, deribit") from None
    return module.ADAPTER


def adapter_for(market_id: str, market: MarketConfig, orderbook_cfg: OrderBookConfig) -> VenueAdapter:
    """A fresh adapter for one configured market, picked by ``market.venue``."""
    return adapter_class(market.venue)(market_id, market, orderbook_cfg)
