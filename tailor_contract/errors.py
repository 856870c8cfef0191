"""Tailor's error hierarchy: each class carries an HTTP status and a stable ``code``.

Domain packages raise their own errors (``experiments.errors``); the app maps both to RFC 9457
problem-details bodies in one handler (``decision_api.problems``). Storage adapters translate
Redis and ClickHouse failures into the ``*Unavailable`` classes here, once, at their boundary.
"""

from __future__ import annotations


class TailorError(Exception):
    """Base of every error Tailor raises on purpose."""

    status_code = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class BadRequest(TailorError):
    """The request cannot be parsed."""

    status_code = 400
    code = "bad_request"
    title = "Bad request"


class InvalidInput(TailorError):
    """The request parses but a field's value is not acceptable."""

    status_code = 422
    code = "invalid_input"
    title = "Invalid input"


class Unauthorized(TailorError):
    """No (valid) API key."""

    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(TailorError):
    """The API key lacks the scope the endpoint needs."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(TailorError):
    """No such resource."""

    status_code = 404
    code = "not_found"
    title = "Not found"


class Conflict(TailorError):
    """The change conflicts with the resource's current state."""

    status_code = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(TailorError):
    """The request body is over the configured limit."""

    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class RateLimited(TailorError):
    """The API key is over its rate limit."""

    status_code = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(TailorError):
    """A backend the request needs is down; retry later."""

    status_code = 503
    code = "unavailable"
    title = "Service unavailable"


class RedisUnavailable(ServiceUnavailable):
    """Redis did not answer (in time)."""

    code = "redis_unavailable"


class EventLogUnavailable(ServiceUnavailable):
    """ClickHouse (server or chdb) failed or did not answer."""

    code = "event_log_unavailable"


class EventLogUnreachable(EventLogUnavailable):
    """The event log could not be reached at all, so nothing judged the batch: a writer keeps it
    for a later attempt and never takes it for a batch the log rejects (the event-log relay
    raises it when Redis refuses or fails its ``XADD``)."""
