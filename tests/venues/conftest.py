"""Helpers for the venue tests: adapters loaded with the instrument lists recorded in the sessions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import is_instrument_record, payload_text, read_session
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import VenueAdapter

INFO_FILE = {
    "binance_spot": "binance_spot.info.jsonl",
    "binance_derivatives": "binance_usdm.info.jsonl",
    "okx_spot": "okx.info.jsonl",
    "okx_derivatives": "okx.info.jsonl",
    "deribit_derivatives": None,
}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def instrument_bodies(fixtures_dir: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for market, name in INFO_FILE.items():
        recs = read_session(fixtures_dir / "sessions" / name) if name else []
        out[market] = {r["url"]: payload_text(r).encode() for r in recs if is_instrument_record(r)}
    return out


@pytest.fixture
def make_adapter(settings: Settings, instrument_bodies: dict[str, dict[str, bytes]]) -> Callable[..., VenueAdapter]:
    """An adapter for a default market id; ``all_symbols`` keeps every recorded instrument."""

    def make(market_id: str, all_symbols: bool = True, **orderbook: Any) -> VenueAdapter:
        ob = settings.orderbook.model_copy(update=orderbook)
        adapter = adapter_for(market_id, settings.markets[market_id], ob)
        adapter.accept_all_symbols = all_symbols
        adapter.load_instruments(instrument_bodies[market_id])
        return adapter

    return make


@pytest.fixture(scope="session")
def messages(fixtures_dir: Path) -> Callable[[str, str], dict[str, dict[str, Any]]]:
    """``messages(exchange, data_type)`` -> fixtures/messages entries by id."""

    def load(exchange: str, data_type: str) -> dict[str, dict[str, Any]]:
        doc = json.loads((fixtures_dir / "messages" / exchange / f"{data_type}.json").read_text())
        return {m["id"]: m for m in doc["messages"]}

    return load


@pytest.fixture(scope="session")
def documented(fixtures_dir: Path) -> Callable[[str], dict[str, Any]]:
    """``documented(name)`` -> a fixtures/documented file."""

    def load(name: str) -> dict[str, Any]:
        return json.loads((fixtures_dir / "documented" / f"{name}.json").read_text())

    return load
