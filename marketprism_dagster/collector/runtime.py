"""The collector process: adapters (pure) driven by WebSockets, REST polls and timers; records to JetStream.

``run_collector(settings, shard)`` is the entry point for the CLI and for Dagster supervision.
Per shard: one instance (file lock), one NATS connection with a ``JetStreamPublisher``, one
``FeedConnection`` per adapter WebSocket feed, one task per REST poll, a 100 ms timer, and
the HTTP servers (/health + /api/v1 on ``collector.health_port``, /metrics on
``collector.metrics_port``). Nothing on the read path waits on NATS: records go into the
publisher's bounded buffer; overflow is counted per (exchange, symbol/data type).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import nats
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS

from marketprism_dagster import records, validation
from marketprism_dagster.collector.api import CollectorApi
from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.gapfile import gaps_path, read_gap_state, write_gap_state
from marketprism_dagster.collector.gaps import DISCONNECT, GapTracker, Series, venue_offsets
from marketprism_dagster.collector.health import bound_ports, health_path, health_report, write_health_file
from marketprism_dagster.collector.lock import InstanceLock
from marketprism_dagster.collector.metrics import ANY, CHECKSUM_EVENTS, RESYNC_EVENTS, CollectorMetrics
from marketprism_dagster.collector.points import PublishedPoints, points_path
from marketprism_dagster.collector.refill import Refiller, pending_path
from marketprism_dagster.collector.rest import RestClient, RestError
from marketprism_dagster.collector.spill import read_spill, spill_path, write_spill
from marketprism_dagster.collector.state import CollectorState, FeedState, MarketState
from marketprism_dagster.collector.ws import FeedConnection
from marketprism_dagster.config import MarketConfig, OrderBookConfig, Settings
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.logs import mask_url
from marketprism_dagster.nats_server import host_port
from marketprism_dagster.publisher import JetStreamPublisher, PublishStats
from marketprism_dagster.serving import serve_app, stop_on_signals
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import (
    Backfill,
    FetchSnapshot,
    Output,
    Reconnect,
    RestPoll,
    Send,
    SwitchConnection,
    VenueAdapter,
)

log = structlog.get_logger(__name__)

AdapterFactory = Callable[[str, MarketConfig, OrderBookConfig], VenueAdapter]

TIMER_S = 0.1
HOUSEKEEPING_S = 2.0
# adapter events that are not errors (informational state changes); all others count as errors by code
INFO_EVENTS = frozenset(
    {
        "resync",
        "snapshot_too_old",
        "book_unsynced_update",
        "book_stale_update",
        "book_snapshot_request",
        "book_rest_sync",
        "ws_subscribe_request",
        "liquidation_other_symbol",
        "repeated_point",
    }
)


def next_poll_time(now: float, period_s: float, offset_s: float) -> float:
    """The next ``k * period + offset`` strictly after ``now`` (wall seconds): e.g. every 5 min at :00:02."""
    return (math.floor((now - offset_s) / period_s) + 1) * period_s + offset_s


def _default_factory(market_id: str, market: MarketConfig, orderbook: OrderBookConfig) -> VenueAdapter:
    return adapter_for(market_id, market, orderbook)


class Collector:
    def __init__(
        self,
        settings: Settings,
        shard: str = "main",
        *,
        adapter_factory: AdapterFactory | None = None,
        takeover: bool = False,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_ready = on_ready  # called once, when the collector first collects (every feed connected)
        self.shard = shard
        # a planned restart's successor: collects beside the run holding the shard lock and takes it over
        # once that run stops (collector/lock.py); the HTTP ports are bound after the handover
        self.takeover = takeover
        self.lock: InstanceLock | None = None
        cfg = settings.collector
        self.markets = settings.shard_markets(shard)
        self.state = CollectorState(shard, recent_size=cfg.recent_records)
        self.metrics = CollectorMetrics()
        self.metrics.bind_state(self.state)
        self.api = CollectorApi(self)
        factory = adapter_factory or _default_factory
        self.adapters: dict[str, VenueAdapter] = {
            m: factory(m, mc, settings.orderbook) for m, mc in self.markets.items()
        }
        for m, mc in self.markets.items():
            self.state.markets[m] = MarketState(mc.venue, mc.market_type, tuple(mc.data_types), tuple(mc.symbols))
        self.feeds: dict[str, FeedConnection] = {}
        self.nc: NATS = NATS()
        self.publisher = JetStreamPublisher(
            self.nc,
            max_inflight=cfg.max_inflight_acks,
            buffer_size=cfg.publish_buffer,
            ack_timeout_s=cfg.ack_timeout_s,
            retry_for_s=cfg.publish_retry_s,
            on_failed=self._on_publish_failed,
        )
        self.metrics.bind_publisher(
            lambda: self.publisher.stats, lambda: (self.publisher.buffered, self.publisher.inflight)
        )
        self.health_port: int | None = None  # bound ports (useful with port 0)
        self.metrics_port: int | None = None
        self.health_file = health_path(settings.data_dir, shard)
        self.ready = asyncio.Event()  # set once the HTTP servers listen
        self._tasks: set[asyncio.Task[Any]] = set()
        self._snapshots_inflight: set[tuple[str, str]] = set()
        self._logged: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._rest: RestClient | None = None
        self.refiller: Refiller | None = None  # refills open source gaps from venue history (collector/refill.py)
        self.points = PublishedPoints(points_path(settings.data_dir, shard))
        # source gaps (collector/gaps.py): the tracker, its file, the previous run's state (restored per market
        # once its instruments are loaded), each market's series by normalized symbol
        self.gaps = GapTracker()
        self.gap_file = gaps_path(settings.data_dir, shard)
        self._gap_saved: dict[str, Any] = {}
        self._gap_saving = False  # this run owns the shard (a takeover successor: after the handover)
        self._gap_series: dict[str, dict[str, Series]] = {}
        self.spill_file = spill_path(settings.data_dir, shard)
        self._spill_loaded = False
        self._spill_mark: float | None = None  # monotonic time the spill was queued; None: nothing replaying
        self._runners: list[web.AppRunner] = []
        self._drop_children: dict[tuple[str, str], Any] = {}

    def publish_stats(self) -> PublishStats | None:
        return self.publisher.stats

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event, heartbeat: Callable[[], None] | None = None) -> None:
        lock = None if self.settings.collector.allow_multiple else InstanceLock(self.settings.data_dir, self.shard)
        if lock is not None:
            lock.acquire(takeover=self.takeover)
        self.lock = lock
        try:
            if lock is None or lock.holding:
                self._replay_spill()
                self._load_gap_state()
                await self._start_http()
                self.ready.set()
            timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.collector.rest_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                self._session = session
                self._rest = RestClient(
                    session,
                    self.metrics,
                    self.state,
                    timeout_s=self.settings.collector.rest_timeout_s,
                    body_error=lambda market, body: self.adapters[market].rest_body_error(body),
                    max_body_bytes=self.settings.collector.rest_max_body_bytes,
                )
                events = self.metrics.adapter_events
                self.refiller = Refiller(
                    self._rest,
                    self.adapters,
                    self._emit,
                    on_event=lambda m, e, n: events.labels(m, e).inc(n),
                    path=pending_path(self.settings.data_dir, self.shard),
                )
                log.info(
                    "collector.start",
                    shard=self.shard,
                    markets=list(self.markets),
                    health_port=self.health_port,
                    metrics_port=self.metrics_port,
                )
                self._spawn(self._nats_main())
                if lock is not None and not lock.holding:
                    self._spawn(self._take_over(lock))
                for market in self.markets:
                    self._spawn(self._market_main(market))
                self._spawn(self._timer_loop())
                self._spawn(self._housekeeping(heartbeat))
                self._spawn(self.refiller.run())
                await stop.wait()
                await self._shutdown()
        finally:
            for runner in self._runners:
                await runner.cleanup()
            self._runners = []
            if lock is not None:
                lock.release()
            log.info("collector.stopped", shard=self.shard)

    async def _shutdown(self) -> None:
        log.info("collector.stopping", shard=self.shard, pending=self.publisher.pending)
        self.state.stopping = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=3.0)
            if stuck:  # e.g. nats-py swallowing a cancellation inside its reconnect loop: do not hang the exit
                log.warning("collector.tasks_not_stopped", tasks=sorted(t.get_name() for t in stuck))
        self._publish_gaps(self.gaps.flush(now_ms()))  # holes still waiting for late ids: the ids did not come
        if self.refiller is not None:
            self.refiller.save()  # gaps not refilled yet: queued again at the next start
        await self._drain_publisher()
        self._save_points()
        self._save_gap_state()
        with contextlib.suppress(Exception):
            await self.nc.close()
        self.state.nats_connected = False
        for f in self.state.feeds.values():
            f.connected = False
        body, _ = health_report(self.state, self.settings)
        body["status"] = "stopped"
        with contextlib.suppress(OSError):
            write_health_file(self.health_file, body)

    async def _drain_publisher(self) -> None:
        """Give NATS up to ``collector.shutdown_flush_s`` to take the buffer (it may be reconnecting), then
        spill what is left to disk for the next run; only a failed spill loses records, counted and logged."""
        pub = self.publisher
        deadline = time.monotonic() + self.settings.collector.shutdown_flush_s
        # never connected: the connect loop is cancelled, nothing can drain; else nats-py may be reconnecting
        while pub.started and pub.pending and (left := deadline - time.monotonic()) > 0:
            if not self.nc.is_connected:
                await asyncio.sleep(min(left, 0.1))
            elif await pub.flush(min(left, 0.5)):
                break
        await pub.close(flush_timeout=0)
        log.info("collector.flushed", complete=pub.pending == 0, acked=pub.stats.acked, pending=pub.pending)
        left_over = pub.take_pending()
        if not left_over and not self.spill_file.exists():
            return
        if self.spill_file.exists() and not self._spill_loaded:
            # a spill this run never replayed (a successor stopped before its handover): keep it, add ours
            previous, _ = read_spill(self.spill_file)
            left_over = previous + left_over
        try:
            if left_over:
                write_spill(self.spill_file, left_over)
            else:
                self.spill_file.unlink(missing_ok=True)
        except (OSError, ValueError) as exc:
            self.metrics.error(ANY, "records_lost", n=len(left_over))
            log.error(
                "collector.records_lost",
                shard=self.shard,
                count=len(left_over),
                by_subject=_count_by_type(left_over),
                path=str(self.spill_file),
                error=repr(exc),
                fix="make data_dir writable and keep NATS reachable while the collector stops",
            )
            return
        if left_over:
            log.warning(
                "collector.records_spilled",
                shard=self.shard,
                count=len(left_over),
                by_subject=_count_by_type(left_over),
                path=str(self.spill_file),
            )

    def _replay_spill(self) -> None:
        """Queue, first, what the previous run of this shard could not publish (collector/spill.py)."""
        self._spill_loaded = True
        entries, bad = read_spill(self.spill_file)
        if bad:
            self.metrics.error(ANY, "spill_unreadable", n=bad)
        if not entries:
            return
        self.publisher.restore(entries)
        self._spill_mark = time.monotonic()
        log.info("collector.spill_replaying", shard=self.shard, count=len(entries), path=str(self.spill_file))

    def _spill_delivered(self) -> None:
        """Remove the spill file once every replayed message is acknowledged (or given up on, counted)."""
        if self._spill_mark is None:
            return
        oldest = self.publisher.oldest_pending()
        if oldest is not None and oldest <= self._spill_mark:
            return
        self._spill_mark = None
        try:
            self.spill_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("collector.spill_remove_failed", path=str(self.spill_file), error=repr(exc))
            return
        log.info("collector.spill_delivered", shard=self.shard, restored=self.publisher.stats.restored)

    async def _take_over(self, lock: InstanceLock) -> None:
        """A successor: once the previous run released the shard lock, own the shard (spill, HTTP ports)."""
        await lock.wait_handover()
        self._replay_spill()
        self._gap_saving = True  # no downtime to restore: the previous run collected until the handover
        await self._start_http()
        self.ready.set()
        log.info("collector.took_over", shard=self.shard, health_port=self.health_port)

    @property
    def collecting(self) -> bool:
        """Every market's instruments are loaded and every WebSocket feed is connected."""
        return self.state.running and all(f.connected for f in self.state.feeds.values())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # named after the coroutine function (a coroutine object has __qualname__; typing.Coroutine does not say so)
        task = asyncio.get_running_loop().create_task(coro, name=getattr(coro, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("collector.task_failed", task=task.get_name(), error=repr(task.exception()))
            self.metrics.error(ANY, "task_failed")

    async def _start_http(self) -> None:
        cfg = self.settings.collector
        health_port, metrics_port = self.settings.shard_ports(self.shard)  # base + shard index: shards side by side
        same = health_port == metrics_port and health_port != 0
        apps = [(self.api.app(with_metrics=same), health_port)]
        if not same:
            apps.append((self.api.metrics_app(), metrics_port))
        ports: list[int] = []
        for app, port in apps:
            runner, bound = await serve_app(app, cfg.http_host, port)
            self._runners.append(runner)
            ports.append(bound)
        self.health_port = ports[0]
        self.metrics_port = ports[0] if same else ports[1]

    # ------------------------------------------------------------------ NATS

    async def _nats_main(self) -> None:
        backoff = Backoff(self.settings.collector.reconnect_initial_s, self.settings.collector.reconnect_max_s)
        url = self.settings.nats.url
        shown_url = mask_url(url)

        async def disconnected() -> None:
            self.state.nats_connected = False
            log.warning("collector.nats_disconnected", url=shown_url)

        async def reconnected() -> None:
            self.state.nats_connected = True
            self.publisher.requeue_inflight()
            log.info("collector.nats_reconnected", url=shown_url)

        async def on_error(exc: Exception) -> None:
            log.debug("collector.nats_error", error=repr(exc))

        while True:
            nc = NATS()
            try:
                # nats-py retries a refused first connect forever by itself (and may swallow a cancellation
                # while doing so): probe the port first so our own backoff loop owns the waiting.
                host, port = host_port(url)
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), self.settings.nats.connect_timeout_s
                )
                writer.close()
                await nc.connect(
                    servers=[url],
                    name=f"marketprism-collector-{self.shard}",
                    # nats-py annotates these seconds as int but hands them to asyncio.wait_for / sleep (floats)
                    connect_timeout=self.settings.nats.connect_timeout_s,  # type: ignore[arg-type]
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=on_error,
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                if self.state.stopping:  # a cancellation can be lost inside wait_for (Python 3.11)
                    return
                self.metrics.error(ANY, "nats_connect")
                delay = backoff.next()
                log.warning("collector.nats_connect_failed", url=shown_url, error=repr(exc), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            break
        self.nc = nc
        self.publisher.nc = nc
        self.state.nats_connected = True
        log.info("collector.nats_connected", url=shown_url)
        try:
            await ensure_streams(nc.jetstream(), self.settings)
        except Exception as exc:  # streams may be managed elsewhere; publishing reports what is missing
            self.metrics.error(ANY, "ensure_streams")
            log.warning("collector.ensure_streams_failed", error=repr(exc))
        await self.publisher.start()

    def _on_publish_failed(self, subject: str, code: str) -> None:
        parts = subject.split(".")
        self.metrics.error(parts[1] if len(parts) > 1 else ANY, f"publish_{code}", parts[0])

    # ------------------------------------------------------------------ markets

    async def _market_main(self, market: str) -> None:
        adapter = self.adapters[market]
        ms = self.state.markets[market]
        cfg = self.settings.collector
        backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        while not await self._load_instruments(market):
            await asyncio.sleep(backoff.next())
        ms.instruments_loaded = True
        self._gap_market_ready(market)
        assert self._session is not None
        for feed in adapter.ws_feeds():
            fs = self.state.feeds[feed.key] = FeedState(market, data_types=feed.data_types)
            conn = FeedConnection(
                feed,
                market,
                self._session,
                fs,
                self.metrics,
                on_connect=functools.partial(self._on_connect, market),
                on_message=self._message_handler(market),
                heartbeat_s=cfg.ws_heartbeat_s,
                backoff=Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s),
                ready=adapter.feed_ready,
                max_msg_size=cfg.ws_max_msg_bytes,
            )
            self.feeds[feed.key] = conn
            self._spawn(conn.run())
        for poll in adapter.rest_polls():
            self._spawn(self._poll_loop(market, poll))
        self.state.running = all(m.instruments_loaded for m in self.state.markets.values())
        refresh = self.markets[market].instruments_refresh_s
        backoff.reset()
        ok = True
        while True:  # a failed refresh keeps the instruments loaded before and retries with backoff
            await asyncio.sleep(refresh if ok else min(backoff.next(), refresh))
            ok = await self._load_instruments(market)
            if ok:
                backoff.reset()

    async def _load_instruments(self, market: str) -> bool:
        """Fetch and parse the market's instruments; False (counted, logged) on any failure, never raises: the
        caller retries with backoff and a running market keeps the instruments it has."""
        adapter = self.adapters[market]
        assert self._rest is not None
        try:
            bodies = {url: (await self._rest.get(market, url))[0] for url in adapter.instrument_urls()}
            instruments = adapter.load_instruments(bodies)
        except Exception as exc:  # a venue answer we cannot read must not end the market's task
            self.metrics.error(market, "instruments")
            self.state.errors += 1
            expected = isinstance(exc, RestError | ValueError)
            log.error(
                "collector.instruments_failed",
                market=market,
                error=str(exc) if expected else repr(exc),
                fix=None if expected else "the venue's instrument list has a shape the adapter cannot read",
            )
            return False
        skipped = adapter.skipped_instruments
        if skipped:
            self.metrics.error(market, "instrument_invalid", n=len(skipped))
            key = (market, "instrument_invalid")
            if key not in self._logged:
                self._logged.add(key)
                log.warning("collector.instruments_skipped", market=market, count=len(skipped), first=skipped[0])
        log.info("collector.instruments_loaded", market=market, count=len(instruments), skipped=len(skipped))
        return True

    def _message_handler(self, market: str) -> Callable[[str, str | bytes, int], None]:
        adapter = self.adapters[market]
        handle = self._handle

        waiting = self.gaps.waiting_feeds  # feeds whose first message after a reconnect closes disconnect gaps

        def on_message(feed_key: str, raw: str | bytes, received_at: int) -> None:
            if feed_key in waiting:
                self._publish_gaps(self.gaps.feed_message(feed_key, received_at))
            try:
                out = adapter.on_message(feed_key, raw, received_at)
            except Exception as exc:  # a parser bug must not take the feed down: count, log once, skip
                self._adapter_failed(market, "on_message", exc, raw)
                return
            handle(market, out)

        return on_message

    def _on_connect(self, market: str, feed_key: str, ts: int) -> None:
        fs = self.state.feeds.get(feed_key)
        if fs is not None and fs.connects > 1 and fs.last_message_ts is not None:
            self._connection_lost(market, fs.data_types, feed_key, fs.last_message_ts)
        try:
            out = self.adapters[market].on_connect(feed_key, ts)
        except Exception as exc:
            self._adapter_failed(market, "on_connect", exc)
            return
        self._handle(market, out)

    def _adapter_failed(self, market: str, where: str, exc: Exception, raw: str | bytes | None = None) -> None:
        self.metrics.error(market, "adapter_exception")
        self.state.errors += 1
        key = (market, f"{where}:{type(exc).__name__}")
        if key not in self._logged:
            self._logged.add(key)
            log.exception(
                "collector.adapter_failed", market=market, where=where, sample=None if raw is None else raw[:200]
            )

    # ------------------------------------------------------------------ outputs

    def _handle(self, market: str, out: Output) -> None:
        if out.records:
            self._emit(market, out.records)
        if out.ids:
            self._track_ids(market, out.ids)
        if out.events:
            self._count_events(market, out.events)
        for action in out.actions:
            self._dispatch(market, action)

    def _emit(self, market: str, recs: list[Any]) -> list[Any]:
        """Hand records to the publisher; the ones its full buffer rejected are returned (and counted)."""
        submit = self.publisher.submit
        remember = self.state.remember
        rejected: list[Any] = []
        gaps: list[Any] = []  # source_gap records: offered to the refiller
        source_gap = records.SourceGap
        downtime: list[Any] | None = [] if self.gaps.downtime_open else None
        fault = validation.fault
        for r in recs:
            broken = fault(r, book_levels=False)  # the books enforce the level rules themselves
            if broken is not None:  # never published: counted with its rule, logged once per rule
                self._invalid_record(market, r, broken)
                continue
            data_type = records.data_type_of(r)
            if not submit(records.subject(r), records.encode(r), records.msg_id(r)):
                self._count_drop(market, data_type, r.symbol)
                rejected.append(r)
            remember(data_type, market, r, r.received_at)
            if type(r) is source_gap:
                gaps.append(r)
            if downtime is not None and records.RECORD_TYPES[data_type].venue_type:
                downtime += self.gaps.first_record(market, r.symbol, data_type, r.received_at)
        if gaps and self.refiller is not None:
            self.refiller.offer(market, gaps)  # open, refillable gaps are refilled from venue history
        if downtime:
            self._publish_gaps(downtime)
        return rejected

    def _handle_points(self, market: str, key: str, out: Output) -> None:
        """A poll or backfill answer: repeats of published points dropped; the watermark moves only over
        the points the publisher accepted (collector/points.py)."""
        out = self.points.drop_repeats(key, out)
        recs, out.records = out.records, []
        rejected = self._emit(market, recs) if recs else []
        self.points.advance(key, recs, rejected)
        self._handle(market, out)

    def _invalid_record(self, market: str, record: Any, rule: str) -> None:
        data_type = records.data_type_of(record)
        self.metrics.error(market, "invalid_record", data_type)
        self.metrics.adapter_events.labels(market, f"invalid_record:{data_type}.{rule}").inc()
        self.state.errors += 1
        key = (market, f"invalid_record:{data_type}.{rule}")
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "collector.invalid_record",
                market=market,
                data_type=data_type,
                rule=rule,
                symbol=getattr(record, "symbol", None),
                sample=repr(record)[:300],
            )

    def _count_drop(self, market: str, data_type: str, symbol: str) -> None:
        if records.RECORD_TYPES[data_type].is_book:
            self.metrics.orderbook_queue_drops.labels(market, symbol).inc()
        self.metrics.queue_drops.labels(market, data_type).inc()
        key = (market, "queue_full")
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "collector.publish_buffer_full",
                market=market,
                buffer=self.publisher.buffer_size,
                nats_connected=self.state.nats_connected,
            )

    def _count_events(self, market: str, events: dict[str, int]) -> None:
        m = self.metrics
        for event, n in events.items():
            m.adapter_events.labels(market, event).inc(n)
            if event in RESYNC_EVENTS:
                m.resyncs.labels(market).inc(n)
            if event in CHECKSUM_EVENTS:
                m.checksum_failures.labels(market).inc(n)
            if event not in INFO_EVENTS:
                m.error(market, event, n=n)
                self.state.errors += n

    def _dispatch(self, market: str, action: Any) -> None:
        if isinstance(action, Send):
            conn = self.feeds.get(action.feed_key)
            if conn is None:
                self.metrics.error(market, "unknown_feed")
                return
            self._spawn(conn.send(action.text))
        elif isinstance(action, FetchSnapshot):
            key = (market, action.symbol)
            if key in self._snapshots_inflight:
                return
            self._snapshots_inflight.add(key)
            self._spawn(self._fetch_snapshot(market, action))
        elif isinstance(action, Reconnect):
            conn = self.feeds.get(action.feed_key)
            if conn is not None:
                conn.reconnect(action.reason)
        elif isinstance(action, SwitchConnection):
            conn = self.feeds.get(action.feed_key)
            if conn is None:
                self.metrics.error(market, "unknown_feed")
                return
            conn.switch(action.reason)
        elif isinstance(action, Backfill):
            self._spawn(self._backfill(market, action))
        else:
            self.metrics.error(market, "unknown_action")

    async def _fetch_snapshot(self, market: str, action: FetchSnapshot) -> None:
        assert self._rest is not None
        cfg = self.settings.collector
        backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        try:
            if action.delay_s > 0:
                await asyncio.sleep(action.delay_s)
            while True:
                try:
                    body, ts = await self._rest.get(market, action.url, action.weight)
                    break
                except RestError as exc:
                    if not exc.permanent:
                        log.warning("collector.snapshot_failed", market=market, symbol=action.symbol, error=str(exc))
                        await asyncio.sleep(backoff.next())
                        continue
                    # the venue rejects this request as sent (e.g. a depth limit it does not take): say so
                    # once, count every rejection, and ask again only at the slowest reconnect pace
                    self.metrics.error(market, "snapshot_rejected")
                    key = (market, f"snapshot_rejected:{exc.code or exc.status}")
                    if key not in self._logged:
                        self._logged.add(key)
                        log.error(
                            "collector.snapshot_rejected",
                            market=market,
                            symbol=action.symbol,
                            status=exc.status,
                            code=exc.code,
                            error=str(exc),
                            fix="check orderbook.snapshot_limit and the market's symbols against the venue",
                        )
                    await asyncio.sleep(cfg.reconnect_max_s)
        finally:
            self._snapshots_inflight.discard((market, action.symbol))
        try:
            out = self.adapters[market].on_snapshot(action.symbol, body, ts)
        except Exception as exc:
            self._adapter_failed(market, "on_snapshot", exc, body)
            return
        self._handle(market, out)

    async def _backfill(self, market: str, action: Backfill) -> None:
        assert self._rest is not None
        try:
            body, ts = await self._rest.get(market, action.url)
        except RestError as exc:
            log.warning("collector.backfill_failed", market=market, key=action.key, error=str(exc))
            return
        try:
            out = self.adapters[market].on_backfill(action.key, body, ts)
        except Exception as exc:
            self._adapter_failed(market, "on_backfill", exc, body)
            return
        self._handle_points(market, action.key, out)

    async def _poll_loop(self, market: str, poll: RestPoll) -> None:
        """Poll once at start, then on every period boundary + offset."""
        assert self._rest is not None
        adapter = self.adapters[market]
        while True:
            ok = False
            try:
                body, ts = await self._rest.get(market, poll.url, poll.weight)
            except RestError as exc:
                log.warning("collector.poll_failed", market=market, key=poll.key, error=str(exc))
            else:
                try:
                    out = adapter.on_rest(poll, body, ts)
                except Exception as exc:
                    self._adapter_failed(market, "on_rest", exc, body)
                else:
                    self._handle_points(market, poll.key, out)
                    ok = True
            self._poll_done(market, poll, ok)
            now = time.time()
            await asyncio.sleep(next_poll_time(now, poll.period_s, poll.offset_s) - now)

    async def _timer_loop(self) -> None:
        loaded = self.state.markets
        while True:
            await asyncio.sleep(TIMER_S)
            now = now_ms()
            for market, adapter in self.adapters.items():
                if not loaded[market].instruments_loaded:
                    continue
                try:
                    out = adapter.on_timer(now)
                except Exception as exc:
                    self._adapter_failed(market, "on_timer", exc)
                    continue
                self._handle(market, out)
            self._gap_timer(now)

    # ------------------------------------------------------------------ source gaps (collector/gaps.py)

    def _load_gap_state(self) -> None:
        """The previous run's gap state (its last sign of life, its id marks); this run owns the file now."""
        saved, readable = read_gap_state(self.gap_file)
        if not readable:
            self.metrics.error(ANY, "gap_state_unreadable")
        self._gap_saved = saved
        self._gap_saving = True

    def _gap_market_ready(self, market: str) -> None:
        """The market's instruments are loaded: its series, and the previous run's downtime for them."""
        adapter, mc = self.adapters[market], self.markets[market]
        series = {
            i.symbol: Series(market, mc.market_type, i.symbol, i.exchange_symbol) for i in adapter.instruments.values()
        }
        self._gap_series[market] = series
        if self._gap_saved:
            types = [t for t in mc.data_types if t in records.RECORD_TYPES]
            configured = [(s, t, records.RECORD_TYPES[t].sparse) for s in series.values() for t in types]
            self.gaps.restore(self._gap_saved, configured)

    def _save_gap_state(self) -> None:
        """Save once every market has taken the previous run's state (until then the old file stands); with each
        market's venue clock offset, measured on its recent streamed records (gaps.venue_offsets)."""
        if self._gap_saving and len(self._gap_series) == len(self.markets):
            streamed: dict[str, set[str]] = {}
            for f in self.state.feeds.values():
                streamed.setdefault(f.market, set()).update(f.data_types)
            offsets = venue_offsets(self.state.recent, streamed)
            write_gap_state(self.gap_file, self.gaps.state(now_ms(), offsets))

    def _publish_gaps(self, gaps: list[Any]) -> None:
        """Publish ``source_gap`` records like any other record: counted, one log line each."""
        if not gaps:
            return
        by_market: dict[str, list[Any]] = {}
        for g in gaps:
            self.metrics.source_gaps.labels(g.exchange, g.gap_data_type, g.cause).inc()
            log.warning(
                "collector.source_gap",
                market=g.exchange,
                symbol=g.symbol,
                data_type=g.gap_data_type,
                cause=g.cause,
                start_ms=g.timestamp,
                end_ms=g.end_time,
                first_missing_id=g.first_missing_id or None,
                last_missing_id=g.last_missing_id or None,
                state=g.state,
                detail=g.detail,
            )
            by_market.setdefault(g.exchange, []).append(g)
        for market, group in by_market.items():
            self._emit(market, group)

    def _track_ids(self, market: str, ids: list[Any]) -> None:
        series = self._gap_series.get(market)
        if series is None:
            return
        now = now_ms()
        track = self.gaps.ids
        found: list[Any] = []
        for data_type, symbol, first, last, ts in ids:
            s = series.get(symbol)
            if s is not None:
                found += track(s, data_type, first, last, ts, now)
        if found:
            self._publish_gaps(found)

    def _connection_lost(self, market: str, data_types: tuple[str, ...], feed_key: str, last_ms: int) -> None:
        """A feed reconnected after a loss: its id series name the cause of their next hole; its other series
        (not books: their windows are book_unsynced) get a disconnect row at the feed's next message."""
        id_types = self.adapters[market].id_types
        series = self._gap_series.get(market, {})
        targets = []
        for s in series.values():
            for t in data_types:
                if t in id_types:
                    self.gaps.expect_jump(market, s.symbol, t, DISCONNECT)
                elif t in records.RECORD_TYPES and not records.RECORD_TYPES[t].is_book:
                    targets.append((s, t))
        self.gaps.connection_lost(feed_key, targets, last_ms)

    def _poll_done(self, market: str, poll: RestPoll, ok: bool) -> None:
        now = now_ms()
        if ok:
            self._publish_gaps(self.gaps.poll_ok(poll.key, now))
            return
        inst = self.adapters[market].instruments.get(poll.symbol)
        s = self._gap_series.get(market, {}).get(inst.symbol) if inst is not None else None
        if s is not None:
            self.gaps.poll_failed(poll.key, s, poll.data_type, now)

    def _gap_timer(self, now: int) -> None:
        """Holes past the reorder window, and the books' closed windows without a valid state."""
        found = self.gaps.settle(now)
        for market, adapter in self.adapters.items():
            series = self._gap_series.get(market)
            if series is None:
                continue
            for data_type, inst, lost, back in adapter.book_windows():
                s = series.get(inst.symbol)
                if s is not None:
                    found.append(self.gaps.book_unsynced(s, data_type, lost, back, now))
        self._publish_gaps(found)

    def _save_points(self) -> None:
        """Persist the published-point watermarks that JetStream has acknowledged (see collector/points.py)."""
        self.points.checkpoint(time.monotonic())
        self.points.save_acknowledged(self.publisher.oldest_pending())

    async def _housekeeping(self, heartbeat: Callable[[], None] | None) -> None:
        while True:
            self.api.rate.sample(sum(self.state.records.values()))
            self._save_points()
            self._save_gap_state()
            self._spill_delivered()
            if self.on_ready is not None and self.collecting:
                on_ready, self.on_ready = self.on_ready, None
                try:
                    on_ready()
                except Exception as exc:
                    log.warning("collector.on_ready_failed", error=repr(exc))
            body, _ = health_report(self.state, self.settings)
            body["http"] = bound_ports(self.settings.collector.http_host, self.health_port, self.metrics_port)
            try:
                write_health_file(self.health_file, body)
            except OSError as exc:
                log.warning("collector.health_file_failed", path=str(self.health_file), error=repr(exc))
            if heartbeat is not None:
                try:
                    heartbeat()
                except Exception as exc:
                    log.warning("collector.heartbeat_failed", error=repr(exc))
            await asyncio.sleep(HOUSEKEEPING_S)


async def run_collector(
    settings: Settings,
    shard: str = "main",
    *,
    stop: asyncio.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    adapter_factory: AdapterFactory | None = None,
    takeover: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run one collector shard until ``stop`` is set (or SIGTERM/SIGINT when no event is given). ``takeover``:
    a planned restart's successor, taking the shard over from the run that holds it (collector/lock.py)."""
    signals = contextlib.ExitStack()
    if stop is None:
        stop = asyncio.Event()
        signals.enter_context(stop_on_signals(stop))
    with signals:
        await Collector(settings, shard, adapter_factory=adapter_factory, takeover=takeover, on_ready=on_ready).run(
            stop, heartbeat
        )


def _count_by_type(entries: list[tuple[str, bytes, str]]) -> dict[str, int]:
    """Message counts by data type (the subject's first token)."""
    out: dict[str, int] = {}
    for subject, _, _ in entries:
        kind = subject.split(".", 1)[0]
        out[kind] = out.get(kind, 0) + 1
    return out
