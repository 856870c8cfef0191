"""Experiment definitions: decode-time validation, defaults and the stored form."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tailor_contract.definitions import (
    Experiment,
    ExperimentSpec,
    RewardRule,
    Status,
    check_sensitive,
)
from tailor_contract.policies import FixedConfig

BASE: dict[str, Any] = {
    "key": "hero-banner",
    "placement": "home_hero",
    "variants": [
        {"key": "control", "weight": 1, "payload": {"img": "a.png"}},
        {"key": "spring", "weight": 1, "payload": {"img": "b.png"}},
    ],
    "default_variant": "control",
}


def spec(**changes: Any) -> ExperimentSpec:
    """The base definition with some fields changed, decoded as the API decodes it."""
    return msgspec.convert({**BASE, **changes}, ExperimentSpec)


def test_issue_example_decodes_with_every_field() -> None:
    """The definition from the interface section decodes and keeps every field."""
    exp = spec(
        policy={"kind": "fixed"},
        targeting={"all": [{"attribute": "device", "op": "eq", "value": "mobile"}]},
        holdout=0.05,
        layer="home",
        primary_metric="purchase",
        guardrail_metrics=["unsubscribe"],
        reward_window_s=1800,
        hypothesis="Spring imagery lifts purchases",
    )
    assert exp.policy == FixedConfig()
    assert exp.holdout == 0.05
    assert exp.layer == "home"
    assert exp.guardrail_metrics == ["unsubscribe"]
    assert exp.reward_window_s == 1800
    assert exp.variant("spring").payload == {"img": "b.png"}
    assert exp.targeting is not None and exp.targeting.attributes() == {"device"}


def test_defaults() -> None:
    """Omitted fields take their documented defaults (fixed policy, no holdout, key as salt)."""
    exp = spec()
    assert exp.policy == FixedConfig()
    assert (exp.holdout, exp.traffic, exp.layer, exp.targeting) == (0.0, 1.0, None, None)
    assert exp.hash_salt == "hero-banner"
    assert spec(salt="s2").hash_salt == "s2"
    assert exp.reward_rules == [RewardRule(type="conversion")]


def test_variant_lookup_raises_for_unknown_keys() -> None:
    """Looking up a variant that does not exist is a KeyError, not None."""
    with pytest.raises(KeyError, match="nope"):
        spec().variant("nope")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"variants": [{"key": "control", "weight": 0}, {"key": "spring", "weight": 0}]},
         "variants: weights must sum to a positive total"),
        ({"variants": [{"key": "control", "weight": -1}]},
         r">= 0.0 - at `\$.variants\[0\].weight`"),
        ({"variants": []}, r"variants: a content experiment needs at least one variant"),
        ({"variants": [{"key": "control"}, {"key": "control"}]},
         r"variants\[1\].key: duplicate variant key 'control'"),
        ({"default_variant": "autumn"}, "default_variant: 'autumn' is not one of the variants"),
        ({"key": "bad key"}, r"matching regex .* - at `\$.key`"),
        ({"key": "x" * 65}, r"at `\$.key`"),
        ({"placement": ""}, r"at `\$.placement`"),
        ({"holdout": 0.95}, r"<= 0.9 - at `\$.holdout`"),
        ({"holdout": -0.1}, r">= 0.0 - at `\$.holdout`"),
        ({"traffic": 0}, r"> 0.0 - at `\$.traffic`"),
        ({"policy": {"kind": "nope"}}, r"at `\$.policy.kind`"),
        ({"primary_metric": "Purchase!"}, r"at `\$.primary_metric`"),
        ({"reward_window_s": 0}, r">= 1 - at `\$.reward_window_s`"),
        ({"reward": {"min_reward": 2, "max_reward": 1}}, r"min_reward must be <= max_reward"),
        ({"targeting": {"attribute": "x", "op": "bogus", "value": 1}},
         r"at `\$.targeting.op`"),
        ({"frequency_cap": {"max_exposures": 0, "window_s": 60}},
         r"at `\$.frequency_cap.max_exposures`"),
        ({"status": "running"}, "unknown field `status`"),
    ],
)  # fmt: skip
def test_invalid_definitions(changes: dict[str, Any], match: str) -> None:
    """A definition that breaks a rule fails at decode time with a message naming the field."""
    with pytest.raises(msgspec.ValidationError, match=match):
        spec(**changes)


def test_zero_weight_variants_are_allowed_when_the_total_is_positive() -> None:
    """A variant may be switched off with weight 0 as long as another has weight."""
    exp = spec(variants=[{"key": "control", "weight": 0}, {"key": "spring", "weight": 2}])
    assert [v.weight for v in exp.variants] == [0, 2]


def test_stored_experiment_round_trips_and_gives_back_its_spec() -> None:
    """An Experiment encodes and decodes unchanged, and ``spec()`` drops the managed fields."""
    original = spec(layer="home", targeting={"attribute": "vip", "op": "eq", "value": True})
    fields = {f: getattr(original, f) for f in ExperimentSpec.__struct_fields__}
    stored = Experiment(**fields, status=Status.RUNNING, version=3, created_at=1.0)
    decoded = msgspec.json.decode(msgspec.json.encode(stored), type=Experiment)
    assert decoded == stored
    assert decoded.spec() == original


@pytest.mark.parametrize(
    ("targeting", "match"),
    [
        ({"attribute": "health", "op": "exists"}, r"\['health'\]"),
        ({"any": [{"attribute": "device", "op": "eq", "value": "x"},
                  {"all": [{"attribute": "religion", "op": "eq", "value": "x"}]}]},
         r"\['religion'\]"),
    ],
)  # fmt: skip
def test_sensitive_features_cannot_be_targeted(targeting: dict[str, Any], match: str) -> None:
    """Targeting on a denylisted feature, at any depth, is refused."""
    denylist = frozenset({"health", "religion"})
    with pytest.raises(ValueError, match=match):
        check_sensitive(spec(targeting=targeting), denylist)
    check_sensitive(spec(targeting={"attribute": "device", "op": "exists"}), denylist)
