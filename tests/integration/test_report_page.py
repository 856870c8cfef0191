"""The report page: who may open it, how its key travels, and that Chromium draws its charts."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.settings import AuthSettings, Settings
from tests.experiments.report_rows import T0, Log, insert_log, random_log
from tests.experiments.test_report_adaptive import thompson_log

Client = AsyncTestClient[Litestar]
ADMIN, REPORT, DECIDE = "admin-secret", "report-secret", "decide-secret"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SPEC = {
    "key": "exp",
    "name": "Homepage hero",
    "hypothesis": "A bolder hero lifts purchases",
    "placement": "home",
    "variants": [{"key": "control"}, {"key": "b"}, {"key": "c"}],
    "default_variant": "control",
    "primary_metric": "purchase",
    "guardrail_metrics": ["unsubscribe"],
    "reward": {"rules": [{"type": "purchase", "reward": 1.0}]},
}


@pytest.fixture(scope="module")
async def client(shared_settings: Settings) -> AsyncIterator[Client]:
    """One app for the module (its tests only read), with admin, report and decide keys, an
    experiment and a random log."""
    keyed = msgspec.structs.replace(
        shared_settings,
        auth=AuthSettings(api_keys=f"{ADMIN}:admin,{REPORT}:report,{DECIDE}:decide"),
    )
    async with AsyncTestClient(app=create_app(keyed)) as c:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert (await c.post("/v1/experiments", json=SPEC, headers=admin)).status_code == 201
        insert_log(c.app.state.services.event_log, random_log(np.random.default_rng(5)))
        one_day = {**SPEC, "key": "oneday", "name": "One afternoon"}
        assert (await c.post("/v1/experiments", json=one_day, headers=admin)).status_code == 201
        insert_log(
            c.app.state.services.event_log, _within_hours(random_log(np.random.default_rng(6)))
        )
        bandit = {
            **SPEC,
            "key": "bandit",
            "variants": [{"key": "a"}, {"key": "b"}, {"key": "c"}],
            "default_variant": "a",
            "policy": {"kind": "thompson"},
        }
        assert (await c.post("/v1/experiments", json=bandit, headers=admin)).status_code == 201
        log, _ = thompson_log(np.random.default_rng(7), "bandit", 3000, 0.15, repeat=True)
        insert_log(c.app.state.services.event_log, log)
        yield c


def _within_hours(log: Log) -> Log:
    """The log squeezed from six days into three hours, as experiment ``oneday``."""

    def squeeze(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out["ts"] = T0 + (out.ts - T0) // 48
        out.loc[out.experiment == "exp", "experiment"] = "oneday"
        return out

    return Log(exposures=squeeze(log.exposures), outcomes=squeeze(log.outcomes))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Bearer {DECIDE}"}, 403),
        ({"X-API-Key": REPORT}, 200),
        ({"Authorization": f"Bearer {ADMIN}"}, 200),
    ],
)
async def test_json_report_needs_the_report_scope(
    client: Client, headers: dict[str, str], status: int
) -> None:
    """The JSON report admits keys with the report (or admin) scope only."""
    response = await client.get("/v1/experiments/exp/report", headers=headers)
    assert response.status_code == status


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "yesterday"}, "$.from"),
        ({"level": "2"}, "$.level"),
        ({"from": "2024-02-01", "to": "2024-01-01"}, "$.to"),
        ({"metric": "Bad Metric"}, "$.metric"),
        ({"correction": "bonferroni"}, "$.correction"),
        ({"cap_percentile": "1.5"}, "$.cap_percentile"),
    ],
)
async def test_bad_parameters_name_the_field(
    client: Client, params: dict[str, str], field: str
) -> None:
    """Unusable query parameters get a 422 problem naming the parameter."""
    response = await client.get(
        "/v1/experiments/exp/report", params=params, headers={"X-API-Key": REPORT}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


async def test_unknown_experiment_is_404(client: Client) -> None:
    """A report of an experiment that does not exist is a 404."""
    response = await client.get("/v1/experiments/nope/report", headers={"X-API-Key": REPORT})
    assert response.status_code == 404


async def test_page_takes_its_key_once_from_the_url(client: Client) -> None:
    """Without a key the page asks for one; ?key= with a report key becomes an HttpOnly cookie
    and a redirect to the same URL without the key; the cookie then opens the page."""
    ask = await client.get("/reports/exp")
    assert ask.status_code == 401 and 'name="key"' in ask.text
    wrong = await client.get("/reports/exp", params={"key": DECIDE})
    assert wrong.status_code == 403 and "lacks the report scope" in wrong.text
    hop = await client.get(
        "/reports/exp", params={"key": REPORT, "segment": "device"}, follow_redirects=False
    )
    assert hop.status_code == 303
    assert hop.headers["location"] == "/reports/exp?segment=device"
    cookie = hop.headers["set-cookie"]
    assert "tailor_report_key=" in cookie and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower() and "Path=/reports" in cookie
    page = await client.get("/reports/exp?segment=device", cookies={"tailor_report_key": REPORT})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<section class="verdict' in page.text and "By segment" in page.text
    assert REPORT not in page.text


async def test_page_keeps_only_the_key_it_checked(client: Client) -> None:
    """A ``?key=`` beside a header key is not the key the guard checked: the page is served
    without storing it in a cookie (a non-Latin-1 one was a 500 on ``Set-Cookie``)."""
    for junk in ("\U000f765d\u00b5", "not-a-key"):
        page = await client.get(
            "/reports/exp",
            params={"key": junk},
            headers={"Authorization": f"Bearer {REPORT}"},
            follow_redirects=False,
        )
        assert page.status_code == 200, page.text
        assert "set-cookie" not in page.headers


async def test_assets_come_from_the_api(client: Client) -> None:
    """The page's script and style sheet are served by the API itself, to the page's cookie (or
    a report key); other names are 404."""
    cookie = {"tailor_report_key": REPORT}
    js = await client.get("/reports/static/report.js", cookies=cookie)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    css = await client.get("/reports/static/report.css", headers={"X-API-Key": REPORT})
    assert css.status_code == 200
    assert (await client.get("/reports/static/evil.js", cookies=cookie)).status_code == 404
    client.cookies.clear()  # an earlier test's redirect left the page's cookie in the jar
    assert (await client.get("/reports/static/report.js")).status_code == 401


class _Site(http.server.BaseHTTPRequestHandler):
    """Serves fixed bytes per path (the page and assets exactly as the API returned them)."""

    pages: dict[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        body, media = self.pages.get(self.path, (b"", ""))
        self.send_response(200 if media else 404)
        self.send_header("Content-Type", media or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def site() -> Iterator[tuple[str, type[_Site]]]:
    """A local HTTP server for a snapshot of the page (Chromium cannot reach the test client)."""

    class Site(_Site):
        pages: dict[str, tuple[bytes, str]] = {}

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Site
    finally:
        server.shutdown()
        server.server_close()


async def _render(
    client: Client,
    site: tuple[str, type[_Site]],
    tmp_path: Path,
    experiment: str,
    *,
    width: int,
    shot: Path,
) -> str:
    """The page of ``experiment`` (by device) as headless Chromium leaves its DOM after the
    scripts ran, at a window ``width`` px wide; a screenshot is saved to ``shot``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "install Chromium (apt-get install -y chromium; scripts/bootstrap does it)"
    base, handler = site
    key = {"X-API-Key": REPORT}
    page = await client.get(f"/reports/{experiment}", params={"segment": "device"}, headers=key)
    assert page.status_code == 200
    handler.pages[f"/reports/{experiment}"] = (page.content, "text/html; charset=utf-8")
    for name in ("report.js", "report.css"):
        asset = await client.get(f"/reports/static/{name}", headers=key)
        handler.pages[f"/reports/static/{name}"] = (asset.content, asset.headers["content-type"])
    ARTIFACTS.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    run = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--window-size={width},2400",
            f"--screenshot={shot}",
            "--dump-dom",
            f"{base}/reports/{experiment}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert shot.stat().st_size > 10_000
    return run.stdout.decode()


def _chart(dom: str, chart: str) -> str:
    return dom.split(f'id="{chart}"', 1)[1].split("</figure>", 1)[0]


async def test_chromium_draws_the_charts_without_errors(
    client: Client, site: tuple[str, type[_Site]], tmp_path: Path
) -> None:
    """Headless Chromium renders the page's three SVG charts from the embedded JSON with no
    script error, offline (no request leaves the page's own server); a screenshot is saved to
    artifacts/report_page.png."""
    dom = await _render(
        client, site, tmp_path, "exp", width=1200, shot=ARTIFACTS / "report_page.png"
    )
    assert re.search(r'<html[^>]*data-charts="ok"', dom), dom[:500]
    assert "data-chart-errors" not in dom
    for chart in ("chart-daily", "chart-lift", "chart-segments"):
        block = _chart(dom, chart)
        assert "<svg" in block and ("<path" in block or "<line" in block)


async def test_one_day_at_1280_px(
    client: Client, site: tuple[str, type[_Site]], tmp_path: Path
) -> None:
    """An experiment whose data falls within three hours: the cumulative chart draws a curve
    over sub-day buckets (labelled with times), the text report carries the segments, and at a
    1280 px window nothing is wider than the window (tables wrap or scroll inside the page);
    screenshot in artifacts/report_page_one_day.png."""
    dom = await _render(
        client, site, tmp_path, "oneday", width=1280, shot=ARTIFACTS / "report_page_one_day.png"
    )
    assert re.search(r'<html[^>]*data-charts="ok"', dom), dom[:500]
    daily = _chart(dom, "chart-daily")
    path = re.search(r'<path d="([^"]+)"', daily)
    assert path and path[1].count(" L ") >= 5, daily[:500]  # a curve, not one point
    assert re.search(r">\d{4}-\d\d-\d\dT\d\d:\d\dZ<", daily), daily[:500]
    page = re.search(r'data-page-width="(\d+)"', dom)
    window = re.search(r'data-window-width="(\d+)"', dom)
    assert page and window and int(window[1]) == 1280
    assert int(page[1]) <= int(window[1]), (page[1], window[1])
    wide = re.search(r'data-wide-tables="(\d+)"', dom)
    assert wide and wide[1] == "0", "tables wider than the page at 1280 px"
    text = await client.get(
        "/v1/experiments/oneday/report",
        params={"segment": "device", "format": "text"},
        headers={"X-API-Key": REPORT},
    )
    assert text.status_code == 200
    assert "by segment: device" in text.text
    for device in ("mobile", "desktop", "tablet"):
        assert re.search(rf"^{device}\s", text.text, re.M), text.text


async def test_bandit_page_draws_the_allocation(
    client: Client, site: tuple[str, type[_Site]], tmp_path: Path
) -> None:
    """A Thompson experiment's page leads with the policy's value against the holdout, draws
    its value over time (estimate and interval band), what it prefers per segment now, the
    allocation over time (stacked shares per bucket) and what drives the choice; screenshot in
    artifacts/report_page_bandit.png."""
    dom = await _render(
        client, site, tmp_path, "bandit", width=1280, shot=ARTIFACTS / "report_page_bandit.png"
    )
    assert re.search(r'<html[^>]*data-charts="ok"', dom), dom[:500]
    assert re.search(r'data-wide-tables="0"', dom)
    headline = re.search(r'<p class="headline">([^<]+)</p>', dom)
    assert headline and "over the holdout" in headline[1], headline
    value = _chart(dom, "chart-value")
    assert 'class="gain"' in value and 'class="band"' in value, value[:500]
    block = _chart(dom, "chart-allocation")
    assert block.count('class="share"') >= 12, block[:500]
    assert "Adaptive policy" in dom and "descriptive" in dom
    assert "What the policy prefers now, per segment" in dom
    assert re.search(r"<td>device = mobile</td><td>[\d,]+</td><td><strong>c</strong>", dom)
    drivers = dom.split('<section class="drivers">', 1)[1].split("</section>", 1)[0]
    assert "What drives the choice" in drivers and "<td>device</td>" in drivers, drivers[:500]
