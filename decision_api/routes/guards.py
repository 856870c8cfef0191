"""Route guards: API-key scopes and per-key rate limits.

Which scope each route needs (``admin`` passes every guard):

========================================  =========================
route                                     scopes (any of)
========================================  =========================
``POST /v1/decide``                       decide
``POST /v1/outcomes``, ``/batch``         decide, ingest
``POST /v1/events``                       decide (browser events only), ingest
``GET /v1/definitions``                   decide (SDK local evaluation)
``POST /v1/exposures/batch``              decide, ingest (SDK local evaluation)
``PUT /v1/units/{id}/features``           ingest
``PUT /v1/units/{id}/consent``            ingest
``GET /v1/units/{id}/export``             admin
``DELETE /v1/units/{id}``                 admin
``/v1/experiments...``                    admin
``/v1/keys...``, ``/v1/kill-switch``      admin
reports                                   report
``/healthz``, ``/readyz``, ``/metrics``   none (operations)
========================================  =========================

``decide`` keys are safe to embed in a web page: they can ask for decisions and report what the
visitor did, never read or change stored data. A key holding neither ``ingest`` nor ``admin`` is
*public* (:attr:`~decision_api.access.keys.ApiKey.public`, marked ``public_key`` in the request's
scope state): its events are limited to browser events without value or time, and its decisions say
``reason: default`` wherever the true reason (a stored opt-out, a cap, profile targeting) would tell
it something stored about the unit.

On routes that accept ``decide``, a key may also come as the ``?key=`` query parameter, for the
browser snippet: ``navigator.sendBeacon`` cannot set headers, and a header-free ``text/plain``
request skips the CORS preflight round trip. URLs end up in logs and caches, so a key presented
that way must hold the ``decide`` scope and nothing else (403 otherwise).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from decision_api.access.keys import ApiKey, Scope, current_actor, presented_key
from tailor_contract.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def connection_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The API key a request carries (Bearer token or ``X-API-Key``)."""
    headers = connection.headers
    return presented_key(headers.get("authorization"), headers.get("x-api-key"))


URL_KEY_SCOPES: frozenset[str] = frozenset({"decide"})
"""The only scopes a key passed as ``?key=`` may hold."""


async def authorize(
    services: Any,
    scopes: tuple[Scope, ...],
    header_key: str | None,
    url_key: str | None,
) -> ApiKey | None:
    """Check a request's key against ``scopes`` and its rate limit; returns the key.

    Returns None when the API is open (no key configured). Raises 401 without a known key, 403
    without the scope (or for a non-``decide`` key passed in the URL), 429 over the rate limit,
    and 503 when the key cannot be checked because stored keys are not loaded yet — bootstrap
    keys keep working while Redis is down.
    """
    ring = services.keys
    if ring.open:
        return None
    presented = header_key
    from_url = False
    if not presented and url_key and "decide" in scopes:
        presented, from_url = url_key, True
    if not presented:
        if not ring.ready:
            raise ServiceUnavailable("API keys are not loaded yet (Redis unavailable); retry")
        raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
    key = ring.lookup(presented)
    if key is None and not ring.ready:
        raise ServiceUnavailable("API keys are not loaded yet (Redis unavailable); retry")
    if key is None or key.revoked:
        raise Unauthorized("unknown or revoked API key")
    if from_url and not key.scopes <= URL_KEY_SCOPES:
        raise Forbidden(
            "a key passed in the URL (?key=) may hold only the 'decide' scope; "
            "send other keys in the Authorization header"
        )
    if not key.allows_any(scopes):
        names = " or ".join(repr(s) for s in scopes)
        raise Forbidden(f"this API key lacks the {names} scope")
    current_actor.set(key.key_id)
    wait = await services.rate_limiter.acquire(key.key_id, key.rate_per_s, key.burst)
    if wait is not None:
        services.metrics.rate_limited.inc()
        raise RateLimited(
            f"API key {key.key_id} is over its rate limit; retry later", retry_after_s=wait
        )
    found: ApiKey = key
    return found


class ScopeGuard:
    """A route guard that says what it admits, so the OpenAPI document can tell clients.

    Attributes:
        scopes: The scopes admitted (any of them; ``admin`` passes every guard).
        url_key: Whether the key may also come as the ``?key=`` query parameter.
        cookie: The cookie the key may also come in (the report page's), or None.
    """

    __slots__ = ("_check", "cookie", "scopes", "url_key")

    def __init__(
        self,
        scopes: tuple[Scope, ...],
        check: Guard,
        *,
        url_key: bool,
        cookie: str | None = None,
    ) -> None:
        if not scopes:
            raise ValueError("a scope guard needs at least one scope")
        self.scopes = scopes
        self.url_key = url_key
        self.cookie = cookie
        self._check = check

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        """Admit the request or raise 401/403/429/503 (see :func:`authorize`)."""
        await self._check(connection, handler)


def require(*scopes: Scope) -> ScopeGuard:
    """A guard admitting keys holding any of ``scopes`` (or ``admin``), within their rate limit.

    401 without a (known, unrevoked) key, 403 with a key that lacks the scopes, 429 with
    ``Retry-After`` when the key is over its rate limit. With no key configured anywhere the
    API is open (development mode) and the guard admits everything. Routes accepting
    ``decide`` also take the key as ``?key=`` (see the module docstring).
    """
    if not scopes:
        raise ValueError("require() needs at least one scope")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = await authorize(
            connection.app.state.services,
            scopes,
            connection_key(connection),
            connection.query_params.get("key"),
        )
        if key is not None:
            connection.scope["state"]["api_key_id"] = key.key_id
            connection.scope["state"]["public_key"] = key.public

    return ScopeGuard(scopes, guard, url_key="decide" in scopes)


def is_public(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the request came with a public key (see :attr:`ApiKey.public`); False in open
    (development) mode."""
    return bool(connection.scope["state"].get("public_key", False))
