"""The web UI at ``/ui``: experiments, their lifecycle, the kill switch, reports and API keys.

The UI is a static page (``decision_api/ui/static``: HTML, vanilla JavaScript and CSS, no build
step, no CDN) that drives the public admin API from the browser. The page itself holds no data
and needs no key, like ``/sdk/tailor.js``; everything it shows or changes goes through the API's
own guards:

* **Login.** The user types an API key into the page's form. The page sends it once to
  ``POST /ui/session`` as ``Authorization: Bearer``; a known key with the ``report`` or ``admin``
  scope gets back its id and scopes (401/403 otherwise). The page keeps the key in
  ``sessionStorage`` — it lives as long as the tab, is never in a URL, and is sent as
  ``Authorization: Bearer`` with every API call. Writes (experiments, kill switch, keys) need the
  ``admin`` scope, which the API checks on each call; a ``report`` key can only open reports.
* **Reports.** A link cannot carry a header, so the same ``POST /ui/session`` also sets the report
  page's cookie (``tailor_report_key``: ``HttpOnly``, ``SameSite=Strict``, path ``/reports``, 8
  hours, see :mod:`decision_api.routes.reports`): the UI's links to ``/reports/{key}`` open
  without the key in the address bar. ``DELETE /ui/session`` (log out) clears it.
* **Development mode** (no key configured): ``POST /ui/session`` without a key answers
  ``open: true`` and the page skips the login form.

The UI never takes a key as ``?key=``: admin keys in URLs end up in access logs and histories.

``GET /`` redirects to ``/ui``. ``GET /ui/static/{name}`` serves the page's assets and the
vendored API-docs viewer (:mod:`decision_api.routes.api_docs`), with a short public cache
lifetime. The page is sent with a ``Content-Security-Policy`` that lets it load and call nothing
but its own origin.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect

from decision_api.routes.guards import connection_key, require
from decision_api.routes.reports import COOKIE, COOKIE_MAX_AGE_S
from decision_api.services import Services
from tailor_contract.errors import NotFound

__all__ = [
    "ASSETS",
    "STATIC_PATH",
    "UiSession",
    "end_session",
    "root",
    "start_session",
    "ui_asset",
    "ui_asset_bytes",
    "ui_page",
]

STATIC_PATH = "/ui/static"
ASSETS: dict[str, str] = {
    "ui.js": "text/javascript",
    "ui.css": "text/css",
    "rapidoc-min.js": "text/javascript",
}
"""Every file ``/ui/static/{name}`` serves, with its media type (anything else is a 404)."""

CACHE = "public, max-age=300"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class UiSession(msgspec.Struct, kw_only=True):
    """``POST /ui/session``: who the presented key is; ``open`` in development mode."""

    key_id: str | None
    scopes: list[str]
    open: bool = False


@functools.cache
def ui_asset_bytes(name: str) -> bytes:
    """The bytes of one shipped UI file (``index.html`` or one of :data:`ASSETS`).

    Raises:
        KeyError: for any other name.
    """
    if name != "index.html" and name not in ASSETS:
        raise KeyError(name)
    return resources.files("decision_api.ui").joinpath("static", name).read_bytes()


@get("/", include_in_schema=False)
async def root() -> Redirect:
    """``/`` leads to the UI."""
    return Redirect(path="/ui", status_code=302)


@get("/ui", include_in_schema=False, media_type=MediaType.HTML)
async def ui_page() -> Response[bytes]:
    """The UI's single page (no data in it: the page asks the API with the user's key)."""
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP}
    return Response(ui_asset_bytes("index.html"), media_type=MediaType.HTML, headers=headers)


@get(STATIC_PATH + "/{name:str}", include_in_schema=False)
async def ui_asset(name: FromPath[str]) -> Response[bytes]:
    """The UI's script and style sheet, and the API-docs viewer."""
    if name not in ASSETS:
        raise NotFound(f"no UI asset {name!r}")
    return Response(ui_asset_bytes(name), media_type=ASSETS[name], headers={"Cache-Control": CACHE})


def _report_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path="/reports",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@post("/ui/session", status_code=200, include_in_schema=False, guards=[require("report")])
async def start_session(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[UiSession]:
    """Check the UI's key (``report`` or ``admin`` scope) and set the report pages' cookie."""
    presented = connection_key(request)
    key = services.keys.lookup(presented) if presented else None
    if presented is None or key is None:  # admitted without a key: development mode
        return Response(UiSession(key_id=None, scopes=["admin"], open=True))
    session = UiSession(key_id=key.key_id, scopes=sorted(key.scopes))
    return Response(session, cookies=[_report_cookie(request, presented, COOKIE_MAX_AGE_S)])


@delete("/ui/session", status_code=204, include_in_schema=False, guards=[require("report")])
async def end_session(request: Request[Any, Any, Any]) -> Response[None]:
    """Log out: clear the report pages' cookie (the page forgets its key itself)."""
    return Response(None, status_code=204, cookies=[_report_cookie(request, "", 0)])
