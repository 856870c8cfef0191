"""Per-variant eligibility and request exclusions, end to end on real Redis and chdb.

Variants with an ``eligible`` condition, and variants a request ``exclude``s, are left out of the
decision: the split renormalises over the eligible weights, a learning policy chooses among the
eligible candidates only (and its reward-join record says so), the exposure logs the propensity
over the eligible set, and a placement with nothing eligible gets its default
(``no_eligible_variant``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from bandits.join import DecisionRecord
from decision_api.settings import Settings
from tailor_contract.assignment import variant_index
from tests.decision_api.test_decide import exposures

Client = AsyncTestClient[Litestar]

IN_STOCK_B = {"attribute": "stock_b", "op": "gt", "value": 0}


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app; every test uses keys and placements of its own."""
    return shared_client


@pytest.fixture
def tag() -> str:
    """A suffix making this test's keys, placements and unit ids unique."""
    return uuid.uuid4().hex[:8]


async def running(client: Client, key: str, placement: str, **changes: Any) -> None:
    """Create and start a three-variant experiment (weights 1, 1, 2; ``b`` needs stock)."""
    spec = {
        "key": key,
        "placement": placement,
        "variants": [
            {"key": "a", "weight": 1},
            {"key": "b", "weight": 1, "eligible": IN_STOCK_B},
            {"key": "c", "weight": 2},
        ],
        "default_variant": "a",
        **changes,
    }
    created = await client.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    assert (await client.post(f"/v1/experiments/{key}/start")).status_code == 200


async def decide(client: Client, unit: str, placement: str, **extra: Any) -> dict[str, Any]:
    """One decide call for one placement that must succeed; returns its decision."""
    response = await client.post(
        "/v1/decide", json={"unit_id": unit, "placements": [placement], **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return {"decision_id": body["decision_id"], **body["decisions"][0]}


async def test_split_renormalises_over_eligible_variants(client: Client, tag: str) -> None:
    """Out of stock, ``b`` is never drawn and ``a``/``c`` get 1/3 and 2/3 of the hash space."""
    key, placement = f"elig-{tag}", f"shelf-{tag}"
    await running(client, key, placement)
    seen = set()
    for i in range(60):
        unit = f"u-{tag}-{i}"
        out = await decide(client, unit, placement, context={"stock_b": 0})
        expected = ["a", "c"][variant_index(key, unit, [1, 2])]
        assert (out["variant"], out["reason"], out["policy"]) == (expected, "split", "fixed")
        assert out["propensity"] == pytest.approx({"a": 1 / 3, "c": 2 / 3}[expected])
        seen.add(out["variant"])
        in_stock = await decide(client, unit, placement, context={"stock_b": 3})
        full = ["a", "b", "c"][variant_index(key, unit, [1, 1, 2])]
        assert (in_stock["variant"], in_stock["propensity"]) == (
            full,
            pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5}[full]),
        )
    assert seen == {"a", "c"}
    (row,) = await exposures(client, out["decision_id"])
    assert (row["variant"], row["propensity"], row["reason"]) == (
        out["variant"],
        pytest.approx(out["propensity"]),
        "split",
    )


async def test_exclude_leaves_variants_out_and_nothing_left_is_the_default(
    client: Client, tag: str
) -> None:
    """``exclude`` removes variants per placement; with none left the default says why."""
    key, placement = f"excl-{tag}", f"offer-{tag}"
    await running(client, key, placement)
    context = {"stock_b": 1}
    only_b = await decide(client, f"u-{tag}", placement, context=context,
                          exclude={placement: ["a", "c"]})  # fmt: skip
    assert (only_b["variant"], only_b["propensity"], only_b["reason"]) == ("b", 1.0, "split")
    nothing = await decide(client, f"u-{tag}", placement, context={"stock_b": 0},
                           exclude={placement: ["a", "c"]})  # fmt: skip
    assert (nothing["variant"], nothing["policy"], nothing["reason"]) == (
        "a",
        "default",
        "no_eligible_variant",
    )
    (row,) = await exposures(client, nothing["decision_id"])
    assert (row["reason"], row["propensity"]) == ("no_eligible_variant", 1.0)
    unknown = await decide(client, f"u-{tag}", placement, context=context,
                           exclude={placement: ["zz"]})  # fmt: skip
    assert unknown["reason"] == "split"  # a key the experiment does not have excludes nothing


async def test_learning_policy_chooses_among_eligible_candidates(
    client: Client, tag: str, redis: Redis, shared_settings: Settings
) -> None:
    """Thompson sees only eligible candidates; the join record lists them with the propensity."""
    key, placement = f"ts-{tag}", f"deal-{tag}"
    await running(client, key, placement, policy={"kind": "thompson"})
    prefix = shared_settings.redis.key_prefix
    for i in range(30):
        out = await decide(client, f"u-{tag}-{i}", placement, context={"stock_b": 0},
                           exclude={placement: ["c"]})  # fmt: skip
        assert out["variant"] == "a" and out["reason"] in {"policy", "model_unavailable"}, out
        assert out["propensity"] == 1.0
    both = [
        await decide(client, f"v-{tag}-{i}", placement, context={"stock_b": 0}) for i in range(40)
    ]
    assert {o["variant"] for o in both} == {"a", "c"}
    assert all(o["reason"] == "policy" for o in both)
    last = both[-1]
    raw = None
    for _ in range(200):
        raw = await redis.hget(f"{{{prefix}}}:dec:{last['decision_id']}:{key}", "rec")
        if raw is not None:
            break
        await asyncio.sleep(0.02)
    assert raw is not None
    record = msgspec.json.decode(raw, type=DecisionRecord)
    assert record.candidates == ["a", "c"]
    assert record.candidates[record.chosen] == last["variant"]
    assert record.propensity == pytest.approx(last["propensity"])


@pytest.mark.parametrize(
    ("body", "field", "match"),
    [
        ({"exclude": {"elsewhere": ["a"]}}, "$.exclude", "not one of the requested placements"),
        ({"exclude": {"p": "a"}}, "$.exclude[...]", "Expected `array`"),
        ({"exclude": {"p": ["not a key!"]}}, "$.exclude[...][0]", "regex"),
    ],
)
async def test_bad_exclusions_are_422_naming_the_field(
    client: Client, body: dict[str, Any], field: str, match: str
) -> None:
    """An exclusion for a placement not asked for, or not a list of keys, is a 422."""
    response = await client.post("/v1/decide", json={"unit_id": "u", "placements": ["p"], **body})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert match in response.json()["errors"][0]["message"]


async def test_sensitive_eligibility_is_refused(client: Client, tag: str) -> None:
    """An ``eligible`` condition on a sensitive feature is a 422 naming the variant."""
    spec = {
        "key": f"s-{tag}",
        "placement": f"p-{tag}",
        "variants": [{"key": "a"}, {"key": "b", "eligible": {"attribute": "health",
                                                            "op": "exists"}}],
        "default_variant": "a",
    }  # fmt: skip
    response = await client.post("/v1/experiments", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "$.variants[1].eligible"
    assert "sensitive" in response.json()["errors"][0]["message"]


async def test_bulk_decisions_apply_eligibility_and_recipient_exclusions(
    client: Client, tag: str
) -> None:
    """In a batch, ``eligible`` conditions and each recipient's ``exclude`` apply as in decide."""
    key, placement = f"bulk-{tag}", f"mail-{tag}"
    await running(client, key, placement)
    recipients = [
        {"unit_id": f"r0-{tag}", "context": {"stock_b": 0}},
        {"unit_id": f"r1-{tag}", "context": {"stock_b": 1}, "exclude": {placement: ["a", "c"]}},
        {"unit_id": f"r2-{tag}", "context": {"stock_b": 0}, "exclude": {placement: ["a", "c"]}},
    ]
    response = await client.post(
        "/v1/decide/batch",
        json={"campaign": f"c-{tag}", "placements": [placement], "recipients": recipients},
    )
    assert response.status_code == 200, response.text
    got = [r["decisions"][0] for r in response.json()["recipients"]]
    expected = ["a", "c"][variant_index(key, f"r0-{tag}", [1, 2])]
    assert (got[0]["variant"], got[0]["propensity"]) == (
        expected,
        pytest.approx({"a": 1 / 3, "c": 2 / 3}[expected]),
    )
    assert (got[1]["variant"], got[1]["propensity"], got[1]["reason"]) == ("b", 1.0, "split")
    assert (got[2]["variant"], got[2]["reason"]) == ("a", "no_eligible_variant")
