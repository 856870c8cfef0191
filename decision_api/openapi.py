r"""The published OpenAPI document: what a client or a validator may rely on.

Three promises, each pinned by ``tests/decision_api/test_openapi_document.py``:

- **Security is declared.** The document lists the ways to present an API key
  (:data:`SECURITY_SCHEMES`: ``Authorization: Bearer``, ``X-API-Key``, ``?key=`` on routes that
  accept a ``decide`` key, the report page's cookie), and every guarded operation says which of
  them it takes (``security``) and which scopes it needs: ``x-tailor-scopes`` (any of them; an
  ``admin`` key passes every guard) and a sentence at the end of its description. Operations
  without a guard (``/healthz``, ``/readyz``, ``/metrics``) declare no security.
- **Every answer validates.** The document is standard JSON Schema (2020-12, ECMA-262
  patterns): :func:`portable_document` rewrites the two things Litestar emits that standard
  validators read otherwise than the API behaves. Python's ``\A…\Z`` pattern anchors: ECMA-262
  reads ``\A`` as a literal ``A``, and its ``^…$`` means exactly what ``\A…\Z`` means in
  Python. And the ``{}`` that a length-limited variable tuple
  (``Annotated[tuple[str, ...], Meta(...)]``) leaves in its items' ``oneOf``: every string
  matches both branches, so no list of strings validated (a vw_cb policy's ``interactions``).
- **The document is served as built.** Every schema page and file under ``/schema`` renders the
  portable document; it is computed once, on the first request for it (building it takes most
  of a second, which ``create_app`` does not pay).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Router
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import Components, Operation, SecurityRequirement, SecurityScheme

from decision_api.routes.api_docs import OfflineRapidoc
from decision_api.routes.guards import ScopeGuard
from decision_api.routes.reports import COOKIE

BEARER = "bearer"
HEADER_KEY = "apiKeyHeader"
QUERY_KEY = "apiKeyQuery"
COOKIE_KEY = "reportCookie"

SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    BEARER: SecurityScheme(
        type="http",
        scheme="bearer",
        description="An API key as `Authorization: Bearer <key>`.",
    ),
    HEADER_KEY: SecurityScheme(
        type="apiKey",
        name="X-API-Key",
        security_scheme_in="header",
        description="An API key as `X-API-Key: <key>`.",
    ),
    QUERY_KEY: SecurityScheme(
        type="apiKey",
        name="key",
        security_scheme_in="query",
        description=(
            "An API key as `?key=<key>`, for the browser snippet (`sendBeacon` sets no headers): "
            "only on routes that accept a `decide` key, and only for a key holding `decide` "
            "and nothing else (403 otherwise)."
        ),
    ),
    COOKIE_KEY: SecurityScheme(
        type="apiKey",
        name=COOKIE,
        security_scheme_in="cookie",
        description="The report page's cookie, set after a visit with `?key=`.",
    ),
}
"""The ways a request presents an API key (see :mod:`decision_api.routes.guards`)."""

SCOPES_EXTENSION = "x-tailor-scopes"


def openapi_config(*, title: str, version: str, description: str, path: str) -> OpenAPIConfig:
    """The app's OpenAPI configuration: the key schemes declared, the document and its offline
    viewer (:class:`~decision_api.routes.api_docs.OfflineRapidoc`, at ``/schema``) rendering the
    :func:`portable_document`."""
    pages: list[OpenAPIRenderPlugin] = [
        OfflineRapidoc(),
        JsonRenderPlugin(),
        YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"]),
    ]
    return OpenAPIConfig(
        title=title,
        version=version,
        path=path,
        description=description,
        components=Components(security_schemes=dict(SECURITY_SCHEMES)),
        render_plugins=[PortableRender(page) for page in pages],
    )


class PortableRender(OpenAPIRenderPlugin):
    """One of Litestar's schema pages or files, rendering the :func:`portable_document`.

    Litestar builds the document's dict once per app and hands every page the same object, so
    each page converts it once and keeps the result.
    """

    def __init__(self, inner: OpenAPIRenderPlugin) -> None:
        super().__init__(path=inner.paths, media_type=inner.media_type)
        self._inner = inner
        self._source: dict[str, Any] | None = None
        self._portable: dict[str, Any] = {}

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """Render the inner page or file from the portable document."""
        if self._source is not openapi_schema:
            self._portable = portable_document(openapi_schema)
            self._source = openapi_schema
        return self._inner.render(request, self._portable)

    def receive_router(self, router: Router) -> None:
        """Let the inner page add its own routes (Swagger's OAuth2 redirect)."""
        self._inner.receive_router(router)


_PY_START = re.compile(r"\A\\A")
_PY_END = re.compile(r"(?<!\\)\\Z\Z")


def ecma_pattern(pattern: str) -> str:
    """``pattern`` with Python's whole-string anchors as ECMA-262 ones (``\\A`` → ``^``,
    ``\\Z`` → ``$``); equivalent, since ECMA-262's ``$`` (no ``m`` flag) never matches before a
    trailing newline."""
    return _PY_END.sub("$", _PY_START.sub("^", pattern))


def portable_document(node: Any) -> Any:
    """A copy of an OpenAPI document (or part of one) that standard validators read as the API
    behaves: ECMA-262 pattern anchors, and no ``{}`` in an array's ``items.oneOf``."""
    if isinstance(node, list):
        return [portable_document(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: portable_document(value) for key, value in node.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = ecma_pattern(out["pattern"])
    items = out.get("items")
    if isinstance(items, dict) and isinstance(items.get("oneOf"), list):
        kept = [choice for choice in items["oneOf"] if choice != {}]
        if kept and len(kept) < len(items["oneOf"]):
            rest = {k: v for k, v in items.items() if k != "oneOf"}
            out["items"] = {**rest, **kept[0]} if len(kept) == 1 else {**rest, "oneOf": kept}
    return out


@functools.cache
def scoped_operation(scopes: tuple[str, ...]) -> type[Operation]:
    """An :class:`Operation` carrying ``x-tailor-scopes: scopes`` (one class per scope set)."""

    @dataclass
    class ScopedOperation(Operation):
        tailor_scopes: list[str] = field(
            default_factory=lambda: list(scopes), metadata={"alias": SCOPES_EXTENSION}
        )

    return ScopedOperation


def scope_sentence(scopes: Sequence[str]) -> str:
    """The description's last sentence: which keys may call the operation."""
    names = " or ".join(f"`{scope}`" for scope in scopes)
    return f"Requires an API key with the {names} scope (an `admin` key passes every scope)."


def _requirements(guard: ScopeGuard) -> list[SecurityRequirement]:
    requirements: list[SecurityRequirement] = [{BEARER: []}, {HEADER_KEY: []}]
    if guard.url_key:
        requirements.append({QUERY_KEY: []})
    if guard.cookie is not None:
        requirements.append({COOKIE_KEY: []})
    return requirements


def document_security(app: Litestar) -> None:
    """Declare on every guarded operation how a key is presented and which scopes it needs.

    Reads each handler's :class:`ScopeGuard` (``require(...)`` or the report page's), so the
    document says what the guard enforces. Call before the document is first built
    (``create_app`` does).
    """
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            guards = [g for g in handler.resolve_guards() if isinstance(g, ScopeGuard)]
            if not guards:
                continue
            guard = guards[0]
            handler.security = _requirements(guard)
            handler.operation_class = scoped_operation(guard.scopes)
            doc = inspect.getdoc(handler.fn) or ""
            handler.description = "\n\n".join(filter(None, (doc, scope_sentence(guard.scopes))))
