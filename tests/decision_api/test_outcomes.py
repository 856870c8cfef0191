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

from bandits.join import DecisionRecord
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


async def test_an_outcome_flushes_the_reward_join_only_for_decisions_not_written_yet(
    client: Client, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click on a decision already in Redis is joined without flushing the join (no script
    call per outcome for other decisions' records); one on a decision still queued in this
    worker flushes first and is joined too."""
    key, placement = f"learn-{tag}", f"learn-{tag}"
    spec = {"key": key, "placement": placement, "variants": [{"key": "a"}, {"key": "b"}],
            "default_variant": "a", "policy": {"kind": "thompson"}, "reward_window_s": 3600,
            "reward": {"rules": [{"type": "click"}]}}  # fmt: skip
    assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    assert (await client.post(f"/v1/experiments/{key}/start")).status_code == 200
    services: Services = client.app.state.services
    join = services.learning.join

    async def decide(unit: str) -> str:
        for _ in range(100):  # until the worker's cache serves the new experiment
            body = {"unit_id": unit, "placements": [placement]}
            got = (await client.post("/v1/decide", json=body)).json()
            if got["decisions"][0]["reason"] == "policy":
                return str(got["decision_id"])
            await asyncio.sleep(0.05)
        raise AssertionError("the experiment was never served")

    written = await decide(f"w-{tag}")

    async def written_by_the_flusher() -> bool:  # the app's own loop writes it within 20 ms
        return not join.holds(written, None)

    await eventually(written_by_the_flusher, what="the decision written")
    flushes: list[int] = []
    held: list[bool] = []
    real_flush, real_holds = join.flush, join.holds

    async def counted() -> int:
        flushes.append(join.pending)
        return await real_flush()

    def asked(decision_id: str | None, unit_id: str | None) -> bool:
        held.append(real_holds(decision_id, unit_id))
        return held[-1]

    monkeypatch.setattr(join, "flush", counted)
    monkeypatch.setattr(join, "holds", asked)
    clicked = await client.post("/v1/outcomes", json={"decision_id": written, "type": "click"})
    assert (clicked.status_code, clicked.json()["joined"]) == (202, 1)
    assert (held, flushes) == ([False], [])
    queued = uuid.uuid4().hex  # a decision this worker has not written yet (made a moment ago)
    record = DecisionRecord(
        decision_id=queued, experiment=key, experiment_version=1, unit_id=f"q-{tag}",
        candidates=["a", "b"], chosen=1, propensity=0.5, model_version="0", context={},
        decided_ms=time.time_ns() // 1_000_000,
    )  # fmt: skip
    join.remember(record, services.learning.rules[key])
    pending = await client.post("/v1/outcomes", json={"decision_id": queued, "type": "click"})
    assert (pending.status_code, pending.json()["joined"]) == (202, 1)
    # Flushed exactly when the join still held it (the app's 20 ms flusher may win the race).
    assert len(held) == 2 and len(flushes) == int(held[1])
