"""One WebSocket feed, kept connected forever: connect, subscribe, read, heartbeat, reconnect with backoff.

The read loop is tight: receive a frame, hand it to ``on_message`` (the adapter, then the
publish buffer, all synchronous), repeat. Nothing in it waits on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
import structlog

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.state import FeedState, now_ms
from marketprism_dagster.venues.base import WsFeed

log = structlog.get_logger(__name__)

YIELD_EVERY = 128  # frames read back to back before the reader yields the event loop
_DATA = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)


class StaleConnection(Exception):
    """No answer to the venue's text ping within the ping interval."""


class FeedConnection:
    def __init__(
        self,
        feed: WsFeed,
        market: str,
        session: aiohttp.ClientSession,
        state: FeedState,
        metrics: CollectorMetrics,
        *,
        on_connect: Callable[[str, int], None],
        on_message: Callable[[str, str | bytes, int], None],
        heartbeat_s: float = 20.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.feed = feed
        self.market = market
        self.session = session
        self.state = state
        self.metrics = metrics
        self.on_connect = on_connect
        self.on_message = on_message
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reconnect_reason: str | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def run(self) -> None:
        """Forever (until cancelled)."""
        first = True
        while True:
            if not first:
                self.metrics.reconnects.labels(self.market).inc()
            first = False
            try:
                ws = await self.session.ws_connect(
                    self.feed.url, heartbeat=self.heartbeat_s, autoping=True, max_msg_size=0, compress=0
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._failed("ws_connect", exc)
                await asyncio.sleep(self.backoff.next())
                continue
            self._ws = ws
            self._reconnect_reason = None
            st = self.state
            st.connected = True
            st.connects += 1
            log.info("collector.ws_connected", market=self.market, feed=self.feed.key, connects=st.connects)
            received_before = st.messages
            reason = "closed by venue"
            try:
                for text in self.feed.subscribe:
                    await ws.send_str(text)
                self.on_connect(self.feed.key, now_ms())
                reason = await self._read(ws)
            except StaleConnection as exc:
                self._failed("ws_stale", exc)
                reason = "stale"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._failed("ws_error", exc)
                reason = repr(exc)
            finally:
                st.connected = False
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()
            if st.messages > received_before:
                self.backoff.reset()  # the connection worked: start the next backoff from the bottom
            if self._reconnect_reason is None:
                self.metrics.error(self.market, "ws_disconnect")
            delay = self.backoff.next()
            log.warning(
                "collector.ws_disconnected",
                market=self.market,
                feed=self.feed.key,
                reason=reason,
                reconnect_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        feed = self.feed
        key = feed.key
        st = self.state
        ping_text, pong_text = feed.ping_text, feed.pong_text
        timeout = feed.ping_interval_s if ping_text and feed.ping_interval_s else None
        on_message = self.on_message
        pinged = False
        while True:
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                if pinged:
                    raise StaleConnection(f"no answer to {ping_text!r} within {timeout} s") from None
                await ws.send_str(ping_text)  # type: ignore[arg-type]
                pinged = True
                continue
            pinged = False
            if msg.type in _DATA:
                data = msg.data
                if pong_text is not None and data == pong_text:
                    continue
                received_at = now_ms()
                st.messages += 1
                st.last_message_ts = received_at
                on_message(key, data, received_at)
                if st.messages % YIELD_EVERY == 0:
                    # receive() does not suspend while frames are buffered: let the publisher and acks run
                    await asyncio.sleep(0)
                continue
            if self._reconnect_reason is not None:
                return f"reconnect requested: {self._reconnect_reason}"
            if msg.type == aiohttp.WSMsgType.ERROR:
                return f"error: {ws.exception()!r}"
            return f"closed ({msg.type.name}, code {ws.close_code})"

    def _failed(self, code: str, exc: BaseException) -> None:
        self.state.last_error = f"{code}: {exc!r}"
        self.metrics.error(self.market, code)
        log.warning("collector.ws_failed", market=self.market, feed=self.feed.key, code=code, error=repr(exc))

    async def send(self, text: str) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            self.metrics.error(self.market, "ws_send_disconnected")
            return False
        try:
            await ws.send_str(text)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            self._failed("ws_send", exc)
            return False
        return True

    def reconnect(self, reason: str) -> None:
        """Close the connection; ``run`` reconnects it (with backoff)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        self._reconnect_reason = reason
        log.info("collector.ws_reconnect", market=self.market, feed=self.feed.key, reason=reason)
        asyncio.get_running_loop().create_task(ws.close())
