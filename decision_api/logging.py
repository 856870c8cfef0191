"""structlog configuration: JSON lines (msgspec-encoded) in production, console in development.

The request-scoped ``request_id`` is bound through contextvars by the request
middleware in :mod:`decision_api.app`. Unit ids are never logged raw: log ``unit_ref(unit_id)``.
A warning that every request would repeat while a backend is down goes through a
:class:`Throttle`: the first one is logged, then at most one per interval, saying how many were
suppressed in between.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable
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


def unit_ref(unit_id: str) -> str:
    """A short, one-way reference to a unit id that is safe to log."""
    return hashlib.sha256(b"tailor-log|" + unit_id.encode()).hexdigest()[:12]


WARN_INTERVAL_S = 10.0


class Throttle:
    """Log each event name at most once per ``every_s`` seconds; count what was suppressed.

    The first occurrence of an event is logged at once; later ones within the interval are
    only counted, and the next one logged after it carries ``suppressed=<count>``. Safe to
    call from threads (the event writer logs from ``asyncio.to_thread``).
    """

    def __init__(
        self, logger: Any, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        """Log a warning, unless this event was logged less than ``every_s`` ago."""
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log an error, unless this event was logged less than ``every_s`` ago."""
        self._log("error", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(event)
            if last is not None and now - last < self._every_s:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return
            self._last[event] = now
            suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self._logger, level)(event, **fields)
