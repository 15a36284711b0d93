"""One WebSocket feed, kept connected forever: connect, subscribe, read, heartbeat, reconnect with backoff.

The read loop is tight: receive a frame, hand it to ``on_message`` (the adapter, then the
publish buffer, all synchronous), repeat. Nothing in it waits on NATS.

A venue that announces it will close a connection (the adapter turns its notice into a
``SwitchConnection``) gets a make-before-break switch (``switch``): a second connection to the same URL with
the same subscribe frames, read into the same adapter while the old one still streams; once it
has delivered a data frame and the adapter says the feed is whole again (``ready``, e.g. every
book synchronized), the old connection is closed with a close handshake, so every frame the
venue sent on it before is still read. Records of the overlap are duplicates by identity (the
publisher's Nats-Msg-Id drops them); books ignore updates they already applied. The feed stays
one feed, connected, throughout; a switch is neither a disconnect nor a reconnect. A new
connection that is not ready within ``switch_timeout_s`` is dropped and the old one is kept
until the venue closes it (then the feed reconnects as usual).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
import structlog

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.state import FeedState
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.venues.base import WsFeed

log = structlog.get_logger(__name__)

YIELD_EVERY = 128  # frames read back to back before the reader yields the event loop
SWITCH_TIMEOUT_S = 10.0  # a switch's new connection must be ready within this, else the old one is kept
CLOSE_WAIT_S = 5.0  # after a switch, the old connection's close handshake gets this long before it is cut
# largest frame accepted (collector.ws_max_msg_bytes): a 400-level book snapshot pushed in the stream is
# ~30 KB (others come by REST); a frame beyond this ends the connection (counted as ws_message_too_big)
MAX_MSG_BYTES = 4 * 1024**2
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
        ready: Callable[[str], bool] | None = None,
        switch_timeout_s: float = SWITCH_TIMEOUT_S,
        max_msg_size: int = MAX_MSG_BYTES,
    ) -> None:
        self.feed = feed
        self.max_msg_size = max_msg_size  # a larger frame ends the connection (reconnect), never buffers on
        self.market = market
        self.session = session
        self.state = state
        self.metrics = metrics
        self.on_connect = on_connect
        self.on_message = on_message
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self.ready = ready  # adapter: is the feed whole on a switch's new connection (books synchronized)?
        self.switch_timeout_s = switch_timeout_s
        self.switches = 0  # completed make-before-break switches
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reconnect_reason: str | None = None
        # make-before-break state: the switch task, its new connection (once connected) and whether the
        # new one is subscribed, and the connection handed over when the switch completed
        self._switch_task: asyncio.Task[None] | None = None
        self._switch_reason = ""
        self._pending: aiohttp.ClientWebSocketResponse | None = None
        self._pending_subscribed = False
        self._successor: aiohttp.ClientWebSocketResponse | None = None
        self._old_done = asyncio.Event()

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
                ws = await self._connect()
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
                await self._subscribe(ws)
                self.on_connect(self.feed.key, now_ms())
                reason = await self._serve(ws)
            except StaleConnection as exc:
                self._failed("ws_stale", exc)
                reason = "stale"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._failed("ws_error", exc)
                reason = repr(exc)
            finally:
                st.connected = False
                last = self._ws or ws
                self._ws = None
                await self._drop_switch()
                with contextlib.suppress(Exception):
                    await last.close()
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

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(
            self.feed.url, heartbeat=self.heartbeat_s, autoping=True, max_msg_size=self.max_msg_size, compress=0
        )

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        for text in self.feed.subscribe:
            await ws.send_str(text)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Read ``ws`` until it ends; then go on with a switch's new connection if there is one."""
        while True:
            try:
                reason = await self._read(ws)
            except (StaleConnection, TimeoutError, aiohttp.ClientError, OSError) as exc:
                if not self._pending_subscribed or self._reconnect_reason is not None:
                    raise
                reason = repr(exc)  # a switch's subscribed new connection takes over below
            self._old_done.set()
            successor = await self._take_successor()
            if successor is None:
                return reason
            with contextlib.suppress(Exception):
                await ws.close()
            ws = self._ws = successor

    async def _take_successor(self) -> aiohttp.ClientWebSocketResponse | None:
        """The connection that replaces the one just ended: a completed switch's, or a pending switch's
        new connection if it is subscribed (the venue closed the old one first); else None."""
        task = self._switch_task
        if task is None:
            return None
        successor = self._successor
        if successor is None:
            if self._reconnect_reason is not None or not self._pending_subscribed:
                return None  # run() drops the pending switch and reconnects
            successor = self._pending
            await self._stop_switch_task()
            self._log_switched(early=True)
        else:
            await asyncio.wait({task})
        self._switch_task = None
        self._pending = self._successor = None
        self._pending_subscribed = False
        if successor is None or successor.closed:
            return None
        return successor

    async def _stop_switch_task(self) -> None:
        task = self._switch_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def _drop_switch(self) -> None:
        """The feed lost its connection: abandon a switch in progress (its new connection included)."""
        if self._switch_task is None:
            return
        await self._stop_switch_task()
        pending = self._pending or self._successor
        self._switch_task = None
        self._pending = self._successor = None
        self._pending_subscribed = False
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, until_ready: bool = False) -> str:
        """Read data frames into ``on_message`` until the connection ends (the reason is returned).
        ``until_ready`` (a switch's new connection): return "" after a data frame once ``ready`` says so."""
        feed = self.feed
        key = feed.key
        st = self.state
        ping_text, pong_text = feed.ping_text, feed.pong_text
        timeout = feed.ping_interval_s if ping_text and feed.ping_interval_s else None
        on_message = self.on_message
        ready = self.ready
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
                if until_ready and (ready is None or ready(key)):
                    return ""
                if st.messages % YIELD_EVERY == 0:
                    # receive() does not suspend while frames are buffered: let the publisher and acks run
                    await asyncio.sleep(0)
                continue
            if self._reconnect_reason is not None:
                return f"reconnect requested: {self._reconnect_reason}"
            if msg.type == aiohttp.WSMsgType.ERROR:
                exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
                if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                    self._failed("ws_message_too_big", exc)
                    return f"frame larger than collector.ws_max_msg_bytes ({self.max_msg_size} bytes)"
                return f"error: {exc!r}"
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

    # ------------------------------------------------------------------ make-before-break switch

    def switch(self, reason: str) -> bool:
        """The venue will close the connection (``reason``): open a second one and move over (see module doc).

        False when there is nothing to switch (not connected) or a switch is already under way."""
        ws = self._ws
        if ws is None or ws.closed or self._switch_task is not None:
            log.info(
                "collector.ws_switch_skipped",
                market=self.market,
                feed=self.feed.key,
                reason=reason,
                why="switch in progress" if self._switch_task is not None else "not connected",
            )
            return False
        self._switch_reason = reason
        self._old_done = asyncio.Event()
        self._switch_task = asyncio.get_running_loop().create_task(self._switch(ws, reason))
        return True

    @property
    def switching(self) -> bool:
        return self._switch_task is not None

    async def _switch(self, old: aiohttp.ClientWebSocketResponse, reason: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.switch_timeout_s):
                new = self._pending = await self._connect()
                await self._subscribe(new)
                self._pending_subscribed = True
                ended = await self._read(new, until_ready=True)
                if ended:
                    raise aiohttp.ClientConnectionError(f"new connection ended: {ended}")
        except (TimeoutError, aiohttp.ClientError, OSError, StaleConnection) as exc:
            self._switch_failed(reason, exc, loop.time() - started)
            return
        # the new connection is whole: it replaces the old one, which ends with a close handshake, so the
        # old reader still gets every frame the venue sent before its close reply
        self._successor = new
        self._pending = None
        self._log_switched(early=False, overlap_s=loop.time() - started)
        await _close_handshake(old)
        try:
            await asyncio.wait_for(self._old_done.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            await old.close()  # no close reply: cut it (the new connection carries the feed already)

    def _switch_failed(self, reason: str, exc: BaseException, elapsed: float) -> None:
        pending = self._pending
        self._switch_task = None
        self._pending = None
        self._pending_subscribed = False
        if pending is not None:
            asyncio.get_running_loop().create_task(pending.close())
        self.metrics.error(self.market, "ws_switch_failed")
        self.state.last_error = f"ws_switch_failed: {exc!r}"
        log.warning(
            "collector.ws_switch_failed",
            market=self.market,
            feed=self.feed.key,
            reason=reason,
            error=repr(exc) if str(exc) else type(exc).__name__,
            after_s=round(elapsed, 3),
            keeping="the old connection until the venue closes it, then reconnecting",
        )

    def _log_switched(self, *, early: bool, overlap_s: float = 0.0) -> None:
        self.switches += 1
        self.metrics.adapter_events.labels(self.market, "connection_switch").inc()
        log.info(
            "collector.ws_switched",
            market=self.market,
            feed=self.feed.key,
            reason=self._switch_reason,
            # early: the venue closed the old connection before the new one was ready; the new one carries on
            old_closed_first=early,
            overlap_s=round(overlap_s, 3),
            switches=self.switches,
        )


async def _close_handshake(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Send a close frame on ``ws`` and leave the reading to its reader.

    ``ClientWebSocketResponse.close()`` would read (and drop) every frame still queued until the
    venue's close reply; sending the frame alone lets the reader hand all of them to the adapter
    and end on the reply. Falls back to ``close()`` if aiohttp's writer is not reachable."""
    writer = getattr(ws, "_writer", None)
    if writer is None or ws.closed:
        with contextlib.suppress(Exception):
            await ws.close()
        return
    with contextlib.suppress(Exception):
        await writer.close(aiohttp.WSCloseCode.GOING_AWAY, b"switched to a new connection")
