"""Rate-limited log lines: an outage logs its first error at once, then a count, not a flood.

Used wherever a failure repeats per request or per flush (the event writer, the decision path's
Redis reads, the rate limiter): with Redis down, one warning per event name per interval, and
the next line carries how many were suppressed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Throttle"]


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
