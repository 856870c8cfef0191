"""Reports of an experiment nobody has seen yet still render (JSON, text and the page)."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

SPEC = {
    "key": "quiet",
    "placement": "quiet_slot",
    "variants": [{"key": "a"}, {"key": "b"}],
    "default_variant": "a",
}


async def test_reports_without_traffic(client: AsyncTestClient[Litestar]) -> None:
    """No units yet: every report format answers 200 rather than failing on empty tables."""
    assert (await client.post("/v1/experiments", json=SPEC)).status_code == 201
    assert (await client.post("/v1/experiments/quiet/start")).status_code == 200
    as_json = await client.get("/v1/experiments/quiet/report")
    assert as_json.status_code == 200, as_json.text
    as_text = await client.get("/v1/experiments/quiet/report", params={"format": "text"})
    assert as_text.status_code == 200, as_text.text
    assert "quiet" in as_text.text
    page = await client.get("/reports/quiet")
    assert page.status_code == 200
