"""The SDK and the browser snippet against ``tailor serve`` over real sockets.

One API process serves the module (granian, the session's Redis, its events through the test
ClickHouse HTTP front so the test can count rows while the API restarts). Covers fail-open with
the API stopped and behind a slow proxy, no outcome lost across a restart during a burst, and
``/sdk/tailor.js`` in headless Chromium against a demo page from another origin.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import pytest
from clickhouse_connect.driver.client import Client as ClickHouse

from decision_api.redis_server import free_port
from sdk import AsyncTailorClient, ClientOptions, RetryPolicy, TailorClient, TransportError
from sdk.errors import RequestTimeout
from tests.sdk.servers import ApiServer, DemoSite, SlowProxy, chromium_dom
from tests.support.clickhouse_front import running_clickhouse_front
from tests.support.polling import eventually_sync

pytestmark = pytest.mark.slow

ADMIN, DECIDE, INGEST = "admin-secret", "decide-secret", "ingest-secret"
SNIPPET = Path(__file__).resolve().parents[2] / "sdk" / "static" / "tailor.js"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ClickHouse HTTP front (chdb in its own process); yields the DSN of a fresh database."""
    path = tmp_path_factory.mktemp("sdk_front") / "chdb"
    with running_clickhouse_front(path, user="tailor", password="pw") as dsn:
        yield dsn.replace("/default", "/sdk_socket")


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoSite]:
    """The demo web site (its origin is allowed by the API's CORS settings)."""
    site = DemoSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def api(
    redis_url: str, front: str, demo: DemoSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """``tailor serve`` with three keys, fast flushes, the demo origin allowed."""
    tmp = tmp_path_factory.mktemp("sdk_api")
    env = {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_REDIS_KEY_PREFIX": "s" + uuid.uuid4().hex[:10],
        "TAILOR_EVENT_LOG_URL": front,
        "TAILOR_EVENT_LOG_FLUSH_INTERVAL_S": "0.05",
        "TAILOR_EVENT_LOG_SPOOL_DIR": str(tmp / "spool"),
        "TAILOR_DATA_DIR": str(tmp),
        "TAILOR_DECISIONS_CONFIG_POLL_INTERVAL_S": "0.05",
        "TAILOR_AUTH_API_KEYS": f"{ADMIN}:admin,{DECIDE}:decide,{INGEST}:ingest+decide",
        "TAILOR_AUTH_CORS_ORIGINS": demo.origin,
        "TAILOR_LOG_LEVEL": "warning",
    }
    server = ApiServer(env, tmp / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def events(front: str) -> Iterator[ClickHouse]:
    """A client of the front, for counting what the API wrote."""
    client = clickhouse_connect.get_client(dsn=front)
    yield client
    client.close()


@pytest.fixture
def tag() -> str:
    """A suffix making this test's keys and unit ids unique."""
    return uuid.uuid4().hex[:8]


def start_experiment(api: ApiServer, key: str, placement: str, variants: list[Any]) -> None:
    """Create and start an experiment through the admin API."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    spec = {
        "key": key,
        "placement": placement,
        "variants": variants,
        "default_variant": variants[0]["key"],
    }
    created = httpx.post(api.url + "/v1/experiments", json=spec, headers=headers)
    assert created.status_code == 201, created.text
    started = httpx.post(f"{api.url}/v1/experiments/{key}/start", headers=headers)
    assert started.status_code == 200, started.text
    time.sleep(0.15)  # the worker's config poll (50 ms)


def client_for(url: str, key: str = INGEST, **options: Any) -> TailorClient:
    """A sync SDK client."""
    return TailorClient(url, key, options=ClientOptions(**options), close_at_exit=False)


def test_sync_decide_over_the_socket(api: ApiServer, tag: str) -> None:
    """The sync client gets the API's variants over pooled keep-alive connections, fast."""
    variants = [{"key": "a", "payload": {"h": "A"}}, {"key": "b", "payload": {"h": "B"}}]
    start_experiment(api, f"hero-{tag}", f"home-{tag}", variants)
    latencies = []
    # A generous timeout: this test pins answers, not the deadline (a loaded CI box is slow).
    with client_for(api.url, decide_timeout_s=2.0) as client, httpx.Client(base_url=api.url) as raw:
        for i in range(60):
            unit = f"u-{tag}-{i}"
            started = time.perf_counter()
            result = client.decide(unit, [f"home-{tag}"], {"device": "mobile"})
            latencies.append(time.perf_counter() - started)
            assert not result.fallback, result.error
            answer = raw.post(
                "/v1/decide",
                headers={"x-api-key": DECIDE},
                json={"unit_id": unit, "placements": [f"home-{tag}"]},
            )
            assert result[f"home-{tag}"].variant == answer.json()["decisions"][0]["variant"]
    latencies.sort()
    assert latencies[30] < 0.05  # median well under the 100 ms decide timeout


def test_fail_open_with_nothing_listening(tag: str) -> None:
    """With the API down (connection refused), decide returns the defaults at once and outcomes
    wait in the buffer, retried, not lost."""
    dead = f"http://127.0.0.1:{free_port()}"
    with client_for(dead, flush_interval_s=0.05, close_timeout_s=0.3) as client:
        started = time.monotonic()
        result = client.decide(f"u-{tag}", ["hero", "footer"], defaults={"hero": "control"})
        elapsed = time.monotonic() - started
        assert result.fallback and isinstance(result.error, TransportError)
        assert (result["hero"].variant, result["footer"].variant) == ("control", None)
        assert elapsed < 0.15  # a refused connection fails at once, well before any timeout
        for i in range(10):
            client.track_outcome("click", unit_id=f"u-{tag}", value=i)
        eventually_sync(lambda: client.stats.outcomes.failed_flushes >= 2, timeout_s=5)
        stats = client.stats.outcomes
        assert (stats.pending, stats.sent, stats.dropped) == (10, 0, 0)


@pytest.mark.parametrize("timeout_s", [0.1, 0.25])
def test_slow_server_gives_defaults_within_the_timeout(
    api: ApiServer, tag: str, timeout_s: float
) -> None:
    """Behind a proxy adding 600 ms, decide returns the defaults after about its timeout; with a
    generous timeout the same proxy delivers the API's answer."""
    start_experiment(api, f"slow-{tag}", f"slow-{tag}", [{"key": "a"}, {"key": "b"}])
    proxy = SlowProxy(api.port, 0.6)
    try:
        with client_for(proxy.url) as client:
            started = time.monotonic()
            result = client.decide(
                f"u-{tag}", [f"slow-{tag}"], defaults={f"slow-{tag}": "a"}, timeout_s=timeout_s
            )
            elapsed = time.monotonic() - started
            assert result.fallback and isinstance(result.error, RequestTimeout)
            assert timeout_s * 0.9 <= elapsed < timeout_s + 0.2
            patient = client.decide(f"u-{tag}", [f"slow-{tag}"], timeout_s=3.0)
            assert not patient.fallback and patient[f"slow-{tag}"].experiment == f"slow-{tag}"
    finally:
        proxy.close()


async def test_slow_server_async_client_deadline(api: ApiServer, tag: str) -> None:
    """The asyncio client's decide deadline is strict behind the slow proxy too."""
    proxy = SlowProxy(api.port, 0.6)
    try:
        async with AsyncTailorClient(proxy.url, INGEST, close_at_exit=False) as client:
            started = time.monotonic()
            result = await client.decide(f"u-{tag}", ["hero"], defaults={"hero": "control"})
            elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert result.fallback and isinstance(result.error, RequestTimeout)
    assert 0.09 <= elapsed < 0.3


def test_no_outcome_lost_when_the_server_restarts(
    api: ApiServer, events: ClickHouse, tag: str
) -> None:
    """Outcomes tracked before, during and after a restart of the API all arrive, each once."""
    unit = f"restart-{tag}"
    options = {
        "flush_size": 50,
        "flush_interval_s": 0.05,
        "close_timeout_s": 30.0,
        "flush_retry": RetryPolicy(attempts=1, base_s=0.05, cap_s=0.5),
    }
    sent: list[str] = []
    stop = threading.Event()
    down: list[Any] = []
    with client_for(api.url, **options) as client:

        def burst() -> None:
            while not stop.is_set():
                sent.append(client.track_outcome("purchase", unit_id=unit, value=1.0))
                time.sleep(0.001)

        sender = threading.Thread(target=burst)
        sender.start()
        try:
            time.sleep(0.5)
            api.stop()
            down.append(client.decide(unit, ["hero"], defaults={"hero": "control"}))
            time.sleep(0.5)
            api.start()
            time.sleep(0.5)
        finally:
            stop.set()
            sender.join()
        assert client.flush(30.0), client.stats
        stats = client.stats.outcomes
    assert down[0].fallback and down[0]["hero"].variant == "control"
    assert len(sent) == len(set(sent)) > 1000
    assert (stats.sent, stats.dropped, stats.rejected) == (len(sent), 0, 0)
    assert stats.failed_flushes > 0  # the restart really was in the way
    sql = "SELECT count(), uniqExact(event_id) FROM outcomes FINAL WHERE unit_id = {u:String}"

    def stored() -> Any:
        rows = events.query(sql, parameters={"u": unit}).result_rows
        return rows[0] if rows[0][1] >= len(sent) else None

    assert eventually_sync(stored, timeout_s=15) == (len(sent), len(sent))


class Elements(HTMLParser):
    """Attributes and text of the elements that have an ``id``, from a DOM dump."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.root: dict[str, str | None] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "html":
            self.root = found
        if found.get("id"):
            self.by_id[found["id"]] = {"attrs": found, "text": ""}
            self._open.append(found["id"])
        else:
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in self._open:
            if name:
                self.by_id[name]["text"] += data


def demo_page(api_url: str, snippet_url: str, key: str, unit: str, tag: str) -> bytes:
    """A page with a hero placement (text, image, link, class, hostile fields) and a footer."""
    return f"""<!doctype html>
<html class="tailor-hide"><head><meta charset="utf-8"><title>demo</title>
<style>.tailor-hide [data-tailor-placement] {{ visibility: hidden }}</style></head>
<body>
<section id="hero" data-tailor-placement="hero-{tag}">
  <h1 id="headline" data-tailor-field="headline">Default headline</h1>
  <img id="img" data-tailor-field="img" src="/default.png" alt="">
  <a id="cta" href="/default" data-tailor-field="url" data-tailor-as="href"
     data-tailor-click="click">Shop</a>
  <span id="theme" class="base" data-tailor-field="theme" data-tailor-as="class"></span>
  <a id="evil" href="/safe" data-tailor-field="evil" data-tailor-as="href">x</a>
  <b id="handler" data-tailor-field="evil" data-tailor-as="onclick">y</b>
</section>
<section id="footer" data-tailor-placement="footer-{tag}">
  <p id="footer-text" data-tailor-field="text">Footer default</p>
</section>
<pre id="result"></pre>
<script>
document.getElementById('cta').addEventListener('click', function (e) {{ e.preventDefault(); }});
document.addEventListener('tailor:decision', async function (e) {{
  var out = {{decision: e.detail, error: window.tailor.error, unit: window.tailor.unit}};
  document.getElementById('cta').click();
  out.tracked = window.tailor.track('purchase', 42.5, {{sku: 'A-1'}});
  await fetch('/wait');
  document.getElementById('result').textContent = JSON.stringify(out);
}});
</script>
<script async src="{snippet_url}" data-api="{api_url}" data-key="{key}" data-unit="{unit}"
        data-timeout="3000" data-context='{{"source": "demo"}}'></script>
</body></html>""".encode()


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh Chromium profile directory."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    return tmp_path / "chromium"


def test_snippet_applies_the_variant_and_reports_clicks(
    api: ApiServer, demo: DemoSite, events: ClickHouse, profile: Path, tag: str
) -> None:
    """In headless Chromium the snippet decides once for the page's placements, fills the marked
    elements from the payload (refusing script URLs and handler attributes), keeps the default
    where no experiment runs, and the click and the tracked purchase arrive as outcomes
    carrying the decision id."""
    payload = {
        "headline": "Spring sale",
        "img": "/spring.png",
        "url": "/spring",
        "theme": "theme-spring bold",
        "evil": "javascript:alert(1)",
    }
    start_experiment(
        api,
        f"hero-{tag}",
        f"hero-{tag}",
        [{"key": "control", "weight": 0}, {"key": "spring", "payload": payload}],
    )
    unit = f"browser-{tag}"
    page = demo_page(api.url, api.url + "/sdk/tailor.js", DECIDE, unit, tag)
    demo.pages[f"/demo-{tag}.html"] = lambda: (200, "text/html; charset=utf-8", page)
    dom = Elements(chromium_dom(f"{demo.origin}/demo-{tag}.html", profile))
    result = json.loads(dom.by_id["result"]["text"])
    assert result["error"] is None, result
    decision_id = result["decision"]["decision_id"]
    el = dom.by_id
    assert el["headline"]["text"] == "Spring sale"
    assert el["img"]["attrs"]["src"] == "/spring.png"
    assert el["cta"]["attrs"]["href"] == "/spring"
    assert el["theme"]["attrs"]["class"] == "base theme-spring bold"
    assert el["evil"]["attrs"]["href"] == "/safe"
    assert "onclick" not in el["handler"]["attrs"]
    assert el["hero"]["attrs"]["data-tailor-variant"] == "spring"
    assert el["footer-text"]["text"] == "Footer default"
    assert "data-tailor-variant" not in el["footer"]["attrs"]
    assert "tailor-hide" not in (dom.root.get("class") or "")
    sql = """SELECT type, decision_id, experiment, value, properties FROM outcomes
             WHERE unit_id = {u:String} ORDER BY type"""

    def arrived() -> Any:
        rows = events.query(sql, parameters={"u": unit}).result_rows
        return rows if len(rows) >= 2 else None

    click, purchase = eventually_sync(arrived)
    assert click[:4] == ("click", decision_id, f"hero-{tag}", 0.0)
    assert purchase[:4] == ("purchase", decision_id, "", 42.5)
    assert purchase[4] == {"sku": "A-1"}
    exposures = events.query(
        "SELECT variant, context['source'] FROM exposures WHERE decision_id = {d:String}",
        parameters={"d": decision_id},
    ).result_rows
    assert exposures == [("spring", "demo")]


def test_snippet_fails_open_when_the_api_is_down(demo: DemoSite, profile: Path, tag: str) -> None:
    """With the API unreachable the page keeps its built-in content and is revealed."""
    dead = f"http://127.0.0.1:{free_port()}"
    demo.pages["/tailor.js"] = lambda: (200, "text/javascript", SNIPPET.read_bytes())
    page = demo_page(dead, demo.origin + "/tailor.js", DECIDE, f"down-{tag}", tag)
    demo.pages[f"/down-{tag}.html"] = lambda: (200, "text/html; charset=utf-8", page)
    dom = Elements(chromium_dom(f"{demo.origin}/down-{tag}.html", profile))
    result = json.loads(dom.by_id["result"]["text"])
    assert result["decision"] is None and result["error"]
    assert dom.by_id["headline"]["text"] == "Default headline"
    assert dom.by_id["cta"]["attrs"]["href"] == "/default"
    assert "data-tailor-variant" not in dom.by_id["hero"]["attrs"]
    assert "data-tailor-done" in dom.by_id["hero"]["attrs"]
    assert "tailor-hide" not in (dom.root.get("class") or "")


def slate_page(api_url: str, unit: str, tag: str) -> bytes:
    """Two slate placements: page items ranked as candidates, and variants through a template."""
    items = "".join(
        f'<li data-tailor-item="sku-{k}" data-tailor-features=\'{{"brand": "b{k}"}}\'>'
        f'<a id="sku-{k}" href="#" data-tailor-click="click">{k}</a></li>'
        for k in (1, 2, 3)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<ul id="recs" data-tailor-placement="recs-{tag}" data-tailor-slots="2">{items}</ul>
<div id="strip" data-tailor-placement="strip-{tag}" data-tailor-slots="2">
  <p data-tailor-default>Default strip</p>
  <template><b data-tailor-field="title"></b></template>
</div>
<pre id="result"></pre>
<script>
document.addEventListener('tailor:decision', async function (e) {{
  var shown = function (sel) {{
    return Array.from(document.querySelectorAll(sel)).filter(function (el) {{ return !el.hidden; }})
      .map(function (el) {{
        return [el.dataset.tailorItem, el.dataset.tailorSlot, el.textContent];
      }});
  }};
  var out = {{decision: e.detail, error: window.tailor.error,
    recs: shown('#recs [data-tailor-item]'), strip: shown('#strip [data-tailor-item]'),
    hidden: Array.from(document.querySelectorAll('#recs [hidden], #strip [hidden]')).length}};
  var second = document.querySelector('#recs [data-tailor-slot="1"] a');
  if (second) second.click();
  var top = out.recs.length ? out.recs[0][0] : '';
  window.tailor.track('add_to_cart', 3, null, {{placement: 'recs-{tag}', item: top}});
  await fetch('/wait');
  document.getElementById('result').textContent = JSON.stringify(out);
}});
</script>
<script async src="{api_url}/sdk/tailor.js" data-api="{api_url}" data-key="{DECIDE}"
        data-unit="{unit}" data-timeout="3000"></script>
</body></html>""".encode()


def test_snippet_renders_slates_and_reports_the_clicked_slot(
    api: ApiServer, demo: DemoSite, events: ClickHouse, profile: Path, tag: str
) -> None:
    """A data-tailor-slots container asks for a slate: page items are sent as candidates, shown
    in the slate's order (the rest hidden); a template is filled per slot from the ranked
    variants' payloads; a click in an item reports its item and slot, and tailor.track names an
    item when asked."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    for key, variants, default in (
        (f"recs-{tag}", [{"key": "v"}], "v"),
        (f"strip-{tag}", [{"key": k, "payload": {"title": k.upper()}} for k in "xyz"], "z"),
    ):
        spec = {
            "key": key,
            "placement": key,
            "variants": variants,
            "default_variant": default,
            "policy": {"kind": "vw_slates", "slots": 2},
            "primary_metric": "click",
        }
        created = httpx.post(api.url + "/v1/experiments", json=spec, headers=headers)
        assert created.status_code == 201, created.text
        started = httpx.post(f"{api.url}/v1/experiments/{key}/start", headers=headers)
        assert started.status_code == 200, started.text
    time.sleep(0.15)  # the worker's config poll (50 ms)
    unit = f"slates-{tag}"
    page = slate_page(api.url, unit, tag)
    demo.pages[f"/slates-{tag}.html"] = lambda: (200, "text/html; charset=utf-8", page)
    dom = Elements(chromium_dom(f"{demo.origin}/slates-{tag}.html", profile))
    result = json.loads(dom.by_id["result"]["text"])
    assert result["error"] is None, result
    slates = {d["placement"]: d["slate"] for d in result["decision"]["decisions"]}
    recs, strip = slates[f"recs-{tag}"], slates[f"strip-{tag}"]
    assert [[s["item"], str(s["slot"]), s["item"][-1]] for s in recs] == result["recs"]
    assert [[s["item"], str(s["slot"]), s["item"].upper()] for s in strip] == result["strip"]
    assert result["hidden"] == 2  # the unranked sku and the default strip
    decision_id = result["decision"]["decision_id"]

    def clicked() -> Any:
        rows = events.query(
            """SELECT item, slot, experiment FROM outcomes WHERE unit_id = {u:String}
               ORDER BY type""",
            parameters={"u": unit},
        ).result_rows
        return rows if len(rows) >= 2 else None

    assert eventually_sync(clicked) == [
        (recs[0]["item"], -1, f"recs-{tag}"),  # tailor.track naming the item only
        (recs[1]["item"], 1, f"recs-{tag}"),
    ]
    exposures = events.query(
        """SELECT slot, item, candidates FROM exposures
           WHERE decision_id = {d:String} AND experiment = {e:String} ORDER BY slot""",
        parameters={"d": decision_id, "e": f"recs-{tag}"},
    ).result_rows
    assert exposures == [(0, recs[0]["item"], 3), (1, recs[1]["item"], 3)]
