"""One JSON POST per alert to the configured webhook (Slack-compatible: a ``text`` field)."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def alert_payload(kind: str, summary: str, **fields: Any) -> dict[str, Any]:
    return {
        "text": f"[MarketPrism] {summary}",
        "marketprism": {"kind": kind, "timestamp": datetime.now(UTC).isoformat(), **fields},
    }


def send_alert(webhook_url: str | None, payload: dict[str, Any], timeout_s: float = 5.0) -> bool:
    """Log the alert; POST it when a webhook is configured. False when the POST failed."""
    log.warning("alert", text=payload["text"], **payload["marketprism"])
    if not webhook_url:
        return True
    req = urllib.request.Request(
        webhook_url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except Exception as exc:
        log.error("alert.post_failed", url=webhook_url, error=str(exc))
        return False
