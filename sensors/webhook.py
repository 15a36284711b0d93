"""One JSON POST per alert to the configured webhook (Slack-compatible: a ``text`` field).

The webhook URL is a secret (its path is the token): it is only ever shown through ``mask_url``.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

import structlog

from marketprism_dagster.logs import mask_url, redact, register_secrets

log = structlog.get_logger(__name__)


def alert_payload(kind: str, summary: str, **fields: Any) -> dict[str, Any]:
    return {
        "text": f"[MarketPrism] {summary}",
        "marketprism": {"kind": kind, "timestamp": datetime.now(UTC).isoformat(), **fields},
    }


def log_alert(payload: dict[str, Any]) -> None:
    """The alert's log line (``event=alert``): written for every alert, delivered or not."""
    log.warning("alert", text=payload["text"], **payload["marketprism"])


def post_alert(webhook_url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> str | None:
    """POST the alert; None when the webhook took it (2xx), else why it failed (secrets masked)."""
    register_secrets([webhook_url])
    req = urllib.request.Request(
        webhook_url,
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if 200 <= resp.status < 300:
                return None
            why = f"HTTP {resp.status}"
    except Exception as exc:
        why = redact(str(exc) or type(exc).__name__)
    log.error(
        "alert.post_failed",
        url=mask_url(webhook_url),
        error=why,
        kind=payload["marketprism"].get("kind"),
        storage_id=payload["marketprism"].get("storage_id"),
    )
    return why


def send_alert(webhook_url: str | None, payload: dict[str, Any], timeout_s: float = 5.0) -> bool:
    """Log the alert; POST it when a webhook is configured. False when the POST failed."""
    log_alert(payload)
    if not webhook_url:
        return True
    return post_alert(webhook_url, payload, timeout_s) is None
