"""Export and erasure on both event-log backends: chdb in-process and a ClickHouse server over HTTP
(``ALTER TABLE ... DELETE`` with ``mutations_sync`` must work through clickhouse-connect too)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.settings import Settings
from tests.support.clickhouse_front import running_clickhouse_front

UNIT = "backend-unit-1"
HERO = {
    "key": "hero",
    "placement": "home",
    "variants": [{"key": "control"}, {"key": "spring"}],
    "default_variant": "control",
}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ClickHouse HTTP front over its own chdb directory, for the whole module."""
    with running_clickhouse_front(tmp_path_factory.mktemp("rights") / "chdb") as dsn:
        yield dsn


@pytest.fixture(params=["chdb", "http"])
def backend_settings(
    request: pytest.FixtureRequest, settings: Settings, chdb_dir: Path, namespace: str
) -> Settings:
    """The test's settings with its own database on one backend."""
    if request.param == "chdb":
        url = f"chdb://{chdb_dir}?database={namespace}"
    else:
        dsn = request.getfixturevalue("front")
        url = urlunsplit(urlsplit(dsn)._replace(path="/" + namespace))
    event_log = msgspec.structs.replace(settings.event_log, url=url)
    return msgspec.structs.replace(settings, event_log=event_log)


async def test_export_then_erase(backend_settings: Settings) -> None:
    """The export lists the unit's rows (raw and pseudonymised, outcomes by decision id); the
    erasure removes all of them and leaves one audit entry under the pseudonym."""
    async with AsyncTestClient(app=create_app(backend_settings)) as client:
        await client.post("/v1/experiments", json=HERO)
        await client.post("/v1/experiments/hero/start")
        decisions = []
        for consent in (True, False):
            body = {"unit_id": UNIT, "placements": ["home"], "consent": consent}
            decisions.append((await client.post("/v1/decide", json=body)).json()["decision_id"])
        outcome = {"decision_id": decisions[0], "type": "purchase", "value": 3.0}
        assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202

        export = (await client.get(f"/v1/units/{UNIT}/export")).json()
        assert {e["decision_id"] for e in export["exposures"]} == set(decisions)
        assert [o["decision_id"] for o in export["outcomes"]] == [decisions[0]]

        erased = (await client.delete(f"/v1/units/{UNIT}")).json()
        assert erased["event_log_rows"] == {"exposures": 2, "outcomes": 1}

        services = client.app.state.services
        await asyncio.to_thread(client.blocking_portal.call, services.writer.flush)
        log = services.event_log
        left = await asyncio.to_thread(
            log.query,
            "SELECT (SELECT count() FROM exposures) + (SELECT count() FROM outcomes)",
        )
        assert left == [(0,)]
        audit = await asyncio.to_thread(
            log.query, "SELECT entity_key FROM audit WHERE action = 'erase'"
        )
        assert audit == [(erased["pseudonym"],)]
