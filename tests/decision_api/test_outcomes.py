"""Outcomes: by decision id, by unit + experiment, in batches — each lands in ClickHouse once."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.services import Services
from tests.support.polling import eventually

pytestmark = pytest.mark.redis_cluster

T = TypeVar("T")
Client = AsyncTestClient[Litestar]

OUTCOME_SQL = """
SELECT toString(event_id), toUnixTimestamp64Milli(ts), decision_id, unit_id, experiment, type,
       value, properties
FROM outcomes WHERE event_id IN {ids:Array(UUID)} ORDER BY ts, type
"""
FIELDS = ("event_id", "ts_ms", "decision_id", "unit_id", "experiment", "type", "value",
          "properties")  # fmt: skip


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app; every test uses ids of its own."""
    return shared_client


@pytest.fixture
def tag() -> str:
    """A suffix making this test's keys and unit ids unique."""
    return uuid.uuid4().hex[:8]



async def outcome_rows(client: Client, event_ids: list[str]) -> list[dict[str, Any]]:
    """The outcome rows with these event ids, once all of them are in the table."""
    services: Services = client.app.state.services
    ids = [str(uuid.UUID(e)) for e in event_ids]

    async def probe() -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(services.event_log.query, OUTCOME_SQL, {"ids": ids})
        if len(rows) < len(ids):
            return []
        return [dict(zip(FIELDS, r, strict=True)) for r in rows]

    return await eventually(probe)


async def test_outcome_by_decision_id(client: Client, tag: str) -> None:
    """An outcome naming its decision is accepted (202) and stored with every field."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    spec = {"key": key, "placement": placement, "variants": [{"key": "a"}, {"key": "b"}],
            "default_variant": "a", "primary_metric": "purchase"}  # fmt: skip
    await client.post("/v1/experiments", json=spec)
    await client.post(f"/v1/experiments/{key}/start")
    unit = f"u-{tag}"
    decision = await client.post("/v1/decide", json={"unit_id": unit, "placements": [placement]})
    decision_id = decision.json()["decision_id"]
    when = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=250_000)
    body = {"decision_id": decision_id, "unit_id": unit, "type": "purchase", "value": 42.5,
            "ts": when.isoformat(), "properties": {"sku": "A-1"}}  # fmt: skip
    response = await client.post("/v1/outcomes", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["accepted"] == 1
    (row,) = await outcome_rows(client, accepted["event_ids"])
    assert uuid.UUID(row.pop("event_id")) == uuid.UUID(accepted["event_ids"][0])
    assert row == {
        "ts_ms": int(when.timestamp()) * 1000 + 250,
        "decision_id": decision_id,
        "unit_id": unit,
        "experiment": "",
        "type": "purchase",
        "value": 42.5,
        "properties": {"sku": "A-1"},
    }


async def test_outcome_by_unit_and_experiment(client: Client, tag: str) -> None:
    """Without a decision id, an outcome is stored against the unit and experiment it names."""
    before = time.time_ns() // 1_000_000
    body = {"unit_id": f"u-{tag}", "experiment": f"hero-{tag}", "type": "click"}
    response = await client.post("/v1/outcomes", json=body)
    assert response.status_code == 202, response.text
    (row,) = await outcome_rows(client, response.json()["event_ids"])
    assert (row["decision_id"], row["unit_id"], row["experiment"], row["type"], row["value"]) == (
        "",
        f"u-{tag}",
        f"hero-{tag}",
        "click",
        0.0,
    )
    assert before <= row["ts_ms"] <= time.time_ns() // 1_000_000  # stamped on arrival


async def test_outcome_batch(client: Client, tag: str) -> None:
    """The batch endpoint stores every outcome of the batch, each with its own event id."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    outcomes = [
        {"unit_id": f"u-{tag}-{i}", "experiment": f"hero-{tag}", "type": "purchase",
         "value": float(i), "ts": f"{yesterday}T05:06:{i:02d}Z"}
        for i in range(25)
    ]  # fmt: skip
    response = await client.post("/v1/outcomes/batch", json={"outcomes": outcomes})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["accepted"] == 25
    assert len(set(accepted["event_ids"])) == 25
    rows = await outcome_rows(client, accepted["event_ids"])
    assert [(r["unit_id"], r["value"]) for r in rows] == [
        (f"u-{tag}-{i}", float(i)) for i in range(25)
    ]
