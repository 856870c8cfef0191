"""structlog configuration: JSON lines (msgspec-encoded) in production, console in development.

``TAILOR_LOG_FORMAT=auto`` (the default) picks by where stderr goes: readable console lines on
a terminal, JSON lines otherwise (a file, a pipe, journald, a container's log driver).
Standard-library loggers — urllib3, asyncio, granian's own ``_granian`` start-up lines — are
routed through the same renderer (:func:`stdlib_formatter`), so no plain line appears among the
JSON ones; ``tailor serve`` hands granian :func:`granian_log_config` for its own loggers.

The request-scoped ``request_id`` is bound through contextvars by the request
middleware in :mod:`decision_api.app`. Unit ids are never logged raw: log ``unit_ref(unit_id)``.
A warning that every request would repeat while a backend is down goes through a
:class:`event_log.throttle.Throttle`: the first one is logged, then at most one per interval,
saying how many were suppressed in between.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any, TextIO

import msgspec
import structlog

_encoder = msgspec.json.Encoder()


def _serialize(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``json`` or ``console``: ``auto`` is console on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    return "console" if (stream or sys.stderr).isatty() else "json"


def _renderer(fmt: str, stream: TextIO) -> Any:
    if resolve_format(fmt, stream) == "json":
        return structlog.processors.JSONRenderer(serializer=_serialize)
    return structlog.dev.ConsoleRenderer(colors=stream.isatty())


def stdlib_formatter(fmt: str = "auto", stream: TextIO | None = None) -> logging.Formatter:
    """A ``logging.Formatter`` that renders standard-library records as structlog renders its
    own events (JSON or console), with ``logger`` naming where they came from."""
    out = stream or sys.stderr
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _renderer(fmt, out),
        ],
    )


class _TailorHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler :func:`configure_logging` installs (replaced, not stacked, on a
    second call)."""


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard-library root logger once for the process.

    Called by ``create_app`` and the long-running CLI commands; ``stream`` defaults to stderr.
    """
    out = stream or sys.stderr
    number = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _renderer(fmt, out),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _TailorHandler)]:
        root.removeHandler(handler)
    handler = _TailorHandler(out)
    handler.setFormatter(stdlib_formatter(fmt, out))
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)

    quiet_library_loggers()


def granian_log_config(fmt: str) -> dict[str, Any]:
    """granian's ``log_dictconfig``: its own loggers rendered as Tailor's (JSON or console)."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "tailor",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tailor": {"()": "decision_api.logging.stdlib_formatter", "fmt": fmt}},
        "handlers": {"console": handler, "access": dict(handler)},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def quiet_library_loggers() -> None:
    """Let only errors through from urllib3 and clickhouse-connect's standard-library loggers.

    When ClickHouse is unreachable, urllib3's connection pool warns with the full request URL —
    server address, SQL and bound parameter values such as unit ids — in a plain, non-JSON
    line, and clickhouse-connect warns about the same failure (with a traceback quoting that
    URL when its errors are hidden). Both say nothing Tailor does not: the failure reaches it
    as ``EventLogUnavailable``, translated without those details and logged in JSON.
    """
    for name in ("urllib3", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.ERROR)


def unit_ref(unit_id: str) -> str:
    """A short, one-way reference to a unit id that is safe to log."""
    return hashlib.sha256(b"tailor-log|" + unit_id.encode()).hexdigest()[:12]


WARN_INTERVAL_S = 10.0
