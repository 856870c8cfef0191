"""The fast path of ``POST /v1/decide``: the happy path without Litestar's per-request machinery.

``/v1/decide`` runs on every page view, and Litestar's routing, exception middleware, dependency
injection, signature model, guard call and response object cost more CPU than the decision
itself. The fast path serves requests that are valid and authorised directly — strict msgspec
decode, the same :func:`~decision_api.routes.guards.authorize` check, the decision engine,
msgspec encode — and hands *everything else* to the regular handler with the body replayed:
malformed or unknown input, a missing or wrong key, rate limits, oversized bodies. Error answers
therefore come from one place (the regular route and :mod:`decision_api.problems`), and the
OpenAPI document describes the route as it is.

It runs in two places:

- :class:`DecideFront`, in front of Litestar's whole handler stack (installed by
  :func:`install_front`): ``POST /v1/decide`` is recognised by its exact path before routing,
  and the request id (``X-Request-ID``) is handled here exactly as
  :class:`~decision_api.app.RequestIdMiddleware` does. Requests it does not take (another path,
  a CORS request with ``Origin``, an invalid ``Host``) go through the app untouched; requests it
  tried and handed over are marked so the route does not try again.
- :func:`fast_decide`, the route middleware of the decide handler, for requests that reach the
  route by another spelling of its path (``/v1/decide/``) or from a browser origin (CORS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
import structlog
from litestar import Litestar
from litestar._asgi.utils import is_valid_host
from litestar.middleware._internal.exceptions.middleware import ExceptionHandlerMiddleware
from litestar.types import ASGIApp, HTTPRequestEvent, Receive, ReceiveMessage, Scope, Send
from litestar.utils.scope.state import ScopeState

from decision_api.auth import Scope as KeyScope
from decision_api.errors import TailorError
from decision_api.event_writer import now_ms
from decision_api.routes.guards import authorize
from decision_api.schemas import DecideRequest

PATH = "/v1/decide"
TRIED = "tailor.fast_decide_tried"
"""Scope key set by :class:`DecideFront` on requests it handed to the app."""

_decoder = msgspec.json.Decoder(DecideRequest)
_encoder = msgspec.json.Encoder()
_SCOPES: tuple[KeyScope, ...] = ("decide",)
_JSON = (b"content-type", b"application/json")
_clear_log_context = structlog.contextvars.clear_contextvars
_bind_log_context = structlog.contextvars.bind_contextvars


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return HTTPRequestEvent(type="http.request", body=body, more_body=more)
        return await receive()

    return replayed


def _url_key(scope: Scope) -> str | None:
    query = scope.get("query_string", b"")
    if b"key=" in query:
        values = parse_qs(query.decode("latin-1")).get("key")
        return values[0] if values else None
    return None


def _keys(scope: Scope) -> tuple[str | None, str | None]:
    header_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                header_key = text[7:].strip()
        elif name == b"x-api-key" and header_key is None:
            header_key = value.decode("latin-1")
    return header_key, _url_key(scope)


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool, bool]:
    """The request body up to ``limit`` bytes: (body, more, disconnected)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False, True
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), more, False


def _decoded(body: bytes, max_placements: int) -> DecideRequest | None:
    """The request when the fast path may serve it (well-formed, within limits), else None."""
    try:
        request = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(request.placements) > max_placements:
        return None
    return request


class _Served:
    """Per-app objects the fast path reuses (metric children are looked up once)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.engine = services.engine
        self.settings = services.settings.decisions
        self.latency = services.metrics.decision_latency.labels("decide")
        self.fast_path = services.metrics.fast_path


def _served(scope: Scope, cache: list[_Served]) -> _Served:
    services = scope["app"].state.services
    if cache and cache[0].services is services:
        return cache[0]
    served = _Served(services)
    cache[:] = [served]
    return served


async def _decide(served: _Served, request: DecideRequest, public: bool) -> bytes:
    response = await served.engine.decide(
        request.unit_id,
        request.placements,
        request.context,
        request.consent,
        now_ms(),
        public=public,
    )
    return _encoder.encode(response)


async def _respond(
    served: _Served, send: Send, payload: bytes, headers: list[tuple[bytes, bytes]], started: float
) -> None:
    start: Any = {"type": "http.response.start", "status": 200, "headers": headers}
    await send(start)
    body_event: Any = {"type": "http.response.body", "body": payload, "more_body": False}
    await send(body_event)
    served.latency.observe(time.perf_counter() - started)
    served.fast_path.inc()


def _headers(payload: bytes) -> list[tuple[bytes, bytes]]:
    return [_JSON, (b"content-length", str(len(payload)).encode())]


def fast_decide(app: ASGIApp) -> ASGIApp:
    """Route middleware for ``POST /v1/decide`` (see the module docstring)."""
    cache: list[_Served] = []

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if TRIED in scope:
            await app(scope, receive, send)
            return
        served = _served(scope, cache)
        body, more, disconnected = await _read_body(receive, served.settings.max_body_bytes)
        if disconnected:
            await app(scope, _replay(body, False, receive), send)
            return
        slow = _replay(body, more, receive)
        request = None if more else _decoded(body, served.settings.max_placements)
        if request is None:
            await app(scope, slow, send)
            return
        header_key, url_key = _keys(scope)
        try:
            key = await authorize(served.services, _SCOPES, header_key, url_key)
        except TailorError:
            await app(scope, slow, send)
            return
        if key is not None:
            scope["state"]["api_key_id"] = key.key_id
        started = time.perf_counter()
        payload = await _decide(served, request, key is not None and key.public)
        await _respond(served, send, payload, _headers(payload), started)

    return middleware


class _Raise:
    """An ASGI app that raises a given exception (to hand it to Litestar's exception handling)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise self.exc


class DecideFront:
    """``POST /v1/decide`` served before Litestar's routing (see the module docstring).

    Args:
        app: The Litestar app (its services, CORS configuration, decide route).
        inner: Litestar's handler stack, which serves everything else.
        new_request_id: The id of a request without ``X-Request-ID`` (shared with
            :class:`~decision_api.app.RequestIdMiddleware`).
    """

    def __init__(self, app: Litestar, inner: ASGIApp, new_request_id: Callable[[], str]) -> None:
        self._app = app
        self._inner = inner
        self._new_request_id = new_request_id
        self._cors = app.cors_config is not None
        self._cache: list[_Served] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (Litestar has set ``app`` and ``state`` in the scope)."""
        http: Any = scope
        if http["type"] != "http" or http["path"] != PATH or http["method"] != "POST":
            await self._inner(scope, receive, send)
            return
        rid = None
        header_key = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if rid is None:
                    rid = value.decode("latin-1")[:64]
            elif name == b"authorization":
                text = value.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    header_key = text[7:].strip()
            elif name == b"x-api-key":
                if header_key is None:
                    header_key = value.decode("latin-1")
            elif (name == b"origin" and self._cors) or (
                name == b"host" and not is_valid_host(value)
            ):
                await self._inner(scope, receive, send)
                return
        if scope.get("root_path"):
            await self._inner(scope, receive, send)
            return
        if rid is None:
            rid = self._new_request_id()
        # As RequestIdMiddleware: the id is in the scope state (problem answers carry it) and in
        # every log line; the regular route reuses it when the request is handed over.
        scope["state"]["request_id"] = rid
        _clear_log_context()
        _bind_log_context(request_id=rid)
        served = _served(scope, self._cache)
        body, more, disconnected = await _read_body(receive, served.settings.max_body_bytes)
        handover: Any = scope
        handover[TRIED] = True
        if disconnected:
            await self._inner(scope, _replay(body, False, receive), send)
            return
        slow = _replay(body, more, receive)
        request = None if more else _decoded(body, served.settings.max_placements)
        if request is None:
            await self._inner(scope, slow, send)
            return
        try:
            key = await authorize(served.services, _SCOPES, header_key, _url_key(scope))
        except TailorError:
            await self._inner(scope, slow, send)
            return
        if key is not None:
            scope["state"]["api_key_id"] = key.key_id
        started = time.perf_counter()
        try:
            payload = await _decide(served, request, key is not None and key.public)
        except Exception as exc:
            await self._problem(scope, receive, send, exc)
            return
        headers = _headers(payload)
        headers.append((b"x-request-id", rid.encode("latin-1")))
        await _respond(served, send, payload, headers, started)

    async def _problem(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """Answer an unexpected error as the regular route would (Litestar's exception
        middleware, the route's exception handlers; no ``X-Request-ID`` header, as there)."""
        _, handler, *_ = self._app.asgi_router.handle_routing(path=PATH, method="POST")
        ScopeState.from_scope(scope).exception_handlers = handler.resolve_exception_handlers()
        scope["route_handler"] = handler
        await ExceptionHandlerMiddleware(app=_Raise(exc), debug=None)(scope, receive, send)


def install_front(app: Litestar, new_request_id: Callable[[], str]) -> None:
    """Put :class:`DecideFront` in front of the app's handler stack."""
    app.asgi_handler = DecideFront(app, app.asgi_handler, new_request_id)
