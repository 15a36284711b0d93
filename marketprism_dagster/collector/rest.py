"""REST GETs with rate-limit accounting, retries and metrics.

Outcomes of one ``RestClient.get``:

* HTTP 200 and no venue error in the body: the body;
* HTTP 429/418, or a venue rate-limit code in the body (some venues send it with HTTP 200): the
  host's ``RateLimiter`` blocks for Retry-After / the venue's window, then the request is retried;
* 5xx, timeouts, connection errors and transient venue codes: retried with capped exponential
  backoff;
* any other 4xx or venue code: ``RestError`` at once, ``permanent`` (the same request cannot succeed).

Venue codes come from ``VenueAdapter.rest_body_error`` (default: none); the error metric of a venue
code is ``rest_code_<code>`` so each code is counted on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.ratelimit import RateLimiter
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.venues import registry
from marketprism_dagster.venues.base import RestBodyError

log = structlog.get_logger(__name__)

BodyErrorHook = Callable[[str, bytes], RestBodyError | None]  # (market, body) -> the venue error in the body


class RestError(Exception):
    """A failed GET. ``status`` is the HTTP status (None: no answer), ``code``/``venue_msg`` the venue's
    error code and message when the body carries one (``{"code": ..., "msg": ...}`` or JSON-RPC
    ``{"error": {...}}``); ``permanent`` says that retrying the same request cannot help."""

    def __init__(
        self,
        url: str,
        status: int | None,
        message: str,
        *,
        code: str | None = None,
        venue_msg: str | None = None,
        permanent: bool = False,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.code = code
        self.venue_msg = venue_msg
        self.permanent = permanent
        self.rate_limited = rate_limited


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def venue_error(venue: str, url: str, status: int, code: str, msg: str, **flags: bool) -> RestError:
    """The RestError for a venue code: "<venue> REST error <code>: <message> (GET <path>)"."""
    where = f"GET {_target(url)}" if status == 200 else f"HTTP {status}, GET {_target(url)}"
    return RestError(url, status, f"{venue} REST error {code}: {msg} ({where})", code=code, venue_msg=msg, **flags)


def http_error(
    url: str, status: int | None, detail: str, *, permanent: bool = False, rate_limited: bool = False
) -> RestError:
    return RestError(url, status, f"GET {url}: {detail}", permanent=permanent, rate_limited=rate_limited)


def envelope_error(body: bytes) -> tuple[str, str] | None:
    """(code, message) of a JSON error body: ``{"code", "msg"}`` or JSON-RPC ``{"error": {...}}``."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    err = payload.get("error")
    if isinstance(err, dict) and "code" in err:
        return str(err["code"]), str(err.get("message") or "")
    if "code" in payload and "msg" in payload:
        return str(payload["code"]), str(payload["msg"])
    return None


MAX_BODY_BYTES = 64 * 1024**2  # collector.rest_max_body_bytes: the largest instrument listing is a few MB


class BodyTooLarge(Exception):
    """A REST body beyond the configured bound (read no further)."""


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, read in chunks and abandoned as soon as it exceeds ``limit`` bytes (BodyTooLarge)."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds collector.rest_max_body_bytes ({limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds collector.rest_max_body_bytes ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


class RestClient:
    """GET with the host's RateLimiter; 429/418 and venue rate-limit codes wait, 5xx/timeouts retry with backoff."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: CollectorMetrics,
        state: CollectorState,
        *,
        timeout_s: float = 10.0,
        attempts: int = 5,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.2, 5.0),
        body_error: BodyErrorHook | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.session = session
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.state = state
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = attempts
        self._backoff = backoff
        self._body_error = body_error
        self.limiters: dict[str, RateLimiter] = {}

    def limiter(self, market: str, url: str) -> RateLimiter:
        host = urlsplit(url).netloc
        lim = self.limiters.get(host)
        if lim is None:
            ms = self.state.markets.get(market)
            spec = registry.market_spec(ms.venue, ms.market_type) if ms else None
            limit = spec.weight_per_minute if spec is not None else None
            header = registry.weight_header(ms.venue) if ms else None
            lim = self.limiters[host] = RateLimiter(limit, weight_header=header)
        return lim

    async def get(self, market: str, url: str, weight: int = 1) -> tuple[bytes, int]:
        """The body and its receive time (ms). Raises RestError after ``attempts`` failures or on a permanent error."""
        lim = self.limiter(market, url)
        backoff = self._backoff()
        ms = self.state.markets.get(market)
        venue = ms.venue if ms is not None else market
        last: RestError | None = None
        for _ in range(self.attempts):
            waited = await lim.acquire(weight)
            if waited:
                self.metrics.rate_limit_wait.labels(market).inc(waited)
            status: int | None = None
            try:
                async with self.session.get(url, timeout=self.timeout) as resp:
                    status = resp.status
                    body = await read_bounded(resp, self.max_body_bytes)
                    received_at = now_ms()
                    retry_after = lim.update(status, resp.headers)
            except BodyTooLarge as exc:
                # the venue's answer to this request: asking again reads the same (the setting names the fix)
                self._count(market, "too_large", "rest_body_too_large", ms)
                raise http_error(url, status, str(exc), permanent=True) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                code = "rest_timeout" if isinstance(exc, TimeoutError) else "rest_connection"
                self._count(market, code.removeprefix("rest_"), code, ms)
                last = http_error(url, None, repr(exc))
                await asyncio.sleep(backoff.next())
                continue
            self.state.rest_requests += 1
            if ms is not None:
                ms.rest_requests += 1
                ms.last_rest_ts = received_at
            body_error = self._body_error(market, body) if self._body_error is not None else None
            if status == 200 and body_error is None:
                self.metrics.rest_requests.labels(market, "200").inc()
                if ms is not None:
                    ms.rest_ok = True
                return body, received_at
            if body_error is not None:
                last = self._on_body_error(market, venue, url, status, body_error, lim, ms)
                if last.permanent:
                    raise last
                if not last.rate_limited and retry_after is None:
                    await asyncio.sleep(backoff.next())
                continue  # a rate limit: acquire() waits out the block
            if retry_after is not None:
                self.metrics.rate_limited.labels(market, str(status)).inc()
                self._count(market, str(status), f"rest_{status}", ms)
                log.warning("collector.rate_limited", market=market, url=url, status=status, retry_after=retry_after)
                last = http_error(url, status, f"HTTP {status}, Retry-After {retry_after:g} s", rate_limited=True)
                continue  # acquire() waits out the Retry-After
            if status >= 500:
                self._count(market, "5xx", "rest_5xx", ms)
                last = http_error(url, status, f"HTTP {status}: {body[:200]!r}")
                await asyncio.sleep(backoff.next())
                continue
            # any other 4xx: the request as sent is rejected (venue codes for bad parameters come as HTTP 400)
            self._count(market, "4xx", f"rest_{status}", ms)
            found = envelope_error(body)
            if found is not None:
                raise venue_error(venue, url, status, *found, permanent=True)
            raise http_error(url, status, f"HTTP {status}: {body[:200]!r}", permanent=True)
        assert last is not None
        log.warning("collector.rest_failed", market=market, url=url, attempts=self.attempts, error=str(last))
        raise last

    def _on_body_error(
        self,
        market: str,
        venue: str,
        url: str,
        status: int,
        err: RestBodyError,
        lim: RateLimiter,
        ms: MarketState | None,
    ) -> RestError:
        """Count a venue code, block the host for a rate limit; the RestError that stands for it."""
        self._count(market, f"code_{err.code}", f"rest_code_{err.code}", ms)
        if err.rate_limited:
            self.metrics.rate_limited.labels(market, err.code).inc()
            # the venue's window, on the host's limiter: every request to this host waits it out
            lim.blocked_until = max(lim.blocked_until, lim.clock() + err.retry_after_s)
            log.warning(
                "collector.rate_limited", market=market, url=url, status=status, code=err.code, wait_s=err.retry_after_s
            )
        # a code the venue sends with a 5xx/429/418 is still the venue's trouble, not the request's
        permanent = not (err.rate_limited or err.transient or status >= 500 or status in (429, 418))
        return venue_error(venue, url, status, err.code, err.msg, permanent=permanent, rate_limited=err.rate_limited)

    def _count(self, market: str, status: str, code: str, ms: MarketState | None) -> None:
        self.metrics.rest_requests.labels(market, status).inc()
        self.metrics.error(market, code)
        self.state.errors += 1
        if ms is not None:
            ms.rest_ok = False
            ms.errors += 1
