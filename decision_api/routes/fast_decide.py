"""The fast path of ``POST /v1/decide`` and ``POST /v1/outcomes``: the happy path without
Litestar's per-request machinery.

``/v1/decide`` runs on every page view and ``/v1/outcomes`` on every click, and Litestar's
routing, exception middleware, dependency injection, signature model, guard call and response
object cost more CPU than the decision (or the outcome) itself. The fast path serves requests
that are valid and authorised directly — strict msgspec decode, the same
:func:`~decision_api.routes.guards.authorize` check, the decision engine, msgspec encode — and
hands *everything else* to the regular handler with the body replayed:
malformed or unknown input, a missing or wrong key, rate limits, oversized bodies. Error answers
therefore come from one place (the regular route and :mod:`decision_api.problems`), and the
OpenAPI document describes the route as it is.

It runs in two places, both through public interfaces only (the ASGI protocol and Litestar's
route middleware; no private module of Litestar):

- :class:`DecideFront`, an ASGI app that wraps the whole Litestar app (what the server runs,
  :func:`~decision_api.app.create_asgi_app`): ``POST /v1/decide`` and ``POST /v1/outcomes`` are
  recognised by their exact paths before Litestar sees the request, and the request id
  (``X-Request-ID``) is handled here exactly as :class:`~decision_api.app.RequestIdMiddleware`
  does. Requests it does not take
  (another path, a CORS request with ``Origin``, an invalid ``Host``) go to the app untouched;
  requests it tried and handed over are marked so the route does not try again. Anything else
  (lifespan, attributes such as ``state``) is the wrapped app's.
- :func:`fast_decide`, the route middleware of the decide handler, for requests that reach the
  route by another spelling of its path (``/v1/decide/``) or from a browser origin (CORS).

An outcome is served fast when its body decodes strictly and its key holds ``decide`` or
``ingest``; the same :func:`~decision_api.routes.outcomes.accept_outcomes` as the route logs and
joins it and the answer is the route's 202 :class:`~tailor_contract.wire.OutcomeAccepted`. An
outcome that function refuses (a ``ts`` outside the accepted window) is refused before anything
is logged, so it is handed over too, and the route answers the problem.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
import structlog
from litestar import Litestar
from litestar.types import ASGIApp, HTTPRequestEvent, Receive, ReceiveMessage, Scope, Send

from decision_api.access.keys import Scope as KeyScope
from decision_api.access.keys import presented_key
from decision_api.problems import internal_problem
from decision_api.routes.guards import authorize
from decision_api.routes.outcomes import accept_outcomes
from event_log.writer import now_ms
from tailor_contract.errors import TailorError
from tailor_contract.wire import DecideRequest, OutcomeRequest

PATH = "/v1/decide"
OUTCOMES_PATH = "/v1/outcomes"
TRIED = "tailor.fast_decide_tried"
"""Scope key set by :class:`DecideFront` on requests it handed to the app."""

_decoder = msgspec.json.Decoder(DecideRequest)
_outcome_decoder = msgspec.json.Decoder(OutcomeRequest)
_encoder = msgspec.json.Encoder()
_SCOPES: tuple[KeyScope, ...] = ("decide",)
_OUTCOME_SCOPES: tuple[KeyScope, ...] = ("decide", "ingest")
_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", b"application/problem+json")
_VALID_HOST = re.compile(rb"\A[0-9A-Za-z!$&'()*+,;=\-._~:\[\]@%]*\Z")
"""RFC 3986 host characters; a request with any other ``Host`` goes to the app (which refuses
it as Litestar does)."""
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
    headers = {n: v for n, v in scope["headers"] if n in (b"authorization", b"x-api-key")}
    return presented_key(headers.get(b"authorization"), headers.get(b"x-api-key")), _url_key(scope)


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


def _decoded_outcome(body: bytes) -> OutcomeRequest | None:
    """The outcome when the fast path may serve it (well-formed), else None."""
    try:
        return _outcome_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def _outcome(served: _Served, request: OutcomeRequest) -> bytes:
    """Accept one outcome; raises ``TailorError`` (e.g. ``ts`` out of range) before logging."""
    return _encoder.encode(await accept_outcomes(served.services, [request]))


class _Served:
    """Per-app objects the fast path reuses (metric children are looked up once)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.engine = services.engine
        self.settings = services.settings.decisions
        self.latency = services.metrics.decision_latency.labels("decide")
        self.fast_path = services.metrics.fast_path
        self.fast_outcomes = services.metrics.fast_outcomes


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
        exclude=request.exclude,
        explain=request.explain,
        slates=request.slates,
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


def _scan_headers(scope: Scope, cors: bool) -> tuple[str | None, bytes | None, bytes | None] | None:
    """(request id, Authorization, X-API-Key) of a request the front may take, or None when it
    goes to the app (a CORS request, an invalid ``Host``)."""
    rid = None
    header_key = None
    api_key = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if rid is None:
                rid = value.decode("latin-1")[:64]
        elif name == b"authorization":
            header_key = value
        elif name == b"x-api-key":
            if api_key is None:
                api_key = value
        elif (name == b"origin" and cors) or (name == b"host" and _VALID_HOST.match(value) is None):
            return None
    return rid, header_key, api_key


class DecideFront:
    """``POST /v1/decide`` and ``POST /v1/outcomes`` served before Litestar sees the request (see
    the module docstring).

    Args:
        app: The Litestar app (its services, CORS configuration, decide route), which serves
            everything else and is reachable through this object's attributes.
        new_request_id: The id of a request without ``X-Request-ID`` (shared with
            :class:`~decision_api.app.RequestIdMiddleware`).
    """

    def __init__(self, app: Litestar, new_request_id: Callable[[], str]) -> None:
        self.app = app
        self._new_request_id = new_request_id
        self._cors = app.cors_config is not None
        self._cache: list[_Served] = []

    def __getattr__(self, name: str) -> Any:
        """The wrapped app's attributes (``state``, ``openapi_schema``, ...)."""
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        http: Any = scope
        if http["type"] != "http" or http["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = http["path"]
        if path not in (PATH, OUTCOMES_PATH):
            await self.app(scope, receive, send)
            return
        scanned = _scan_headers(scope, self._cors)
        if scanned is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        rid, header_key, api_key = scanned
        if rid is None:
            rid = self._new_request_id()
        # As RequestIdMiddleware: the id is in the scope state (problem answers carry it) and in
        # every log line; the regular route reuses it when the request is handed over.
        state: Any = scope.setdefault("state", {})
        state["request_id"] = rid
        _clear_log_context()
        _bind_log_context(request_id=rid)
        services = self.app.state.services
        served = self._cache[0] if self._cache and self._cache[0].services is services else None
        if served is None:
            served = _Served(services)
            self._cache[:] = [served]
        body, more, disconnected = await _read_body(receive, served.settings.max_body_bytes)
        handover: Any = scope
        handover[TRIED] = True
        if disconnected or more:
            await self.app(scope, _replay(body, more, receive), send)
            return
        slow = _replay(body, False, receive)
        presented = presented_key(header_key, api_key)
        if path == PATH:
            request = _decoded(body, served.settings.max_placements)
            if request is None:
                await self.app(scope, slow, send)
                return
            await self._decide(scope, slow, send, served, request, (presented, rid))
            return
        outcome = _decoded_outcome(body)
        if outcome is None:
            await self.app(scope, slow, send)
            return
        await self._outcome(scope, slow, send, served, outcome, (presented, rid))

    async def _admitted(
        self, scope: Scope, served: _Served, scopes: tuple[KeyScope, ...], presented: str | None
    ) -> tuple[bool, bool]:
        """(admitted, public key) for the request's key; not admitted: hand it over."""
        try:
            key = await authorize(served.services, scopes, presented, _url_key(scope))
        except TailorError:
            return False, False
        if key is None:
            return True, False
        state: Any = scope["state"]
        state["api_key_id"] = key.key_id
        state["public_key"] = key.public
        return True, key.public

    async def _decide(
        self,
        scope: Scope,
        slow: Receive,
        send: Send,
        served: _Served,
        request: DecideRequest,
        caller: tuple[str | None, str],
    ) -> None:
        presented, rid = caller
        admitted, public = await self._admitted(scope, served, _SCOPES, presented)
        if not admitted:
            await self.app(scope, slow, send)
            return
        started = time.perf_counter()
        try:
            payload = await _decide(served, request, public)
        except Exception as exc:  # answered as the route's exception handlers answer it
            await _respond_problem(send, rid, PATH, exc)
            return
        headers = _headers(payload)
        headers.append((b"x-request-id", rid.encode("latin-1")))
        await _respond(served, send, payload, headers, started)

    async def _outcome(
        self,
        scope: Scope,
        slow: Receive,
        send: Send,
        served: _Served,
        request: OutcomeRequest,
        caller: tuple[str | None, str],
    ) -> None:
        presented, rid = caller
        admitted, _ = await self._admitted(scope, served, _OUTCOME_SCOPES, presented)
        if not admitted:
            await self.app(scope, slow, send)
            return
        try:
            payload = await _outcome(served, request)
        except TailorError:
            # Refused before anything was logged (a ``ts`` out of range): the regular route
            # refuses it again and answers the problem.
            await self.app(scope, slow, send)
            return
        except Exception as exc:  # answered as the route's exception handlers answer it
            await _respond_problem(send, rid, OUTCOMES_PATH, exc)
            return
        await _respond_status(send, 202, payload, [_JSON, (b"x-request-id", rid.encode("latin-1"))])
        served.fast_outcomes.inc()


async def _respond_problem(send: Send, rid: str, path: str, exc: Exception) -> None:
    problem = internal_problem(rid, route="POST " + path, exc=exc)
    await _respond_status(send, 500, msgspec.json.encode(problem), [_PROBLEM])


async def _respond_status(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    length = (b"content-length", str(len(payload)).encode())
    start: Any = {"type": "http.response.start", "status": status, "headers": [*headers, length]}
    await send(start)
    body_event: Any = {"type": "http.response.body", "body": payload, "more_body": False}
    await send(body_event)
