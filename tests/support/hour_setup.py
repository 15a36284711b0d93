"""An hour of stored data for the seal tests: records one minute apart inside a UTC hour, published to a real
JetStream and committed to the store as the writer commits them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.records import encode, msg_id, subject
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch, ensure_writer_tables
from tests.support.records import make_record

HOUR_MS = 3_600_000


def hour_start_ms(hours_back: int) -> int:
    """Start (epoch ms) of the UTC hour ``hours_back`` hours before the current one."""
    now = int(time.time() * 1000)
    return now - now % HOUR_MS - hours_back * HOUR_MS


def records_in_hour(data_type: str, hour_ms: int, n: int, *, first_id: int = 0) -> list[Any]:
    """``n`` records of ``data_type`` one minute apart from ``hour_ms`` + 7 ms, identities ``first_id`` on."""
    now = int(time.time() * 1000)
    return [
        msgspec.structs.replace(make_record(data_type, first_id + k, now), timestamp=hour_ms + 60_000 * k + 7)
        for k in range(n)
    ]


def prepare_store(settings: Settings) -> None:
    """The hot, cold and writer tables, as a running deployment has them."""
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)


async def publish_and_read(
    settings: Settings, records: Sequence[Any], stream: str = "MARKET_DATA"
) -> list[StreamMessage]:
    """Publish ``records`` (Nats-Msg-Id = identity) and read them back from ``stream`` as the writer receives
    them: sequences 1..len(records), so the stream must start empty and carry every record."""
    nc = await connect(settings.nats.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings)
        for r in records:
            await js.publish(subject(r), encode(r), headers={"Nats-Msg-Id": msg_id(r)})
        out = []
        for seq in range(1, len(records) + 1):
            m = await js.get_msg(stream, seq=seq)
            out.append(StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers))
        return out
    finally:
        await nc.drain()


def publish_and_commit(settings: Settings, records: Sequence[Any]) -> list[StreamMessage]:
    """``publish_and_read`` on MARKET_DATA, then one writer commit of every message."""
    messages = asyncio.run(publish_and_read(settings, records))
    with open_store(settings) as store:
        commit_batch(store, settings, "MARKET_DATA", messages)
    return messages
