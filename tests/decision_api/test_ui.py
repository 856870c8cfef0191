"""The web UI's server side: ``/`` leads to it, its files hold no other host, its session
checks the key and hands the report pages their cookie; ``/schema`` needs no CDN."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.routes.ui import ASSETS
from decision_api.settings import AuthSettings, Settings

Client = AsyncTestClient[Litestar]
ADMIN, REPORT, DECIDE = "ui-admin-secret", "ui-report-secret", "ui-decide-secret"
STATIC = Path(__file__).resolve().parents[2] / "decision_api" / "ui" / "static"
URL = re.compile(r"""(?:https?:)?//([A-Za-z0-9.-]+(?::\d+)?)""")
# Hosts a shipped file may *name* without loading anything from them: the licence headers of
# the vendored viewer and the XML namespace of inline SVG. Loading is checked in a browser
# (tests/integration/test_ui_browser.py), where no request may leave the API's own host.
NAMED_ONLY = {"www.w3.org"}


@pytest.fixture(scope="module")
async def keyed(shared_settings: Settings) -> AsyncIterator[Client]:
    """An app with admin, report and decide keys."""
    settings = msgspec.structs.replace(
        shared_settings,
        auth=AuthSettings(api_keys=f"{ADMIN}:admin,{REPORT}:report,{DECIDE}:decide"),
    )
    async with AsyncTestClient(app=create_app(settings)) as c:
        yield c


async def test_root_redirects_to_the_ui(keyed: Client) -> None:
    """``GET /`` answers a redirect to ``/ui``, which is an HTML page with a strict CSP."""
    hop = await keyed.get("/", follow_redirects=False)
    assert hop.status_code in (301, 302, 303, 307) and hop.headers["location"] == "/ui"
    page = await keyed.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/ui/static/ui.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("name", ["index.html", "ui.js", "ui.css"])
def test_ui_files_name_no_other_host(name: str) -> None:
    """The UI's own files reference no URL on another host (no CDN, no web font)."""
    text = (STATIC / name).read_text(encoding="utf-8")
    assert URL.findall(text) == []


async def test_assets_are_served_and_nothing_else(keyed: Client) -> None:
    """Every listed asset is served with its media type, without a key; other names are 404."""
    for name, media in ASSETS.items():
        response = await keyed.get(f"/ui/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media)
    assert (await keyed.get("/ui/static/index.py")).status_code == 404
    assert (await keyed.get("/ui/static/..%2Fui.py")).status_code == 404


@pytest.mark.parametrize(
    ("key", "status"), [(None, 401), ("wrong", 401), (DECIDE, 403), (REPORT, 200), (ADMIN, 200)]
)
async def test_session_checks_the_key(keyed: Client, key: str | None, status: int) -> None:
    """``POST /ui/session`` admits report and admin keys only, and names their scopes."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await keyed.post("/ui/session", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        body = response.json()
        assert body["key_id"] and not body["open"]
        assert body["scopes"] == (["admin"] if key == ADMIN else ["report"])


async def test_session_sets_the_report_cookie_and_logout_clears_it(keyed: Client) -> None:
    """The session's cookie opens report pages (HttpOnly, SameSite=Strict, path /reports);
    ``DELETE /ui/session`` expires it."""
    keyed.cookies.clear()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = await keyed.post("/ui/session", headers=headers)
    cookie = response.headers["set-cookie"]
    assert f"tailor_report_key={ADMIN}" in cookie and "HttpOnly" in cookie
    assert "Path=/reports" in cookie and "samesite=strict" in cookie.lower()
    out = await keyed.delete("/ui/session", headers=headers)
    assert out.status_code == 204
    assert 'tailor_report_key=""' in out.headers["set-cookie"] or (
        "Max-Age=0" in out.headers["set-cookie"]
    )
    keyed.cookies.clear()


async def test_open_mode_needs_no_login(client: Client) -> None:
    """With no key configured the session answers ``open`` (the UI skips its login form)."""
    response = await client.post("/ui/session")
    assert response.status_code == 200
    assert response.json() == {"key_id": None, "scopes": ["admin"], "open": True}


@pytest.mark.parametrize("path", ["/schema", "/schema/rapidoc"])
async def test_schema_page_loads_nothing_from_another_host(keyed: Client, path: str) -> None:
    """The API docs page loads its viewer from ``/ui/static`` and names no other host (Litestar's
    stock viewers load scripts, fonts and a favicon from CDNs and were blank offline)."""
    page = await keyed.get(path)
    assert page.status_code == 200 and "<rapi-doc" in page.text
    assert 'src="/ui/static/rapidoc-min.js"' in page.text
    assert URL.findall(page.text) == []
    assert (await keyed.get("/schema/openapi.json")).status_code == 200
    assert (await keyed.get("/schema/openapi.yaml")).status_code == 200
