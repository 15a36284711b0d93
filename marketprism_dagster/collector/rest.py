"""REST GETs with rate-limit accounting, retries and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import structlog

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.ratelimit import WEIGHT_LIMITS, RateLimiter
from marketprism_dagster.collector.state import CollectorState, now_ms

log = structlog.get_logger(__name__)


class RestError(Exception):
    def __init__(self, url: str, status: int | None, detail: str) -> None:
        super().__init__(f"GET {url}: {detail}")
        self.url = url
        self.status = status


class RestClient:
    """GET with the host's RateLimiter; 429/418 wait Retry-After, 5xx/timeouts retry with backoff."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: CollectorMetrics,
        state: CollectorState,
        *,
        timeout_s: float = 10.0,
        attempts: int = 5,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.2, 5.0),
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.state = state
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self._backoff = backoff
        self.limiters: dict[str, RateLimiter] = {}

    def limiter(self, market: str, url: str) -> RateLimiter:
        host = urlsplit(url).netloc
        lim = self.limiters.get(host)
        if lim is None:
            ms = self.state.markets.get(market)
            limit = WEIGHT_LIMITS.get((ms.venue, ms.market_type)) if ms else None
            lim = self.limiters[host] = RateLimiter(limit)
        return lim

    async def get(self, market: str, url: str, weight: int = 1) -> tuple[bytes, int]:
        """The body and its receive time (ms). Raises RestError after ``attempts`` failures or on a 4xx."""
        lim = self.limiter(market, url)
        backoff = self._backoff()
        ms = self.state.markets.get(market)
        last: RestError | None = None
        for _ in range(self.attempts):
            waited = await lim.acquire(weight)
            if waited:
                self.metrics.rate_limit_wait.labels(market).inc(waited)
            status: int | None = None
            try:
                async with self.session.get(url, timeout=self.timeout) as resp:
                    status = resp.status
                    body = await resp.read()
                    received_at = now_ms()
                    retry_after = lim.update(status, resp.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                code = "rest_timeout" if isinstance(exc, TimeoutError) else "rest_connection"
                self._count(market, code.removeprefix("rest_"), code, ms)
                last = RestError(url, None, repr(exc))
                await asyncio.sleep(backoff.next())
                continue
            self.state.rest_requests += 1
            if ms is not None:
                ms.rest_requests += 1
                ms.last_rest_ts = received_at
            if status == 200:
                self.metrics.rest_requests.labels(market, "200").inc()
                if ms is not None:
                    ms.rest_ok = True
                return body, received_at
            if retry_after is not None:
                self.metrics.rate_limited.labels(market, str(status)).inc()
                self._count(market, str(status), f"rest_{status}", ms)
                log.warning("collector.rate_limited", market=market, url=url, status=status, retry_after=retry_after)
                last = RestError(url, status, f"HTTP {status}, Retry-After {retry_after:g} s")
                continue  # acquire() waits out the Retry-After
            if status >= 500:
                self._count(market, "5xx", "rest_5xx", ms)
                last = RestError(url, status, f"HTTP {status}: {body[:200]!r}")
                await asyncio.sleep(backoff.next())
                continue
            self._count(market, "4xx", f"rest_{status}", ms)
            raise RestError(url, status, f"HTTP {status}: {body[:200]!r}")
        assert last is not None
        log.warning("collector.rest_failed", market=market, url=url, attempts=self.attempts, error=str(last))
        raise last

    def _count(self, market: str, status: str, code: str, ms: object) -> None:
        self.metrics.rest_requests.labels(market, status).inc()
        self.metrics.error(market, code)
        self.state.errors += 1
        if ms is not None:
            ms.rest_ok = False  # type: ignore[attr-defined]
            ms.errors += 1  # type: ignore[attr-defined]
