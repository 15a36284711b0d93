"""The suite's one record factory: a valid record of any data type whose identity is fixed by an index.

``make_record(t, i, now_ms)`` gives the same record for the same arguments. Tests that need particular values
pass ``price``/``quantity`` (used by every decimal column of the type) or replace any field by keyword; the
writer tests' mixed traffic (``writer_helpers.generate``) sets every field that way.
"""

from __future__ import annotations

from typing import Any

from marketprism_dagster.records import STRUCTS

# market of each type when the caller does not set one: (exchange, market_type, symbol, exchange_symbol)
_MARKETS = {
    "orderbook": ("binance_derivatives", "perpetual", "BTC-USDT", "BTCUSDT"),
    "trade": ("okx_spot", "spot", "BTC-USDT", "BTC-USDT"),
    "volatility_index": ("deribit_derivatives", "options", "BTC", "btc_usd"),
}
_OTHER_MARKET = ("okx_derivatives", "perpetual", "ETH-USDT", "ETH-USDT-SWAP")


def make_record(
    data_type: str, i: int, now_ms: int, *, price: str = "100.5", quantity: str = "0.25", **fields: Any
) -> Any:
    """A realistic record of ``data_type`` with identity determined by ``i`` (deterministic); ``fields``
    replace any of its fields."""
    market = _MARKETS.get(data_type, _OTHER_MARKET)
    common = dict(
        exchange=market[0],
        market_type=market[1],
        symbol=market[2],
        exchange_symbol=market[3],
        timestamp=now_ms - 1000 + (i % 1000),
        received_at=now_ms,
    )
    ts_unique = dict(common, timestamp=now_ms - 10_000_000 + i)
    payloads: dict[str, dict[str, Any]] = {
        "trade": dict(common, trade_id=str(10_000_000 + i), price=price, quantity=quantity, side="buy"),
        "orderbook": dict(
            common,
            update_id=1_000_000 + i,
            tick=now_ms - now_ms % 1000,
            depth=2,
            bids=[(price, quantity), ("100.4", "1")],
            asks=[("100.6", quantity), ("100.7", "2")],
        ),
        "funding_rate": dict(
            ts_unique, funding_rate="0.0001", next_funding_time=now_ms + 3600_000, mark_price=price, index_price=price
        ),
        "open_interest": dict(
            ts_unique, open_interest=quantity, open_interest_value=price, open_interest_contracts="25"
        ),
        "liquidation": dict(
            ts_unique, side="sell", price=price, quantity=quantity, quantity_contracts=None, status="FILLED"
        ),
        "lsr_top_position": dict(
            ts_unique, period="5m", long_short_ratio=price, long_ratio=quantity, short_ratio="0.4444"
        ),
        "lsr_all_account": dict(
            ts_unique, period="5m", long_short_ratio=price, long_ratio="0.4444", short_ratio=quantity
        ),
        "volatility_index": dict(ts_unique, index_value=price, open=price, high=price, low=price, close=price),
        "source_gap": dict(
            ts_unique, gap_data_type="trade", cause="trade_id_jump", end_time=now_ms, first_missing_id=str(i),
            last_missing_id=str(i + 9), state="open", recovered=0, detail="10 trade ids missing",
        ),
    }
    return STRUCTS[data_type](**(payloads[data_type] | fields))
