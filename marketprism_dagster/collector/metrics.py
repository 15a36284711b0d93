"""Prometheus metrics of the collector, in a dedicated registry (low-cardinality labels only).

Names the seeds specify are kept: ``marketprism_collector_errors_total{exchange,data_type,code}``,
``marketprism_collector_last_success_timestamp_seconds{exchange,data_type}`` and
``marketprism_orderbook_queue_drops_total{exchange,symbol}``. Publisher figures are read
from ``JetStreamPublisher.stats`` at scrape time, so the publish hot path only bumps ints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from marketprism_dagster.collector.state import CollectorState
from marketprism_dagster.publisher import LATENCY_BUCKETS, PublishStats

ANY = "any"  # data_type label for errors not tied to one data type (connection, REST transport)

# adapter Output.events names with a dedicated metric; every event is also in adapter_events_total
RESYNC_EVENTS = ("resync",)
CHECKSUM_EVENTS = ("checksum_failure", "checksum_mismatch")


class _PublisherCollector(Collector):
    def __init__(self, stats: Callable[[], PublishStats | None], sizes: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats
        self._sizes = sizes

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self._stats()
        if s is None:
            return
        simple = (
            ("marketprism_publish_submitted", "records handed to the JetStream publisher", s.submitted),
            ("marketprism_publish_sent", "PUBs written to NATS, retries included", s.sent),
            ("marketprism_publish_acked", "records stored by JetStream", s.acked),
            ("marketprism_publish_duplicates", "PubAcks with duplicate=true (Msg-Id dedup)", s.duplicates),
            ("marketprism_publish_timeouts", "PubAcks not received in time (then resent)", s.timeouts),
            ("marketprism_publish_retries", "messages resent with the same Msg-Id", s.retries),
            ("marketprism_publish_buffer_drops", "records dropped because the publish buffer was full", s.dropped),
            ("marketprism_publish_failed", "records given up after repeated JetStream errors", s.failed),
        )
        for name, doc, value in simple:
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily("marketprism_publish_errors", "JetStream error replies by code", labels=["code"])
        for code, n in sorted(s.errors.items()):
            errors.add_metric([code], n)
        yield errors
        buffered, inflight = self._sizes()
        yield GaugeMetricFamily("marketprism_publish_buffered", "records waiting to be sent", value=buffered)
        yield GaugeMetricFamily("marketprism_publish_inflight", "PubAcks outstanding", value=inflight)
        cum, buckets = 0, []
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.latency_buckets, strict=True):
            cum += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
        yield HistogramMetricFamily(
            "marketprism_publish_latency_seconds",
            "submit -> JetStream PubAck",
            buckets=buckets,
            sum_value=s.latency_sum,
        )


class _StateCollector(Collector):
    """Counts kept as plain ints in CollectorState (the hot path), exposed at scrape time."""

    def __init__(self, state: Callable[[], CollectorState | None]) -> None:
        self._state = state

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self._state()
        if st is None:
            return
        messages = CounterMetricFamily(
            "marketprism_collector_messages", "raw messages received", labels=["exchange", "transport"]
        )
        ws: dict[str, int] = {}
        for f in st.feeds.values():
            ws[f.market] = ws.get(f.market, 0) + f.messages
        for market, n in sorted(ws.items()):
            messages.add_metric([market, "ws"], n)
        for market, ms in sorted(st.markets.items()):
            messages.add_metric([market, "rest"], ms.rest_requests)
        yield messages
        recs = CounterMetricFamily(
            "marketprism_collector_records", "normalized records produced", labels=["exchange", "data_type"]
        )
        last = GaugeMetricFamily(
            "marketprism_collector_last_success_timestamp_seconds",
            "receive time of the newest record (unix seconds)",
            labels=["exchange", "data_type"],
        )
        for (data_type, market), n in sorted(st.records.items()):
            recs.add_metric([market, data_type], n)
        for (data_type, market), ts in sorted(st.last_success.items()):
            last.add_metric([market, data_type], ts / 1000)
        yield recs
        yield last
        connected = GaugeMetricFamily(
            "marketprism_collector_websocket_connected", "1 while the feed is connected", labels=["exchange", "feed"]
        )
        for key, f in sorted(st.feeds.items()):
            connected.add_metric([f.market, key], 1 if f.connected else 0)
        yield connected
        yield GaugeMetricFamily(
            "marketprism_collector_nats_connected", "1 while NATS is connected", value=1 if st.nats_connected else 0
        )


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.errors = Counter(
            "marketprism_collector_errors_total", "errors by code", ["exchange", "data_type", "code"], registry=r
        )
        self.resyncs = Counter(
            "marketprism_collector_resyncs_total", "order book resyncs (gap, checksum, ...)", ["exchange"], registry=r
        )
        self.checksum_failures = Counter(
            "marketprism_collector_checksum_failures_total", "order book checksum mismatches", ["exchange"], registry=r
        )
        self.adapter_events = Counter(
            "marketprism_collector_adapter_events_total",
            "events reported by venue adapters",
            ["exchange", "event"],
            registry=r,
        )
        self.orderbook_queue_drops = Counter(
            "marketprism_orderbook_queue_drops_total",
            "order book records dropped: publish queue full",
            ["exchange", "symbol"],
            registry=r,
        )
        self.queue_drops = Counter(
            "marketprism_collector_queue_drops_total",
            "records dropped: publish queue full",
            ["exchange", "data_type"],
            registry=r,
        )
        self.reconnects = Counter(
            "marketprism_collector_reconnects_total",
            "WebSocket (re)connect attempts after the first",
            ["exchange"],
            registry=r,
        )
        self.source_gaps = Counter(
            "marketprism_source_gaps_total",
            "source gaps detected (source_gap records published, collector/gaps.py)",
            ["exchange", "data_type", "cause"],
            registry=r,
        )
        self.rest_requests = Counter(
            "marketprism_collector_rest_requests_total", "REST requests by outcome", ["exchange", "status"], registry=r
        )
        self.rate_limited = Counter(
            "marketprism_collector_rate_limited_total",
            "429/418 answers (then backed off Retry-After)",
            ["exchange", "status"],
            registry=r,
        )
        self.rate_limit_wait = Counter(
            "marketprism_collector_rate_limit_wait_seconds_total",
            "time spent waiting for a REST budget",
            ["exchange"],
            registry=r,
        )
        self._publisher_stats: Callable[[], PublishStats | None] = lambda: None
        self._publisher_sizes: Callable[[], tuple[int, int]] = lambda: (0, 0)
        r.register(_PublisherCollector(lambda: self._publisher_stats(), lambda: self._publisher_sizes()))
        self._state: CollectorState | None = None
        r.register(_StateCollector(lambda: self._state))

    def bind_state(self, state: CollectorState) -> None:
        self._state = state

    def bind_publisher(self, stats: Callable[[], PublishStats | None], sizes: Callable[[], tuple[int, int]]) -> None:
        self._publisher_stats = stats
        self._publisher_sizes = sizes

    def error(self, exchange: str, code: str, data_type: str = ANY, n: int = 1) -> None:
        self.errors.labels(exchange, data_type, code).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
