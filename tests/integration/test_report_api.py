"""Reports end to end: traffic with a planted effect logged through the API, read back as JSON."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.services import Services

Client = AsyncTestClient[Litestar]

UNITS = 2400
RATES = {"control": 0.20, "bold": 0.32}  # true conversion rates per variant
HOLDOUT_RATE = 0.12
PRICE = 40.0


def services_of(client: Client) -> Services:
    """The app's open services."""
    services: Services = client.app.state.services
    return services


async def flushed(client: Client, table: str, expected: int) -> None:
    """Flush the writer and wait until ``expected`` rows of ``table`` are queryable."""
    services = services_of(client)
    deadline = time.monotonic() + 10
    while True:
        await asyncio.to_thread(client.blocking_portal.call, services.writer.flush)
        rows = await asyncio.to_thread(services.event_log.query, f"SELECT count() FROM {table}")
        if rows[0][0] >= expected or time.monotonic() > deadline:
            assert rows[0][0] >= expected
            return
        await asyncio.sleep(0.05)


async def planted_experiment(client: Client, key: str, rng: np.random.Generator) -> dict[str, int]:
    """Run ``UNITS`` units through decide and their purchases through outcomes.

    Returns the units per arm. Purchases follow ``RATES`` (``HOLDOUT_RATE`` in the holdout);
    a fifth of the outcomes carry only their decision id, the rest only the unit id.
    """
    spec = {
        "key": key,
        "placement": f"hero-{key}",
        "variants": [{"key": "control", "weight": 1}, {"key": "bold", "weight": 1}],
        "default_variant": "control",
        "holdout": 0.1,
        "primary_metric": "purchase",
        "guardrail_metrics": ["unsubscribe"],
        "reward_window_s": 3600,
        "reward": {"rules": [{"type": "purchase", "reward": 1.0}]},
    }
    assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    assert (await client.post(f"/v1/experiments/{key}/start")).status_code == 200
    arms: dict[str, int] = {}
    outcomes: list[dict[str, Any]] = []
    devices = ["mobile", "desktop"]
    for i in range(UNITS):
        unit = f"{key}-u{i}"
        body = {
            "unit_id": unit,
            "placements": [f"hero-{key}"],
            "context": {"device": devices[i % 2]},
        }
        answer = (await client.post("/v1/decide", json=body)).json()
        d = answer["decisions"][0]
        arm = "~holdout" if d["reason"] == "holdout" else d["variant"]
        arms[arm] = arms.get(arm, 0) + 1
        rate = HOLDOUT_RATE if arm == "~holdout" else RATES[arm]
        if rng.random() < rate:
            who = (
                {"decision_id": answer["decision_id"]}
                if i % 5 == 0
                else {"unit_id": unit, "experiment": key}
            )
            outcomes.append({**who, "type": "purchase", "value": PRICE})
    for start in range(0, len(outcomes), 1000):
        batch = {"outcomes": outcomes[start : start + 1000]}
        assert (await client.post("/v1/outcomes/batch", json=batch)).status_code == 202
    await flushed(client, "exposures", UNITS)
    await flushed(client, "outcomes", len(outcomes))
    return arms


@pytest.mark.slow
async def test_report_recovers_a_planted_effect(client: Client) -> None:
    """A +12 pp effect planted in traffic logged through the API lies inside the report's
    intervals, the verdict names the winner, and holdout uplift and off-policy values appear."""
    key = "planted"
    arms = await planted_experiment(client, key, np.random.default_rng(7))
    params = {"segment": "device", "horizon_units": str(UNITS), "off_policy": "true"}
    response = await client.get(f"/v1/experiments/{key}/report", params=params)
    assert response.status_code == 200, response.text
    report = response.json()

    assert {a["arm"]: a["units"] for a in report["arms"]} == arms
    primary = report["metrics"][0]
    assert primary["metric"] == "purchase" and primary["role"] == "primary"
    rate_cmp = next(c for c in primary["comparisons"] if c["measure"] == "conversion_rate")
    truth = RATES["bold"] - RATES["control"]
    for interval in (rate_cmp["lift"]["absolute"], rate_cmp["sequential"]["absolute"]):
        assert interval["lower"] <= truth <= interval["upper"]
    value_cmp = next(c for c in primary["comparisons"] if c["measure"] == "value_per_unit")
    assert value_cmp["lift"]["absolute"]["lower"] <= truth * PRICE
    assert truth * PRICE <= value_cmp["lift"]["absolute"]["upper"]
    assert rate_cmp["significant"] and rate_cmp["direction"] == "better"
    assert report["verdict"]["status"] == "winner"
    assert report["verdict"]["headline"].startswith("bold beats control on purchase: +")
    assert "no sample-ratio problem" in report["verdict"]["headline"]
    assert report["sample_ratio"]["mismatch"] is False

    uplift = report["uplift"]["overall"][0]
    assert uplift["holdout"] == "experiment" and uplift["holdout_units"] == arms["~holdout"]
    personalised_truth = (RATES["control"] + RATES["bold"]) / 2 - HOLDOUT_RATE
    assert uplift["rate_lift"]["lower"] <= personalised_truth <= uplift["rate_lift"]["upper"]
    assert {u["segment"] for u in report["uplift"]["by_segment"]} == {"mobile", "desktop"}
    assert {r["segment"] for r in report["segments"]["rows"]} == {"mobile", "desktop"}

    ope = {p["policy"]: p["estimate"] for p in report["off_policy"]["policies"]}
    assert set(ope) == {"deployed", "uniform", "always:control", "always:bold"}
    for policy, rate in (("always:bold", RATES["bold"]), ("always:control", RATES["control"])):
        assert ope[policy]["ips"]["lower"] <= rate <= ope[policy]["ips"]["upper"]
    assert report["off_policy"]["decisions_used"] == arms["control"] + arms["bold"]

    text = await client.get(f"/v1/experiments/{key}/report", params={**params, "format": "text"})
    assert text.status_code == 200
    assert text.text.splitlines()[3] == report["verdict"]["headline"]

    plan = await client.get(
        f"/v1/experiments/{key}/plan",
        params={"mde": "0.05", "power": "0.9", "horizon_units": "2400"},
    )
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert body == report["plan"] | body  # same fields as the report's section
    assert body["test"] == "always_valid" and body["power"] == 0.9
    assert body["relative_effect"] == pytest.approx(0.05)
    assert body["units_per_arm"] == min(arms["control"], arms["bold"])
    assert body["more_units"] == 2 * (body["units_per_arm_needed"] - body["units_per_arm"])
    assert body["sentence"].startswith(f"About {body['more_units']:,} more units to detect")
    assert report["plan"]["relative_effect"] == pytest.approx(0.1)
    bad = await client.get(f"/v1/experiments/{key}/plan", params={"power": "1.5"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "$.power"
