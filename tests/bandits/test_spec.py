"""PolicySpec.example: training examples of finalised decision records."""

from __future__ import annotations

from bandits.base import Arm, Candidate
from bandits.join import DecisionRecord
from bandits.spec import PolicySpec
from tailor_contract.policies import VWCBConfig

SPEC = PolicySpec(
    experiment="e",
    experiment_version=1,
    config=VWCBConfig(),
    arms=tuple(Arm(key=k) for k in ("a", "b", "c")),
    candidates=tuple(Candidate(key=k, features={"n": float(i)}) for i, k in enumerate("abc")),
)


def _record(candidates: list[str], chosen: int) -> DecisionRecord:
    return DecisionRecord(decision_id="d", experiment="e", experiment_version=1, unit_id="u",
                          candidates=candidates, chosen=chosen, propensity=0.5,
                          model_version="1", context={"x": "y"}, decided_ms=0)  # fmt: skip


def test_a_decision_among_all_variants_shares_the_specs_candidates() -> None:
    """Every example of a decision among all variants, in order, carries the spec's own tuple
    (the policies reuse what they prepared for it, by identity)."""
    one = SPEC.example(_record(["a", "b", "c"], 1), 1.0)
    two = SPEC.example(_record(["a", "b", "c"], 2), 0.0)
    assert one is not None and two is not None
    assert one.candidates is SPEC.candidates and two.candidates is SPEC.candidates
    assert one.chosen_key == "b" and two.chosen_key == "c"


def test_a_subset_or_another_order_gets_its_own_candidates() -> None:
    """Eligible subsets and other orders keep the record's candidates, in its order, with the
    spec's features; a variant removed since the decision drops the example."""
    subset = SPEC.example(_record(["c", "a"], 0), 1.0)
    assert subset is not None
    assert [c.key for c in subset.candidates] == ["c", "a"]
    assert subset.candidates[0] is SPEC.candidates[2] and subset.chosen_key == "c"
    assert SPEC.example(_record(["a", "b", "z"], 0), 1.0) is None
    assert SPEC.example(_record(["a", "b"], 0), 1.0) is not None
