"""The fast path of ``POST /v1/decide``: the happy path without Litestar's per-request machinery.

``/v1/decide`` runs on every page view, and Litestar's dependency injection, signature model,
guard call and response object cost more CPU than the decision itself. This route middleware
serves requests that are valid and authorised directly — strict msgspec decode, the same
:func:`~decision_api.routes.guards.authorize` check, the decision engine, msgspec encode — and
hands *everything else* to the regular handler with the body replayed: malformed or unknown
input, a missing or wrong key, rate limits, oversized bodies. Error answers therefore come from
one place (the regular route and :mod:`decision_api.problems`), and the OpenAPI document
describes the route as it is.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import msgspec
from litestar.types import ASGIApp, HTTPRequestEvent, Receive, ReceiveMessage, Scope, Send

from decision_api.auth import Scope as KeyScope
from decision_api.errors import TailorError
from decision_api.event_writer import now_ms
from decision_api.routes.guards import authorize
from decision_api.schemas import DecideRequest

_decoder = msgspec.json.Decoder(DecideRequest)
_encoder = msgspec.json.Encoder()
_SCOPES: tuple[KeyScope, ...] = ("decide",)
_JSON = (b"content-type", b"application/json")


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return HTTPRequestEvent(type="http.request", body=body, more_body=more)
        return await receive()

    return replayed


def _keys(scope: Scope) -> tuple[str | None, str | None]:
    header_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                header_key = text[7:].strip()
        elif name == b"x-api-key" and header_key is None:
            header_key = value.decode("latin-1")
    url_key = None
    query = scope.get("query_string", b"")
    if b"key=" in query:
        values = parse_qs(query.decode("latin-1")).get("key")
        url_key = values[0] if values else None
    return header_key, url_key


def fast_decide(app: ASGIApp) -> ASGIApp:
    """Route middleware for ``POST /v1/decide`` (see the module docstring)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        services: Any = scope["app"].state.services
        settings = services.settings.decisions
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await app(scope, _replay(b"".join(chunks), False, receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > settings.max_body_bytes:
                break
        body = b"".join(chunks)
        slow = _replay(body, more, receive)
        if more:
            await app(scope, slow, send)
            return
        try:
            request = _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            await app(scope, slow, send)
            return
        if len(request.placements) > settings.max_placements:
            await app(scope, slow, send)
            return
        header_key, url_key = _keys(scope)
        try:
            key_id = await authorize(services, _SCOPES, header_key, url_key)
        except TailorError:
            await app(scope, slow, send)
            return
        if key_id is not None:
            scope["state"]["api_key_id"] = key_id
        started = time.perf_counter()
        response = await services.engine.decide(
            request.unit_id, request.placements, request.context, request.consent, now_ms()
        )
        payload = _encoder.encode(response)
        start: Any = {
            "type": "http.response.start",
            "status": 200,
            "headers": [_JSON, (b"content-length", str(len(payload)).encode())],
        }
        await send(start)
        body_event: Any = {"type": "http.response.body", "body": payload, "more_body": False}
        await send(body_event)
        services.metrics.decision_latency.labels("decide").observe(time.perf_counter() - started)
        services.metrics.fast_path.inc()

    return middleware
