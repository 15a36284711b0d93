"""The JetStream message as the writer and the seal see it, whatever delivered it, and its headers."""

from __future__ import annotations

from dataclasses import dataclass


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """``NATS/1.0\\r\\nK: V\\r\\n...`` -> {K: V} (last value wins), None when empty."""
    if not raw:
        return None
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:
        if not line:
            continue
        k, sep, v = line.partition(b":")
        if sep:
            out[k.decode(errors="replace").strip()] = v.decode(errors="replace").strip()
    return out or None


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One JetStream message: its stream sequence, subject, payload and headers."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    raw_headers: bytes | None = None  # as received (raw pull consumer); parsed only when needed

    def header_map(self) -> dict[str, str] | None:
        if self.headers is not None or not self.raw_headers:
            return self.headers
        return parse_headers(self.raw_headers)
