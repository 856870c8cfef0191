"""structlog configuration: JSON lines (msgspec-encoded) in production, console in development.

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
from typing import Any

import msgspec
import structlog

_encoder = msgspec.json.Encoder()


def _serialize(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def configure_logging(fmt: str, level: str) -> None:
    """Configure structlog once for the process (called by ``create_app``)."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "json":
        processors.append(structlog.processors.JSONRenderer(serializer=_serialize))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    quiet_library_loggers()


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
