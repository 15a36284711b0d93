"""The writer's Prometheus metrics, in a registry of their own (several writers may share a process in tests)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
VISIBLE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class VisibleDelay(Collector):
    """Histogram of event time -> row visible (its range committed), per row, counted a batch at a time: the
    batch's event times sorted once (nearly sorted already: linear), then one bisection per bucket bound (a
    Prometheus ``observe`` per row costs microseconds per row at full rate)."""

    name = "marketprism_writer_visible_delay_seconds"

    def __init__(self, buckets: tuple[float, ...] = VISIBLE_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = {}  # stream -> cumulative count per bucket, then +Inf
        self.sums: dict[str, float] = {}

    def observe_batch(self, stream: str, timestamps_ms: list[int], now_ms: int) -> None:
        """``timestamps_ms``: the event times (epoch milliseconds) of the rows that became visible at ``now_ms``."""
        if not timestamps_ms:
            return
        ts = sorted(timestamps_ms)
        n = len(ts)
        counts = self.counts.setdefault(stream, [0] * (len(self.buckets) + 1))
        for i, le in enumerate(self.buckets):  # delay <= le  <=>  ts >= now - le
            counts[i] += n - bisect.bisect_left(ts, now_ms - int(le * 1000))
        counts[-1] += n
        self.sums[stream] = self.sums.get(stream, 0.0) + (n * now_ms - sum(ts)) / 1000

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, "Event time to row visible in the hot tables, per row",
                                    labels=["stream"])
        for stream, counts in sorted(self.counts.items()):
            buckets = [(str(le), float(n)) for le, n in zip(self.buckets, counts, strict=False)]
            fam.add_metric([stream], [*buckets, ("+Inf", float(counts[-1]))], self.sums.get(stream, 0.0))
        yield fam


class WriterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batches = Counter("marketprism_writer_batches", "Committed batches", ["stream"], registry=r)
        self.rows = Counter("marketprism_writer_rows", "Rows inserted into hot tables", ["table"], registry=r)
        self.messages = Counter("marketprism_writer_messages", "Messages committed (rows + dead letters)",
                                ["stream"], registry=r)
        self.skipped = Counter("marketprism_writer_redelivered_skipped", "Redelivered messages already committed",
                               ["stream"], registry=r)
        self.recovered = Counter("marketprism_writer_recovered_batches",
                                 "In-flight ranges of a crashed writer re-committed", ["stream"], registry=r)
        self.batch_size = Histogram("marketprism_writer_batch_size", "Messages per committed batch", ["stream"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.insert_latency = Histogram("marketprism_writer_insert_latency_seconds",
                                        "Store time per batch (intent, inserts, ledger)", ["stream"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.visible_delay = VisibleDelay()
        r.register(self.visible_delay)
        self.failures = Counter("marketprism_writer_failures", "Failed attempts by reason", ["reason"], registry=r)
        self.dead_letters = Counter("marketprism_writer_dead_letters", "Messages dead-lettered by reason",
                                    ["reason"], registry=r)
        self.lag = Gauge("marketprism_writer_consumer_lag", "Stream last sequence minus acked sequence",
                         ["stream"], registry=r)
        self.committed_seq = Gauge("marketprism_writer_committed_seq", "Highest sequence in the ledger",
                                   ["stream"], registry=r)
        self.stream_resets = Counter("marketprism_writer_stream_resets",
                                     "Streams found deleted and recreated: a new ledger epoch was started",
                                     ["stream"], registry=r)
        self.epoch = Gauge("marketprism_writer_stream_epoch", "Ledger epoch of the stream (0 until a reset)",
                           ["stream"], registry=r)
        self.store_up = Gauge("marketprism_writer_store_available", "1 when the last store operation succeeded",
                              registry=r)
        self.store_up.set(1)
        self.dead_letter_up = Gauge("marketprism_writer_dead_letter_available",
                                    "0 while dead letters cannot be published (the writer stops after a few attempts)",
                                    registry=r)
        self.dead_letter_up.set(1)
        self.store_opens = Gauge("marketprism_writer_store_opens",
                                 "Sessions of the embedded store opened by this writer (it reopens after each handover "
                                 "to a Dagster step); each keeps ~1.6 MB and 5 engine threads (chdb 4.4)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
