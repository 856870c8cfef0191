"""One warning, not a flood, when decisions fall back to the caller's defaults.

``decide`` never raises: with a wrong key or the API down every call returns the defaults. That
must not go unnoticed, nor write a line per page view. :class:`FallbackLog` logs (stdlib
``logging``, logger ``tailor.sdk``) the first fallback of each cause at once, then at most one
per ``every_s`` seconds per cause, each saying how many were suppressed since the last one::

    WARNING tailor.sdk: tailor: decisions fall back to defaults (the API refused the key):
    the API refused the key (401 unauthorized): ...; 41 more since the last warning

Causes: ``auth`` (401/403), ``network`` (connection failures, timeouts), ``server`` (5xx, 429)
and ``request`` (arguments or requests the API refuses).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sdk.errors import AuthError, InvalidRequest, TailorError, TransportError

__all__ = ["FallbackLog", "cause_of"]

log = logging.getLogger("tailor.sdk")

_CAUSES = {
    "auth": "the API refused the key",
    "network": "the API could not be reached",
    "server": "the API failed",
    "request": "the request was refused",
}


def cause_of(error: TailorError) -> str:
    """The cause a fallback is counted under: auth, network, server or request."""
    if isinstance(error, AuthError):
        return "auth"
    if isinstance(error, TransportError):
        return "network"
    if isinstance(error, InvalidRequest):
        return "request"
    return "server"


class FallbackLog:
    """Rate-limited warnings about decisions served from the caller's defaults (thread-safe)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, error: TailorError) -> bool:
        """Count one fallback because of ``error``; True when a warning was logged for it."""
        cause = cause_of(error)
        now = self._clock()
        with self._lock:
            last = self._last.get(cause)
            if last is not None and now - last < self._every_s:
                self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
                return False
            self._last[cause] = now
            suppressed = self._suppressed.pop(cause, 0)
        more = f"; {suppressed} more since the last warning" if suppressed else ""
        log.warning(
            "tailor: decisions fall back to defaults (%s): %s%s", _CAUSES[cause], error, more
        )
        return True
