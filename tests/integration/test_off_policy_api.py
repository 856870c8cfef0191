"""``POST /v1/experiments/{key}/off-policy`` end to end: a rule table, "always X" and the current
model (pmf and greedy) evaluated on decisions logged through the API."""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.integration.test_learning_loop import definition, start
from tests.integration.test_what_if_api import (
    own_key,
    quiet_client,
    quiet_module_client,
    uniform_log,
)

__all__ = ["quiet_client", "quiet_module_client"]

# seg x clicks on a, seg y on c (see test_what_if_api.CLICKS).
RULES = {
    "kind": "rules",
    "rules": [{"when": {"attribute": "seg", "op": "eq", "value": "x"}, "variant": "a"}],
    "otherwise": {"c": 1.0},
}


async def test_a_rule_table_that_suits_each_segment_earns_every_click(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    client = quiet_client
    await start(client, definition("op", {"kind": "fixed"}))
    clicks = await uniform_log(client, 300)
    got = await client.post("/v1/experiments/op/off-policy", json={"target": RULES})
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["n"] == 300 and answer["target"] == "rules"
    assert answer["cells"] == {"rule 0": 150, "otherwise": 150}
    estimate = answer["estimate"]
    # Every row the rule table would have chosen was clicked: SNIPS and DR are exactly 1.
    assert estimate["snips"]["estimate"] == pytest.approx(1.0)
    assert estimate["doubly_robust"]["estimate"] == pytest.approx(1.0, abs=0.01)
    assert estimate["doubly_robust"]["upper"] <= 1.0
    assert estimate["ips"]["upper"] <= 1.0  # clipped to the reward's range
    assert answer["deployed"]["estimate"] == pytest.approx(clicks / 300)
    assert answer["difference"]["lower"] > 0.4
    assert answer["warnings"] == []  # weights of 3 are no support problem
    always_b = await client.post(
        "/v1/experiments/op/off-policy", json={"target": {"kind": "always", "variant": "b"}}
    )
    assert always_b.status_code == 200, always_b.text
    assert always_b.json()["estimate"]["ips"] == {
        "estimate": 0.0,
        "lower": 0.0,
        "upper": 0.0,
        "level": 0.95,
    }


async def test_the_current_model_greedy_is_read_from_the_published_snapshot(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    client = quiet_client
    await start(client, definition("om", {"kind": "thompson", "segment_by": "seg"}))
    await uniform_log(client, 300)
    before = await client.post(
        "/v1/experiments/om/off-policy", json={"target": {"kind": "current_greedy"}}
    )
    assert before.status_code == 409, before.text
    assert [e["field"] for e in before.json()["errors"]] == ["$.target.kind"]
    warmed = await client.post("/v1/experiments/om/model/warm-start")
    assert warmed.status_code == 200, warmed.text
    greedy = await client.post(
        "/v1/experiments/om/off-policy", json={"target": {"kind": "current_greedy"}}
    )
    assert greedy.status_code == 200, greedy.text
    answer = greedy.json()
    # The warm model prefers a in seg x and c in seg y: greedy, it earns every click.
    assert answer["cells"]["prefers a"] == 150 and answer["cells"]["prefers c"] == 150
    assert answer["estimate"]["snips"]["estimate"] == pytest.approx(1.0)
    pmf = await client.post("/v1/experiments/om/off-policy", json={"target": {"kind": "current"}})
    assert pmf.status_code == 200, pmf.text
    value = pmf.json()["estimate"]["snips"]["estimate"]
    assert 0.5 < value < 1.0  # the model still explores a little


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"kind": "always", "variant": "z"}, "$.target.variant"),
        ({**RULES, "otherwise": {"a": 0.5, "b": 0.2}}, "$.target.otherwise"),
        ({**RULES, "rules": [{"when": {"attribute": "seg"}, "variant": "a"}]}, "$.target"),
        ({"kind": "nope"}, "$.target"),
        ({"kind": "current"}, "$.target.kind"),
    ],
)
async def test_a_bad_target_is_a_4xx_naming_the_field(
    quiet_module_client: AsyncTestClient[Litestar], target: dict[str, object], field: str
) -> None:
    client, key = quiet_module_client, own_key("ob")
    await start(client, definition(key, {"kind": "fixed"}, placement=key))
    await uniform_log(client, 4, placement=key)
    got = await client.post(f"/v1/experiments/{key}/off-policy", json={"target": target})
    assert got.status_code in (409, 422), got.text
    problem = got.json()
    fields = [e["field"] for e in problem.get("errors", [])] + [problem.get("field")]
    assert any(f is not None and f.startswith(field) for f in fields), problem


async def test_without_logged_decisions_it_is_a_409(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    await start(quiet_client, definition("oe", {"kind": "fixed"}))
    got = await quiet_client.post(
        "/v1/experiments/oe/off-policy", json={"target": {"kind": "uniform"}}
    )
    assert got.status_code == 409, got.text


async def test_the_report_adds_requested_targets_to_its_off_policy_section(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    client = quiet_client
    await start(client, definition("or", {"kind": "fixed"}))
    await uniform_log(client, 120)
    target = json.dumps(RULES)
    got = await client.get("/v1/experiments/or/report", params={"target": target})
    assert got.status_code == 200, got.text
    policies = {p["policy"]: p for p in got.json()["off_policy"]["policies"]}
    assert {"deployed", "uniform", "always:a", "target:rules"} <= set(policies)
    added = policies["target:rules"]
    assert "on the latest 120 logged decisions" in added["description"]
    assert added["estimate"]["snips"]["estimate"] == pytest.approx(1.0)
    # The same logs and arithmetic as the report's own "always a" (per-cell sums in SQL).
    always_a = json.dumps({"kind": "always", "variant": "a"})
    both = await client.get("/v1/experiments/or/report", params={"target": always_a})
    by_name = {p["policy"]: p["estimate"] for p in both.json()["off_policy"]["policies"]}
    for estimator in ("ips", "snips", "doubly_robust"):
        for bound in ("estimate", "lower", "upper"):
            assert by_name["target:always"][estimator][bound] == pytest.approx(
                by_name["always:a"][estimator][bound], abs=1e-9
            ), (estimator, bound)
    text = await client.get(
        "/v1/experiments/or/report", params={"target": target, "format": "text"}
    )
    assert text.status_code == 200 and "target:rules" in text.text
    page = await client.get("/reports/or", params={"target": target})
    assert page.status_code == 200 and "target:rules" in page.text
    bad = await client.get(
        "/v1/experiments/or/report", params={"target": '{"kind": "always", "variant": "z"}'}
    )
    assert bad.status_code == 422, bad.text
    assert [e["field"] for e in bad.json()["errors"]] == ["$.target.variant"]
    junk = await client.get("/v1/experiments/or/report", params={"target": "{kind"})
    assert junk.status_code == 422 and junk.json()["errors"][0]["field"] == "target"


async def test_a_saved_model_version_can_be_evaluated_after_a_reset(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    """``POST .../model/save`` keeps the warm model; after a reset (which also saves what it
    replaces) ``{"kind": "saved", "version": n, "greedy": true}`` still evaluates that model —
    it earns every click, as the current model did before the reset — while the fresh current
    model does not; an unknown version is a 409 naming ``$.target.version``."""
    client = quiet_client
    await start(client, definition("sv", {"kind": "thompson", "segment_by": "seg"}))
    await uniform_log(client, 300)
    assert (await client.post("/v1/experiments/sv/model/save")).status_code == 409  # untrained
    warmed = await client.post("/v1/experiments/sv/model/warm-start")
    assert warmed.status_code == 200, warmed.text
    saved = await client.post("/v1/experiments/sv/model/save")
    assert saved.status_code == 200, saved.text
    version = saved.json()["version"]
    assert saved.json()["saved_versions"] == [version]
    before = await client.post(
        "/v1/experiments/sv/off-policy", json={"target": {"kind": "current_greedy"}}
    )
    assert (await client.post("/v1/experiments/sv/model/reset")).status_code == 200
    model = (await client.get("/v1/experiments/sv/model")).json()
    assert model["saved_versions"] == [version]
    target = {"kind": "saved", "version": version, "greedy": True}
    got = await client.post("/v1/experiments/sv/off-policy", json={"target": target})
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["target"] == "saved"
    assert (
        answer["description"]
        == f"saved model version {version}, greedy (its most probable variant)"
    )
    assert answer["estimate"] == before.json()["estimate"]
    assert answer["estimate"]["snips"]["estimate"] == pytest.approx(1.0)
    fresh = await client.post(
        "/v1/experiments/sv/off-policy", json={"target": {"kind": "current_greedy"}}
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["estimate"]["snips"]["estimate"] < 0.9
    report = await client.get("/v1/experiments/sv/report", params={"target": json.dumps(target)})
    assert report.status_code == 200, report.text
    named = [p for p in report.json()["off_policy"]["policies"] if p["policy"] == "target:saved"]
    assert named and named[0]["description"].startswith(f"saved model version {version}")
    assert named[0]["estimate"]["snips"]["estimate"] == pytest.approx(1.0)
    missing = await client.post(
        "/v1/experiments/sv/off-policy", json={"target": {"kind": "saved", "version": 999}}
    )
    assert missing.status_code == 409, missing.text
    assert "$.target.version" in missing.text and f"saved: {version}" in missing.text
