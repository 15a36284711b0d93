"""Structured logging: JSON in production or when not on a terminal, readable console otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=_printer,
        cache_logger_on_first_use=False,
    )
