"""The web UI end to end, in headless Chromium driven by Playwright (Debian's chromium through
``executable_path``; ``playwright install`` is never run): a real ``tailor serve``, an admin
logs in, creates an experiment through the form (one field error shown at its field, then
corrected), starts it; decisions and outcomes arrive over HTTP; the list and the report page
show the verdict. No request may leave the API's own host (the UI and ``/schema`` work offline).
Screenshots go to ``artifacts/ui_*.png``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    expect,
    sync_playwright,
)

from tests.sdk.servers import ApiServer

pytestmark = pytest.mark.slow

ADMIN, DECIDE = "ui-e2e-admin", "ui-e2e-decide"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UNITS = 2000
RATES = {"control": 0.05, "treatment": 0.20}


def chromium_path() -> str:
    """Debian's Chromium (scripts/bootstrap installs it when TAILOR_WITH_BROWSER=1)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "install Chromium (apt-get install -y chromium; scripts/test's bootstrap does it)"
    return found


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """``tailor serve`` on chdb with an admin and a decide key, fast flushes and polls."""
    tmp = tmp_path_factory.mktemp("ui_api")
    env = {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_REDIS_KEY_PREFIX": "ui" + uuid.uuid4().hex[:10],
        "TAILOR_EVENT_LOG_URL": f"chdb://{tmp / 'chdb'}",
        "TAILOR_EVENT_LOG_FLUSH_INTERVAL_S": "0.05",
        "TAILOR_EVENT_LOG_SPOOL_DIR": str(tmp / "spool"),
        "TAILOR_DATA_DIR": str(tmp),
        "TAILOR_DECISIONS_CONFIG_POLL_INTERVAL_S": "0.05",
        "TAILOR_AUTH_API_KEYS": f"{ADMIN}:admin,{DECIDE}:decide",
        "TAILOR_LOG_LEVEL": "warning",
    }
    server = ApiServer(env, tmp / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (the system's, not a downloaded build)."""
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watch:
    """What a page did: every request's host, script errors and console errors."""

    def __init__(self, page: Page) -> None:
        self.hosts: set[str] = set()
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("http", "https", "ws", "wss"):
            self.hosts.add(parts.netloc)

    def _console(self, message: ConsoleMessage) -> None:
        # The browser logs every non-2xx fetch; the test provokes a 422 and checks it itself.
        if message.type == "error" and "status of 4" not in message.text:
            self.errors.append(f"console: {message.text}")


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Watch]]:
    """A fresh page (own cookies and sessionStorage) that accepts confirm() dialogs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    watch = Watch(tab)

    def accept(dialog: Dialog) -> None:
        dialog.accept()

    tab.on("dialog", accept)
    yield tab, watch
    context.close()


def shot(tab: Page, name: str) -> None:
    """Save a full-page screenshot to artifacts/ui_<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"ui_{name}.png"), full_page=True)


def log_in(tab: Page, api: ApiServer, key: str) -> None:
    """Open ``/`` (redirected to the UI) and log in with ``key``."""
    tab.goto(api.url + "/")
    assert urlsplit(tab.url).path == "/ui"
    tab.locator("#login input[name=key]").fill(key)
    tab.locator("#login button[type=submit]").click()
    expect(tab.locator("#nav")).to_be_visible()


def drive_traffic(api: ApiServer, key: str, placement: str) -> dict[str, int]:
    """One decision per unit; a conversion for a seeded share of each variant's units."""
    rng = np.random.default_rng(19)
    served = {"control": 0, "treatment": 0}
    outcomes = []
    headers = {"Authorization": f"Bearer {DECIDE}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=10) as client:
        for i in range(UNITS):
            answer = client.post(
                "/v1/decide", json={"unit_id": f"visitor-{i}", "placements": [placement]}
            )
            assert answer.status_code == 200, answer.text
            decision = answer.json()
            (choice,) = decision["decisions"]
            assert choice["experiment"] == key, choice
            served[choice["variant"]] += 1
            if rng.random() < RATES[choice["variant"]]:
                outcomes.append({"decision_id": decision["decision_id"], "type": "conversion"})
        posted = client.post("/v1/outcomes/batch", json={"outcomes": outcomes})
        assert posted.status_code in (200, 202), posted.text
    return served


def wait_for_units(api: ApiServer, key: str, units: int, timeout_s: float = 30.0) -> None:
    """Until the report counts every unit (the event writer flushes every 50 ms)."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        report = httpx.get(f"{api.url}/v1/experiments/{key}/report", headers=headers, timeout=30)
        assert report.status_code == 200, report.text
        seen = sum(arm["units"] for arm in report.json()["arms"])
        if seen >= units:
            return
        time.sleep(0.2)
    raise AssertionError(f"the report counts {seen} of {units} units")


def kill_switch_becomes(api: ApiServer, *, engaged: bool, timeout_s: float = 5.0) -> None:
    """Until the API reports the kill switch ``engaged`` (workers apply it within a poll)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{api.url}/v1/kill-switch", headers=admin).json()["engaged"] is not engaged:
        assert time.monotonic() < deadline, f"the kill switch never became engaged={engaged}"
        time.sleep(0.05)


def test_create_start_and_read_the_verdict(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """An admin creates an experiment in the form (an invalid payload is shown at its field,
    then corrected), starts it, and after real traffic reads the verdict in the list and on the
    report page; nothing is loaded from another host and no script fails."""
    tab, watch = page
    # A fixed key: it salts the assignment, so the split and the verdict are the same every run
    # (the server has a fresh Redis prefix and chdb directory per module).
    key, placement = "ui-hero", "home-hero"
    log_in(tab, api, ADMIN)
    tab.locator("nav a[data-nav=new]").click()
    form = tab.locator("#experiment-form")
    form.locator("[data-path='$.key']").fill(key)
    form.locator("[data-path='$.placement']").fill(placement)
    form.locator("[data-path='$.name']").fill("Hero headline")
    form.locator("[data-path='$.variants[0].payload']").fill('{"headline": "Welcome"}')
    form.locator("[data-path='$.variants[1].payload']").fill("[1, 2]")  # not an object
    form.locator("#save").click()

    error = form.locator("[data-error-for='$.variants[1].payload']")
    expect(error).to_contain_text("Expected `object`")
    expect(form.locator("[data-path='$.variants[1].payload']")).to_have_class("invalid")
    expect(form.locator("[data-error-for='$']")).to_be_empty()
    shot(tab, "field_error")
    assert (
        httpx.get(
            f"{api.url}/v1/experiments/{key}", headers={"Authorization": f"Bearer {ADMIN}"}
        ).status_code
        == 404
    ), "the invalid definition must not be stored"

    form.locator("[data-path='$.variants[1].payload']").fill('{"headline": "Free shipping"}')
    form.locator("#save").click()
    row = tab.locator(f"#experiments tr[data-key='{key}']")
    expect(row).to_contain_text("draft")
    expect(tab.locator("#notice")).to_contain_text(f"Saved {key}")

    row.locator("button[data-action=start]").click()
    expect(row.locator(".status")).to_have_text("running")
    expect(row).to_contain_text("fixed")
    time.sleep(0.2)  # every worker polls definitions every 50 ms

    served = drive_traffic(api, key, placement)
    assert min(served.values()) > UNITS // 3, served
    wait_for_units(api, key, UNITS)

    tab.reload()
    verdict = tab.locator(f"#experiments tr[data-key='{key}'] [data-verdict]")
    expect(verdict).to_have_attribute("data-verdict", "winner", timeout=30_000)
    expect(verdict).to_contain_text("treatment")
    shot(tab, "experiments")

    tab.locator(f"a[data-report='{key}']").click()  # the session's cookie opens the page
    tab.wait_for_url(f"**/reports/{key}")
    expect(tab.locator("section.verdict")).to_contain_text("treatment")
    shot(tab, "report")

    assert watch.hosts == {urlsplit(api.url).netloc}
    assert watch.errors == []


def test_pause_stop_and_the_kill_switch(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """Pause, stop and the global kill switch work from the list, and the API agrees."""
    tab, watch = page
    admin = {"Authorization": f"Bearer {ADMIN}"}
    key = "ui-life-" + uuid.uuid4().hex[:6]
    spec = {
        "key": key,
        "placement": "life-" + key,
        "variants": [{"key": "a"}, {"key": "b"}],
        "default_variant": "a",
    }
    assert httpx.post(f"{api.url}/v1/experiments", json=spec, headers=admin).status_code == 201
    assert httpx.post(f"{api.url}/v1/experiments/{key}/start", headers=admin).status_code == 200
    log_in(tab, api, ADMIN)
    row = tab.locator(f"#experiments tr[data-key='{key}']")
    row.locator("button[data-action=pause]").click()
    expect(row.locator(".status")).to_have_text("paused")
    row.locator("button[data-action=start]").click()  # "Resume"
    expect(row.locator(".status")).to_have_text("running")
    row.locator("button[data-action=stop]").click()
    expect(row.locator(".status")).to_have_text("stopped")
    status = httpx.get(f"{api.url}/v1/experiments/{key}", headers=admin).json()["status"]
    assert status == "stopped"

    tab.locator("#kill-switch").click()
    expect(tab.locator("#kill-banner")).to_contain_text("ENGAGED")
    kill_switch_becomes(api, engaged=True)
    shot(tab, "kill_switch")
    tab.locator("#kill-switch").click()
    expect(tab.locator("#kill-banner")).to_contain_text("released")
    kill_switch_becomes(api, engaged=False)
    assert watch.errors == []


def test_keys_are_created_and_revoked(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """An admin creates a decide key (its secret shown once, and working), then revokes it."""
    tab, watch = page
    log_in(tab, api, ADMIN)
    tab.locator("nav a[data-nav=keys]").click()
    form = tab.locator("#key-form")
    form.locator("[data-path='$.name']").fill("landing page")
    form.locator("button[type=submit]").click()  # no scope ticked: the API names the field
    expect(form.locator("[data-error-for='$.scopes']")).not_to_be_empty()
    form.locator("input[value=decide]").check()
    form.locator("button[type=submit]").click()
    secret = tab.locator("#new-secret").inner_text().strip()
    assert secret
    decide = {"unit_id": "u1", "placements": ["nowhere"]}
    bearer = {"Authorization": f"Bearer {secret}"}
    assert httpx.post(f"{api.url}/v1/decide", json=decide, headers=bearer).status_code == 200
    row = tab.locator("#keys tr", has_text="landing page")
    expect(row).to_contain_text("decide")
    shot(tab, "keys")
    row.locator("button", has_text="Revoke").click()
    expect(tab.locator("#keys tr", has_text="landing page")).to_have_count(0)
    deadline = time.monotonic() + 10
    while httpx.post(f"{api.url}/v1/decide", json=decide, headers=bearer).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)
    assert watch.errors == []


def test_a_wrong_key_stays_at_the_login(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """A wrong key is refused at the key field; a decide key is refused (it opens nothing)."""
    tab, _ = page
    tab.goto(api.url + "/ui")
    for key, message in (("not-a-key", "revoked"), (DECIDE, "lacks")):
        tab.locator("#login input[name=key]").fill(key)
        tab.locator("#login button[type=submit]").click()
        expect(tab.locator("#login [data-error-for='$.key']")).to_contain_text(message)
        expect(tab.locator("#nav")).to_be_hidden()


def test_log_out_forgets_the_key(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """The key survives a reload of the tab (sessionStorage) and is gone after logging out."""
    tab, watch = page
    log_in(tab, api, ADMIN)
    tab.reload()
    expect(tab.locator("#nav")).to_be_visible()
    tab.locator("#logout").click()
    expect(tab.locator("#login")).to_be_visible()
    tab.reload()
    expect(tab.locator("#login")).to_be_visible()
    assert tab.evaluate("sessionStorage.length") == 0
    assert watch.errors == []


def test_schema_renders_offline(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """``/schema`` draws the API's operations with the vendored viewer, loading nothing from
    another host (it was blank offline with Litestar's CDN viewers)."""
    tab, watch = page
    tab.goto(api.url + "/schema")
    expect(tab.get_by_text("/v1/decide", exact=False).first).to_be_visible(timeout=20_000)
    shot(tab, "schema")
    assert watch.hosts == {urlsplit(api.url).netloc}
    assert watch.errors == []


def test_edit_keeps_what_the_form_does_not_show(api: ApiServer, page: tuple[Page, Watch]) -> None:
    """Editing in the form changes what was edited (a policy error is shown at its setting
    first) and keeps the rest: payloads, variant features, the frequency cap, reward rules."""
    tab, watch = page
    admin = {"Authorization": f"Bearer {ADMIN}"}
    key = "ui-edit-" + uuid.uuid4().hex[:6]
    spec = {
        "key": key,
        "placement": "edit-" + key,
        "variants": [
            {"key": "a", "payload": {"color": "red"}, "features": {"tone": "warm"}},
            {"key": "b", "weight": 3, "payload": {"color": "blue"}},
        ],
        "default_variant": "a",
        "targeting": {"attribute": "country", "op": "in", "value": ["DE", "AT"]},
        "frequency_cap": {"max_exposures": 3, "window_s": 86400},
        "reward": {"rules": [{"type": "purchase", "reward": 2.0}]},
        "primary_metric": "purchase",
    }
    assert httpx.post(f"{api.url}/v1/experiments", json=spec, headers=admin).status_code == 201
    log_in(tab, api, ADMIN)
    tab.locator(f"#experiments tr[data-key='{key}'] a", has_text="Edit").click()
    form = tab.locator("#experiment-form")
    expect(form.locator("[data-path='$.key']")).to_have_value(key)
    form.locator("[data-path='$.name']").fill("Button colour")
    form.locator("[data-path='$.policy']").select_option("thompson")
    form.locator("[data-path='$.policy.min_share']").fill("0.9")  # 2 arms: at most 0.5
    form.locator("#save").click()
    expect(form.locator("[data-error-for='$.policy.min_share']")).to_contain_text("min_share")
    form.locator("[data-path='$.policy.min_share']").fill("0.1")
    form.locator("#save").click()
    expect(tab.locator("#notice")).to_contain_text(f"Saved {key} (version 2")

    stored = httpx.get(f"{api.url}/v1/experiments/{key}", headers=admin).json()
    assert stored["name"] == "Button colour"
    assert stored["policy"]["kind"] == "thompson" and stored["policy"]["min_share"] == 0.1
    assert [v["payload"] for v in stored["variants"]] == [{"color": "red"}, {"color": "blue"}]
    assert stored["variants"][0]["features"] == {"tone": "warm"}
    assert stored["variants"][1]["weight"] == 3
    assert stored["targeting"] == spec["targeting"]
    assert stored["frequency_cap"]["max_exposures"] == 3
    assert stored["reward"]["rules"] == [{"type": "purchase", "reward": 2.0, "per_value": False}]
    assert stored["primary_metric"] == "purchase"
    assert watch.errors == []
