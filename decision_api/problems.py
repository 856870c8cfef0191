"""One place that turns every error into an RFC 9457 problem-details response.

Validation errors keep msgspec's ``$.field`` path in ``errors[].field``; Redis failures become
503 ``redis_unavailable``; anything unexpected is a 500 with a request id and no internals.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import RedisError

from experiments.errors import ExperimentError
from tailor_contract.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    RedisUnavailable,
    ServiceUnavailable,
    TailorError,
)

log = structlog.get_logger("tailor.problems")

# "... - at `$.a.b`", or for a dict key "... - at `key` in `$.context`" (the key's mapping).
_PATH = re.compile(r" - at `(?:key` in `)?(\$[^`]*)`")
# Validators name the field at the start of their message: "variants[1].key: duplicate ...".
_LEADING_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): (.+)$", re.DOTALL)
_UNKNOWN_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]+)`")
PROBLEM_TYPE = "https://tailor.dev/problems/"


class FieldError(msgspec.Struct, kw_only=True):
    """One offending field."""

    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem-details body."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] = msgspec.field(default_factory=list)
    request_id: str | None = None


def _response(problem: Problem, headers: dict[str, str] | None = None) -> Response[Problem]:
    return Response(
        content=problem,
        status_code=problem.status,
        media_type="application/problem+json",
        headers=headers,
    )


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    rid = request.scope.get("state", {}).get("request_id")
    return rid if isinstance(rid, str) else None


def _route(request: Request[Any, Any, Any]) -> str:
    """The route template (``/v1/units/{unit_id:str}``), never the raw path: paths carry unit
    ids, which are not logged."""
    template = request.scope.get("path_template")
    return f"{request.method} {template}" if isinstance(template, str) else request.method


def field_of(message: str, base: str = "$") -> tuple[str, str]:
    """Split a msgspec error message into (``$.path``, message without the path).

    A validator's message that starts with ``field: ...`` names a field below ``base``.
    """
    match = _PATH.search(message)
    if match is not None:
        base = match.group(1)
        message = message[: match.start()] + message[match.end() :]
    leading = _LEADING_FIELD.match(message)
    if leading is not None:
        return f"{base}.{leading.group(1)}", leading.group(2)
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown is not None:
        return f"{base}.{unknown.group(1)}", message
    return base, message


def from_validation_error(exc: msgspec.ValidationError | ValueError) -> InvalidInput:
    """An :class:`InvalidInput` naming the field msgspec (or a validator) complained about."""
    path, message = field_of(str(exc))
    return InvalidInput(message, field=path)


def tailor_error_handler(request: Request[Any, Any, Any], exc: TailorError) -> Response[Problem]:
    """Render a Tailor error (a backend outage is also logged, with the same safe detail)."""
    if isinstance(exc, ServiceUnavailable) and not isinstance(exc, RedisUnavailable):
        log.warning("backend_unavailable", code=exc.code, error=exc.detail, route=_route(request))
    errors = [FieldError(field=exc.field, message=exc.detail)] if exc.field else []
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return _response(
        Problem(
            type=PROBLEM_TYPE + exc.code,
            title=exc.title,
            status=exc.status_code,
            detail=exc.detail,
            code=exc.code,
            errors=errors,
            request_id=_request_id(request),
        ),
        headers,
    )


def experiment_error_handler(
    request: Request[Any, Any, Any], exc: ExperimentError
) -> Response[Problem]:
    """Render an experiment-domain error with the matching HTTP status."""
    mapped: TailorError
    # Domain errors name plain fields ("key", "traffic"); the wire speaks JSON paths ("$.key").
    field = exc.field if exc.field is None or exc.field.startswith("$") else "$." + exc.field
    if exc.kind == "not_found":
        mapped = NotFound(exc.detail, field=field)
    elif exc.kind == "conflict":
        mapped = Conflict(exc.detail, field=field)
    else:
        mapped = InvalidInput(exc.detail, field=field or "$")
    return tailor_error_handler(request, mapped)


def validation_handler(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[Problem]:
    """Litestar's request validation (body, path, query) as 422 (400 for unparseable JSON)."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        message = str(item.get("message", "")) if isinstance(item, dict) else str(item)
        key = item.get("key") if isinstance(item, dict) else None
        source = item.get("source") if isinstance(item, dict) else None
        base = "$"
        if key and str(key) != "data":
            source = getattr(source, "value", source)  # Litestar's ParamType enum: "path"
            base = "$." + str(key) if source in (None, "body") else f"{source}:{key}"
        if key == "data" and message == "'data'":
            # Litestar reports a missing body as a KeyError on its ``data`` argument.
            errors.append(FieldError(field="$", message="a JSON request body is required"))
            continue
        path, clean = field_of(message, base)
        errors.append(FieldError(field=path, message=clean.strip()))
    malformed = "JSON is malformed" in str(exc.detail) or any(
        "JSON is malformed" in e.message
        or "Input data was truncated" in e.message
        or e.message == "a JSON request body is required"
        for e in errors
    )
    status = 400 if malformed else 422
    detail = errors[0].message if errors else str(exc.detail)
    return _response(
        Problem(
            type=PROBLEM_TYPE + ("bad_request" if malformed else "invalid_input"),
            title="Bad request" if malformed else "Invalid input",
            status=status,
            detail=detail,
            code="bad_request" if malformed else "invalid_input",
            errors=errors,
            request_id=_request_id(request),
        )
    )


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    """Litestar's own HTTP errors (404 route, 405 method, 413 body size) as problem details."""
    code = {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(exc.status_code, "http_error")
    # 400 (unparseable JSON) and 413 (body over the limit) are about the body as a whole.
    body_level = exc.status_code in (400, 413)
    errors = [FieldError(field="$", message=str(exc.detail))] if body_level else []
    return _response(
        Problem(
            type=PROBLEM_TYPE + code,
            title=code.replace("_", " ").capitalize(),
            status=exc.status_code,
            detail=str(exc.detail),
            code=code,
            errors=errors,
            request_id=_request_id(request),
        ),
        dict(exc.headers or {}),
    )


def redis_error_handler(request: Request[Any, Any, Any], exc: RedisError) -> Response[Problem]:
    """A write that needs Redis while Redis is down: 503, retry later."""
    services = getattr(request.app.state, "services", None)
    warn = services.warn if services is not None else log
    warn.warning("redis_unavailable", error=str(exc), route=_route(request))
    return tailor_error_handler(request, RedisUnavailable("Redis is unavailable; retry later"))


def nesting_error_handler(
    request: Request[Any, Any, Any], exc: RecursionError
) -> Response[Problem]:
    """JSON nested so deeply that decoding (or encoding) it exhausts the stack: 400."""
    return tailor_error_handler(request, BadRequest("JSON is nested too deeply", field="$"))


def internal_problem(request_id: str | None, *, route: str, exc: Exception) -> Problem:
    """Log an unexpected error with its traceback and return its 500 problem (no internals)."""
    log.exception("unhandled_error", route=route, error_type=type(exc).__name__)
    return Problem(
        type=PROBLEM_TYPE + "internal_error",
        title="Internal error",
        status=500,
        detail="internal error; the request id identifies it in the logs",
        code="internal_error",
        request_id=request_id,
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Anything unexpected: logged with its traceback, answered without internals."""
    return _response(internal_problem(_request_id(request), route=_route(request), exc=exc))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    TailorError: tailor_error_handler,
    ExperimentError: experiment_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_error_handler,
    RedisError: redis_error_handler,
    RecursionError: nesting_error_handler,
    Exception: internal_error_handler,
}


PROBLEM_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 503)
_UNDOCUMENTED_PATHS = ("/healthz", "/readyz", "/metrics", "/schema")


def document_problems(app: Litestar) -> None:
    """Declare the problem-details answers in the OpenAPI document of every API operation.

    Every ``/v1`` operation may answer 400 (malformed JSON), 401/403/429 (key, scope, rate
    limit), 404/409 (missing or conflicting resource), 413 (body size), 422 (invalid field) and
    503 (a backend is down), always as ``application/problem+json``. Done once here rather than
    on each handler, so a new route cannot forget it.
    """
    spec = ResponseSpec(
        data_container=Problem,
        description="A problem-details body (RFC 9457) naming the offending field",
        media_type="application/problem+json",
        generate_examples=False,
    )
    for route in app.routes:
        if route.path.startswith(_UNDOCUMENTED_PATHS):
            continue
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler) and handler.http_methods != {"OPTIONS"}:
                handler.responses = {
                    **{status: spec for status in PROBLEM_STATUSES},
                    **(handler.responses or {}),
                }
