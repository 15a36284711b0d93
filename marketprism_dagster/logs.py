"""Structured logging: JSON in production or when not on a terminal, readable console otherwise.

Secrets never reach output: ``mask_url`` is the one way a URL is shown (config show, logs, error
messages), ``redact`` masks every registered secret and any URL password inside a text, and the
``redact_secrets`` processor applies it to every log event as a last line of defence.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

MASK = "****"

# scheme://user:password@ -> the password is group "pw"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?=@)")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MIN_SECRET_LEN = 4  # shorter strings would mask ordinary words


def mask_url(url: str | None) -> str:
    """``scheme://[user:****@]host[:port][/****]``: a URL as it may be printed or logged.

    The password is masked, and so is everything after the authority: a webhook's path is its token
    (Slack, Teams), a query string may carry one. ``http://127.0.0.1:8123`` stays as it is."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.password is not None:
        netloc = f"{parts.username}:{MASK}@{netloc}"
    elif parts.username:  # a lone user part is a token (nats://TOKEN@host)
        netloc = f"{MASK}@{netloc}"
    tail = f"/{MASK}" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{tail}"


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret strings (a password, a webhook URL) so ``redact`` masks them wherever they appear."""
    with _secrets_lock:
        for v in values:
            if v and len(v) >= _MIN_SECRET_LEN:
                _secrets.add(v)


def redact(text: str) -> str:
    """``text`` with every registered secret and every URL password replaced by ``****``."""
    if not text:
        return text
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # a URL before the password inside it
    for s in secrets:
        if s in text:
            text = text.replace(s, mask_url(s) if "://" in s else MASK)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(repr(value))
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no registered secret and no URL password leaves the process in a log line."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


class _StderrPrinter:
    """Writes each rendered event to the CURRENT sys.stderr (which test runners and daemons may swap)."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        if stream is None or stream.closed:
            return
        print(message, file=stream, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _printer(*_args: object) -> _StderrPrinter:
    return _StderrPrinter()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=_printer,
        cache_logger_on_first_use=False,
    )
