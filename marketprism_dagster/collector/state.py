"""What the collector knows about itself: coverage, feeds, counters, recent records. Read by /health and the API."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FeedState:
    market: str
    data_types: tuple[str, ...] = ()  # what the feed carries; empty = unknown (counts for every type)
    connected: bool = False
    last_message_ts: int | None = None  # ms
    connects: int = 0
    messages: int = 0
    last_error: str | None = None


@dataclass
class MarketState:
    venue: str
    market_type: str
    data_types: tuple[str, ...]
    symbols: tuple[str, ...]
    instruments_loaded: bool = False
    rest_ok: bool | None = None  # last REST request of this market succeeded (None = none yet)
    last_rest_ts: int | None = None
    rest_requests: int = 0
    errors: int = 0


@dataclass
class CollectorState:
    shard: str
    started_at: float = field(default_factory=time.time)  # wall seconds
    started_mono: float = field(default_factory=time.monotonic)
    markets: dict[str, MarketState] = field(default_factory=dict)
    feeds: dict[str, FeedState] = field(default_factory=dict)
    # (data_type, market) -> receive time (ms) of the newest record
    last_success: dict[tuple[str, str], int] = field(default_factory=dict)
    records: dict[tuple[str, str], int] = field(default_factory=dict)
    recent: dict[tuple[str, str], deque[Any]] = field(default_factory=dict)
    recent_size: int = 100
    rest_requests: int = 0
    errors: int = 0
    nats_connected: bool = False
    stopping: bool = False  # set when shutdown begins (API answers SERVICE_UNAVAILABLE)
    running: bool = False  # set once every market's instruments are loaded and feeds started

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_mono

    def remember(self, data_type: str, market: str, record: Any, received_at: int) -> None:
        key = (data_type, market)
        ring = self.recent.get(key)
        if ring is None:
            ring = self.recent[key] = deque(maxlen=self.recent_size)
        ring.append(record)
        prev = self.last_success.get(key)
        if prev is None or received_at > prev:
            self.last_success[key] = received_at
        self.records[key] = self.records.get(key, 0) + 1

    def ws_messages_total(self) -> int:
        return sum(f.messages for f in self.feeds.values())

    def last_activity_ms(self) -> int | None:
        times = list(self.last_success.values())
        times += [f.last_message_ts for f in self.feeds.values() if f.last_message_ts]
        return max(times) if times else None
