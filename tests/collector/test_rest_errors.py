"""Venue errors on REST: OKX codes inside HTTP 200 bodies, rate-limit windows, permanent vs transient errors.

Pure tests read the documented OKX code table (../shared/fixtures/documented/okx_errors_rate_limits.json:
the docs show no example body, only the envelope and the code/HTTP/message rows, so each body below is
that envelope around one documented row). Integration tests run the RestClient over real sockets
against the exchange emulator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.rest import RestClient, RestError, envelope_error
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import RestBodyError, VenueAdapter
from marketprism_dagster.venues.okx import REST_WINDOW_S, parse_instruments, parse_rest_error
from tests.support.collector_helpers import emulator_overrides, http_text, metric_value, running_collector, until

FIXTURES = Path(os.environ.get("MARKETPRISM_FIXTURES") or Path(__file__).resolve().parents[3] / "shared" / "fixtures")
DOCUMENTED = FIXTURES / "documented"
OKX_DOC = json.loads((DOCUMENTED / "okx_errors_rate_limits.json").read_text())
BINANCE_USDM_DOC = json.loads((DOCUMENTED / "binance_usdm_errors_rate_limits.json").read_text())
OKX_ROWS = [tuple(r) for r in OKX_DOC["rest_error_codes_selected"]]  # (code, HTTP status, message)


def _envelope(code: str, msg: str) -> bytes:
    """The documented OKX REST envelope ({"code": "<string>", "msg": ..., "data": [...]}) around one row."""
    return json.dumps({"code": code, "msg": msg, "data": []}).encode()


# what each documented code means for a client (see venues/okx.py REST_* sets)
EXPECTED_KIND = {
    "1": "permanent",
    "50001": "transient",  # 503 Service temporarily unavailable
    "50004": "transient",  # 400 API endpoint request timeout
    "50011": "rate_limited",  # 200 Rate limit reached / 429 Too Many Requests
    "50013": "rate_limited",  # 429 Systems are busy
    "50014": "permanent",  # 400 Parameter {param0} can not be empty
    "50026": "transient",  # 500 System error. Try again later
    "50040": "rate_limited",  # 200 Too frequent operations
    "50061": "rate_limited",  # 200 account order rate limit
    "51000": "permanent",  # 400 Parameter {param0} error
    "51001": "permanent",  # 200 Instrument ID or Spread ID doesn't exist.
}


def _kind(err: RestBodyError) -> str:
    return "rate_limited" if err.rate_limited else "transient" if err.transient else "permanent"


def test_documented_okx_codes_cover_the_table() -> None:
    assert {code for code, _, _ in OKX_ROWS} == set(EXPECTED_KIND) | {"0"}


@pytest.mark.parametrize(("code", "http", "msg"), OKX_ROWS, ids=[f"{c}-{h}" for c, h, _ in OKX_ROWS])
def test_okx_body_code_is_classified(code: str, http: str, msg: str) -> None:
    err = parse_rest_error(_envelope(code, msg))
    if code == "0":
        assert err is None
        return
    assert err is not None
    assert (err.code, err.msg) == (code, msg)
    assert _kind(err) == EXPECTED_KIND[code]
    assert err.retry_after_s == (REST_WINDOW_S if err.rate_limited else 0.0)


def test_okx_rate_limit_in_http_200_waits_one_two_second_window() -> None:
    code, _, msg = next(r for r in OKX_ROWS if r[0] == "50011" and r[1] == "200")
    err = parse_rest_error(_envelope(code, msg))
    assert err == RestBodyError(
        "50011",
        "Rate limit reached. Please refer to API documentation and throttle requests accordingly.",
        rate_limited=True,
        retry_after_s=2.0,
    )


def test_non_envelope_bodies_carry_no_okx_error() -> None:
    assert parse_rest_error(b"<html>bad gateway</html>") is None
    assert parse_rest_error(b"[1, 2]") is None
    # a Binance error body has an integer code; it is not an OKX envelope's job to judge it,
    # but the code still reads as non-zero: the OKX hook is only ever asked about OKX hosts
    binance = BINANCE_USDM_DOC["examples"][0]["json"]
    assert parse_rest_error(json.dumps(binance).encode()) == RestBodyError("-1121", "Invalid symbol.")


def test_okx_instruments_error_body_raises_naming_code_and_msg() -> None:
    code, _, msg = next(r for r in OKX_ROWS if r[0] == "50011" and r[1] == "200")
    with pytest.raises(ValueError, match=r"code 50011: Rate limit reached\. Please refer"):
        parse_instruments(_envelope(code, msg))
    code, _, msg = next(r for r in OKX_ROWS if r[0] == "51001")
    with pytest.raises(ValueError, match=r"code 51001: Instrument ID or Spread ID doesn't exist\."):
        parse_instruments(_envelope(code, msg))


def test_error_envelope_of_binance_documented_example() -> None:
    body = BINANCE_USDM_DOC["examples"][0]["verbatim"].encode()
    assert envelope_error(body) == ("-1121", "Invalid symbol.")


def test_only_okx_adapters_read_body_codes() -> None:
    """Binance and Deribit keep their behaviour: the default hook sees no venue error in any body."""
    settings = Settings()
    binance = adapter_for("binance_derivatives", settings.markets["binance_derivatives"], settings.orderbook)
    deribit = adapter_for("deribit_derivatives", settings.markets["deribit_derivatives"], settings.orderbook)
    okx = adapter_for("okx_spot", settings.markets["okx_spot"], settings.orderbook)
    body = _envelope("51001", "Instrument ID or Spread ID doesn't exist.")
    assert binance.rest_body_error(body) is None
    assert deribit.rest_body_error(body) is None
    assert okx.rest_body_error(body) == RestBodyError("51001", "Instrument ID or Spread ID doesn't exist.")


# ---------------------------------------------------------------- over sockets, against the emulator


def _client(
    session: aiohttp.ClientSession, market: str, adapter: VenueAdapter
) -> tuple[RestClient, CollectorMetrics, CollectorState]:
    metrics = CollectorMetrics()
    state = CollectorState("test")
    m = adapter.market
    state.markets[market] = MarketState(m.venue, m.market_type, tuple(m.data_types), tuple(m.symbols))
    client = RestClient(
        session, metrics, state, timeout_s=5.0, body_error=lambda _market, body: adapter.rest_body_error(body)
    )
    return client, metrics, state


def _adapter(market: str) -> VenueAdapter:
    settings = Settings()
    return adapter_for(market, settings.markets[market], settings.orderbook)


@pytest.mark.parametrize("code", ["50011", "50013"])
async def test_okx_rate_limit_code_in_http_200_backs_off_and_retries(code: str) -> None:
    faults = f"rest_code_200@okx:at=1:path=instruments:code={code}"
    cfg = EmulatorConfig(mode="synth", seed=1, venues=("okx",), faults=faults)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as session:
        client, metrics, state = _client(session, "okx_spot", _adapter("okx_spot"))
        url = f"{emu.urls['okx_spot']['rest']}/api/v5/public/instruments?instType=SPOT"
        body, _ = await client.get("okx_spot", url)
        fired = emu.faults_fired
    text = metrics.exposition().decode()
    assert fired == {"rest_code_200": {"okx": 1}}
    assert "BTC-USDT" in {i.exchange_symbol for i in parse_instruments(body)}
    assert metric_value(text, "marketprism_collector_errors_total", exchange="okx_spot", code=f"rest_code_{code}") == 1
    assert metric_value(text, "marketprism_collector_rate_limited_total", exchange="okx_spot", status=code) == 1
    assert metric_value(text, "marketprism_collector_rest_requests_total", exchange="okx_spot", status="200") == 1
    assert (
        metric_value(text, "marketprism_collector_rest_requests_total", exchange="okx_spot", status=f"code_{code}") == 1
    )
    # the retry waited for the host's block (the venue's 2 s window), it did not go out at once
    assert metric_value(text, "marketprism_collector_rate_limit_wait_seconds_total", exchange="okx_spot") > 0
    assert state.markets["okx_spot"].rest_ok is True


async def test_okx_http_429_with_code_50011_backs_off_and_retries() -> None:
    cfg = EmulatorConfig(mode="synth", seed=1, venues=("okx",), faults="rest_429@okx:at=1")
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as session:
        client, metrics, _ = _client(session, "okx_spot", _adapter("okx_spot"))
        url = f"{emu.urls['okx_spot']['rest']}/api/v5/public/instruments?instType=SPOT"
        body, _ = await client.get("okx_spot", url)
        fired = emu.faults_fired
    text = metrics.exposition().decode()
    assert fired == {"rest_429": {"okx": 1}}
    assert "BTC-USDT" in {i.exchange_symbol for i in parse_instruments(body)}
    assert metric_value(text, "marketprism_collector_errors_total", exchange="okx_spot", code="rest_code_50011") == 1
    assert metric_value(text, "marketprism_collector_rate_limit_wait_seconds_total", exchange="okx_spot") > 0


async def test_okx_unknown_instrument_is_permanent_named_and_counted_under_its_code() -> None:
    cfg = EmulatorConfig(mode="synth", seed=1, venues=("okx",))
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as session:
        client, metrics, state = _client(session, "okx_spot", _adapter("okx_spot"))
        url = f"{emu.urls['okx_spot']['rest']}/api/v5/market/books?instId=NOPE-USDT&sz=400"
        with pytest.raises(RestError) as err:
            await client.get("okx_spot", url)
    text = metrics.exposition().decode()
    exc = err.value
    assert str(exc) == (
        "okx REST error 51001: Instrument ID or Spread ID doesn't exist. "
        "(GET /api/v5/market/books?instId=NOPE-USDT&sz=400)"
    )
    assert (exc.status, exc.code, exc.permanent, exc.rate_limited) == (200, "51001", True, False)
    assert metric_value(text, "marketprism_collector_errors_total", exchange="okx_spot", code="rest_code_51001") == 1
    assert state.rest_requests == 1  # asked once: a permanent error is not retried
    assert state.markets["okx_spot"].rest_ok is False


async def test_binance_rejected_depth_request_is_permanent_with_its_body_code() -> None:
    cfg = EmulatorConfig(mode="synth", seed=1, venues=("binance_derivatives",))
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as session:
        client, metrics, state = _client(session, "binance_derivatives", _adapter("binance_derivatives"))
        url = f"{emu.urls['binance_derivatives']['rest']}/fapi/v1/depth?symbol=NOPEUSDT&limit=1000"
        with pytest.raises(RestError) as err:
            await client.get("binance_derivatives", url, 20)
    text = metrics.exposition().decode()
    exc = err.value
    assert (exc.status, exc.code, exc.venue_msg, exc.permanent) == (400, "-1121", "Invalid symbol.", True)
    assert str(exc) == (
        "binance REST error -1121: Invalid symbol. (HTTP 400, GET /fapi/v1/depth?symbol=NOPEUSDT&limit=1000)"
    )
    assert state.rest_requests == 1
    assert (
        metric_value(text, "marketprism_collector_errors_total", exchange="binance_derivatives", code="rest_400") == 1
    )


async def test_collector_loads_okx_instruments_through_a_rate_limit_code(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """The runtime hands OKX bodies to the adapter's hook: the 50011 answer is waited out, not a failed load."""
    markets = {"okx_spot": (["BTC-USDT"], ["trade"])}
    faults = "rest_code_200@okx:at=1:path=instruments"
    cfg = EmulatorConfig(mode="synth", rate=50, seed=2, faults=faults, venues=("okx",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        async with running_collector(settings) as (collector, task):
            await until(lambda: collector.state.records.get(("trade", "okx_spot"), 0) > 0, 30)
            _, text = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
            assert not task.done()
            loaded = collector.state.markets["okx_spot"].instruments_loaded
        fired = emu.faults_fired
    assert fired == {"rest_code_200": {"okx": 1}}
    assert loaded is True
    assert metric_value(text, "marketprism_collector_errors_total", exchange="okx_spot", code="rest_code_50011") == 1
    assert metric_value(text, "marketprism_collector_errors_total", exchange="okx_spot", code="instruments") == 0
    assert metric_value(text, "marketprism_collector_rate_limited_total", exchange="okx_spot", status="50011") == 1
