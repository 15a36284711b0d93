"""The dead-letter stream: poison messages with their reason, original payload and headers."""

from __future__ import annotations

from nats.js import JetStreamContext

from marketprism_dagster.config import Settings, StreamConfig
from marketprism_dagster.jetstream import ensure_stream
from marketprism_dagster.writer.ingest import Poison

SUBJECT_PREFIX = "deadletter"
REASON = "MP-Dead-Letter-Reason"
KIND = "MP-Dead-Letter-Kind"
SOURCE_STREAM = "MP-Dead-Letter-Stream"
SOURCE_SEQ = "MP-Dead-Letter-Seq"
SOURCE_SUBJECT = "MP-Dead-Letter-Subject"
ORIGINAL_MSG_ID = "MP-Original-Msg-Id"


def dead_letter_stream_config() -> StreamConfig:
    return StreamConfig(
        subjects=[f"{SUBJECT_PREFIX}.>"],
        max_bytes=1024**3,
        max_age_s=14 * 24 * 3600,
        duplicate_window_s=600,
        storage="file",
    )


async def ensure_dead_letter_stream(js: JetStreamContext, settings: Settings) -> str:
    return (await ensure_stream(js, settings.writer.dead_letter_stream, dead_letter_stream_config())).action


def dead_letter_subject(stream: str, p: Poison) -> str:
    first = p.message.subject.split(".", 1)[0] or "unknown"
    token = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in first)[:64] or "unknown"
    return f"{SUBJECT_PREFIX}.{stream}.{token}"


def dead_letter_headers(stream: str, p: Poison) -> dict[str, str]:
    headers = dict(p.message.header_map() or {})
    original = headers.pop("Nats-Msg-Id", None)
    if original:
        headers[ORIGINAL_MSG_ID] = original
    reason = p.reason.replace("\r", " ").replace("\n", " ")[:1000]
    headers.update({
        REASON: reason,
        KIND: p.kind,
        SOURCE_STREAM: stream,
        SOURCE_SEQ: str(p.message.seq),
        SOURCE_SUBJECT: p.message.subject,
        # a re-commit after a crash publishes the same dead letter again: JetStream drops it
        "Nats-Msg-Id": f"deadletter:{stream}:{p.message.seq}",
    })
    return headers


async def publish_dead_letters(js: JetStreamContext, settings: Settings, stream: str, poison: list[Poison],
                               timeout: float = 5.0) -> None:
    """Publish and wait for every PubAck (raises on failure: the batch is then not committed)."""
    for p in poison:
        await js.publish(dead_letter_subject(stream, p), p.message.data, timeout=timeout,
                         stream=settings.writer.dead_letter_stream, headers=dead_letter_headers(stream, p))
