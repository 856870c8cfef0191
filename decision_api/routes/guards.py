"""Route guards: API-key scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from decision_api.auth import Scope, current_actor
from decision_api.errors import Forbidden, Unauthorized

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The API key a request carries (Bearer token or ``X-API-Key``)."""
    header = connection.headers.get("authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return connection.headers.get("x-api-key")


def require(scope: Scope) -> Guard:
    """A guard admitting keys with ``scope`` (or ``admin``): 401 without a key, 403 without it."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        services = connection.app.state.services
        ring = services.keys
        if ring.open:
            return
        presented = presented_key(connection)
        if not presented:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
        key = ring.lookup(presented)
        if key is None or key.revoked:
            raise Unauthorized("unknown or revoked API key")
        if not key.allows(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        connection.scope["state"]["api_key_id"] = key.key_id
        current_actor.set(key.key_id)

    return guard
