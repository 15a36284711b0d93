"""The record model: one list of data types, per-type policy on the record type, a wire model without pyarrow."""

from __future__ import annotations

import ast
import dataclasses
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from marketprism_dagster import integrity, records
from marketprism_dagster.collector.health import collector_feed_status, health_report, shard_health_urls
from marketprism_dagster.collector.state import CollectorState, FeedState, MarketState
from marketprism_dagster.config import ConfigError, Settings, load_config
from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES

PACKAGE = Path(records.__file__).parent
REPO = PACKAGE.parent


def test_collector_process_does_not_import_pyarrow():
    code = (
        "import sys, marketprism_dagster.collector.runtime, marketprism_dagster.collector.cli; "
        "print(sorted(m for m in ('pyarrow', 'polars', 'chdb', 'marketprism_dagster.storage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_window_defaults_and_stream_subjects_derive_from_the_record_types(tmp_path):
    defaults = Settings()
    for t, rt in RECORD_TYPES.items():
        assert (defaults.window_rules[t].window_s, defaults.window_rules[t].health_s) == (rt.window_s, rt.health_s)
        assert defaults.stream_for(t) == rt.stream
    # the shipped YAML names no data type in its streams: the subjects come from the record types
    shipped = yaml.safe_load((REPO / "config" / "marketprism.yaml").read_text())
    assert all("subjects" not in s for s in shipped["streams"].values())
    loaded = load_config(REPO / "config" / "marketprism.yaml", env={}).settings
    assert loaded.streams["ORDERBOOK_SNAP"].subjects == ["orderbook.>"]
    assert sorted(loaded.streams["MARKET_DATA"].subjects) == sorted(f"{t}.>" for t in DATA_TYPES if t != "orderbook")
    assert {t: loaded.stream_for(t) for t in DATA_TYPES} == {t: rt.stream for t, rt in RECORD_TYPES.items()}


def test_a_stream_with_no_subjects_and_no_data_type_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    extra = {"max_bytes": 1024, "max_age_s": 60, "duplicate_window_s": 5}
    path.write_text(yaml.safe_dump({"streams": {"EXTRA": extra}}))
    with pytest.raises(ConfigError, match=r"streams\.EXTRA\.subjects"):
        load_config(path, env={})


def test_an_unknown_data_type_is_refused_with_the_allowed_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"markets": {"binance_spot": {"data_types": ["trades"]}}}))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert "'trades'" in str(err.value) and str(list(DATA_TYPES)) in str(err.value)


def test_one_decoder_reads_every_declared_type(record_factory):
    for t in DATA_TYPES:
        r = record_factory(t, 1, 1_700_000_000_000)
        assert records.decode(records.encode(r)) == r and records.data_type_of(records.decode(records.encode(r))) == t


def test_sparse_policy_is_read_from_the_record_type_not_its_name(monkeypatch, settings_factory, store):
    """Declare funding_rate sparse: health and the window rule judge it by its feeds, as liquidation is."""
    monkeypatch.setitem(RECORD_TYPES, "funding_rate", dataclasses.replace(RECORD_TYPES["funding_rate"], sparse=True))
    settings = settings_factory(collector__grace_s=0)
    state = CollectorState(shard="main")
    state.markets["m"] = MarketState("v", "perpetual", ("funding_rate", "open_interest"), ("BTC-USDT",))
    state.feeds["m/ws"] = FeedState("m", data_types=("funding_rate",), connected=True)
    body, _ = health_report(state, settings)
    assert body["coverage"]["funding_rate"]["m"]["status"] == "ok"  # no record yet, its feed is connected
    assert body["coverage"]["open_interest"]["m"]["status"] == "missing"
    state.feeds["m/ws"].connected = False
    body, _ = health_report(state, settings)
    assert body["coverage"]["funding_rate"]["m"]["status"] == "stale"
    assert "funding_rate/m: feeds disconnected" in body["reasons"]

    healthy = integrity.FeedStatus(True, "m=ok")
    window = integrity.window_presence(store, settings, "funding_rate", feeds=healthy)
    assert window.passed and "funding_rate feeds healthy (m=ok)" in window.description
    assert not integrity.window_presence(store, settings, "open_interest", feeds=healthy).passed


class _Unhealthy(http.server.BaseHTTPRequestHandler):
    requests = 0
    body: ClassVar[dict[str, Any]] = {"status": "unhealthy", "coverage": {"liquidation": {"m": {"status": "stale"}}}}

    def do_GET(self) -> None:
        type(self).requests += 1
        raw = json.dumps(self.body).encode()
        self.send_response(503)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unhealthy_collector() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_feed_health_is_read_from_a_503_body_in_one_request(settings_factory, unhealthy_collector):
    settings = settings_factory(
        collector__health_port=unhealthy_collector, collector__metrics_port=0, collector__shards={"main": []}
    )
    _Unhealthy.requests = 0
    feeds = collector_feed_status(settings, "liquidation")
    assert feeds == integrity.FeedStatus(False, "m=stale")
    assert _Unhealthy.requests == 1


def test_shard_health_urls_follow_the_configured_bind_host(settings_factory):
    def urls(host: str) -> dict[str, str | None]:
        shards = {"a": [], "b": []}
        return shard_health_urls(settings_factory(collector__http_host=host, collector__health_port=18100,
                                                  collector__shards=shards))

    assert urls("127.0.0.2") == {"a": "http://127.0.0.2:18100/health", "b": "http://127.0.0.2:18101/health"}
    assert urls("0.0.0.0")["a"] == "http://127.0.0.1:18100/health"
    assert urls("::1")["b"] == "http://[::1]:18101/health"


def _policy_by_name(path: Path) -> list[str]:
    """Comparisons of a value with a data type's name (``x == "liquidation"``, ``"orderbook" in x``)."""
    names = set(DATA_TYPES)
    source = path.read_text()
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
                hits.append(f"{path.relative_to(REPO)}: {ast.get_source_segment(source, node)}")
    return hits


def test_no_module_outside_the_venues_decides_by_a_data_type_name():
    hits = [
        h
        for p in sorted(PACKAGE.rglob("*.py"))
        if not {"venues", "emulator"} & set(p.relative_to(PACKAGE).parts)
        for h in _policy_by_name(p)
    ]
    assert hits == []
