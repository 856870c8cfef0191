"""The SDK's local evaluator passes the assignment golden vectors the server passes.

Every case goes through :class:`sdk.LocalEvaluator` as a definition would arrive from
``GET /v1/definitions`` (not through ``tailor_contract.assignment`` directly), so the test pins what
the SDK does end to end: salt, hash version, bucket edges, holdout and layer slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sdk import LocalEvaluator, local_eval
from tailor_contract.assignment import HASH_VERSION, in_global_holdout
from tailor_contract.definitions import LayerSlice
from tailor_contract.wire import Definition, Definitions, DefinitionVariant

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "assignment_cases.json"
if not GOLDEN.exists():  # written by the experiments suite; never silently absent in CI
    pytest.skip(f"{GOLDEN} is missing", allow_module_level=True)
CASES: dict[str, Any] = json.loads(GOLDEN.read_text())


def evaluator(*definitions: Definition, global_holdout: float = 0.0) -> LocalEvaluator:
    """A local evaluator with these definitions installed."""
    ev = LocalEvaluator()
    ev.install(
        Definitions(
            version=1,
            hash_version=HASH_VERSION,
            global_holdout=global_holdout,
            kill_switch=False,
            experiments=list(definitions),
            remote_placements=[],
        )
    )
    return ev


def definition(salt: str, weights: list[float], **changes: Any) -> Definition:
    """One running experiment on placement ``p`` with variants ``v0..vn``."""
    fields: dict[str, Any] = {
        "key": "golden",
        "placement": "p",
        "salt": salt,
        "variants": [
            DefinitionVariant(key=f"v{i}", weight=w, payload={}) for i, w in enumerate(weights)
        ],
        "default_variant": "v0",
        "status": "running",
        "version": 1,
    }
    fields.update(changes)
    return Definition(**fields)


def test_file_is_for_this_hash_version() -> None:
    """The vectors are for the hash version the SDK's evaluator accepts."""
    assert CASES["hash_version"] == HASH_VERSION


@pytest.mark.parametrize("case", CASES["assignment"], ids=lambda c: f"{c['salt']}|{c['unit_id']}")
def test_assignment_vectors(case: dict[str, Any]) -> None:
    """Each (salt, unit, weights) case gets the golden variant; propensity is its weight share."""
    ev = evaluator(definition(case["salt"], case["weights"]))
    answer = ev.evaluate(case["unit_id"], "p", {}, True)
    assert (answer.reason, answer.variant) == ("split", f"v{case['variant']}")
    weights = case["weights"]
    assert answer.propensity == pytest.approx(weights[case["variant"]] / sum(weights), rel=1e-12)


@pytest.mark.parametrize("case", CASES["holdout"], ids=lambda c: f"{c['holdout']}|{c['unit_id']}")
def test_holdout_vectors(case: dict[str, Any]) -> None:
    """Units in the golden holdout slice get the default variant with reason ``holdout``."""
    ev = evaluator(definition(case["salt"], [0, 1], holdout=case["holdout"]))
    answer = ev.evaluate(case["unit_id"], "p", {}, True)
    expected = ("holdout", "v0", 1.0) if case["in_holdout"] else ("split", "v1", 1.0)
    assert (answer.reason, answer.variant, answer.propensity) == expected


@pytest.mark.parametrize("case", CASES["layer"], ids=lambda c: f"{c['slice']}|{c['unit_id']}")
def test_layer_vectors(case: dict[str, Any]) -> None:
    """Units outside the experiment's golden layer slice get the default (``outside_layer``)."""
    start, end = case["slice"]
    exp = definition("s", [0, 1], layer=case["layer"], layer_slice=LayerSlice(start=start, end=end))
    answer = evaluator(exp).evaluate(case["unit_id"], "p", {}, True)
    assert answer.reason == ("split" if case["in_layer"] else "outside_layer")
    assert answer.variant == ("v1" if case["in_layer"] else "v0")


@pytest.mark.parametrize("case", CASES["bucket"], ids=lambda c: f"{c['hash']}|{c['weights']}")
def test_bucket_edges(case: dict[str, Any]) -> None:
    """The bucket rule the evaluator uses puts positions on bucket edges where the vectors say."""
    shares = local_eval.cumulative_shares(case["weights"])
    assert local_eval.pick_bucket(case["hash"], shares) == case["variant"]


def test_evaluator_uses_the_contract_functions() -> None:
    """The evaluator calls the contract's hashing and its one placement walk, not copies (the
    server's engine calls the same walk)."""
    from decision_api.decisions import engine
    from tailor_contract import assignment, placement

    assert local_eval.unit_hash is assignment.unit_hash
    assert local_eval.pick_bucket is assignment.pick_bucket
    assert local_eval.walk is placement.walk
    assert engine.walk is placement.walk


def test_global_holdout_matches_the_server_rule() -> None:
    """The service-wide holdout share sends exactly the units ``in_global_holdout`` names."""
    ev = evaluator(definition("s", [0, 1]), global_holdout=0.2)
    units = [f"u{i}" for i in range(2000)]
    held = {u for u in units if ev.evaluate(u, "p", {}, True).reason == "global_holdout"}
    assert held == {u for u in units if in_global_holdout(u, 0.2)}
    assert 300 < len(held) < 500  # 2000 * 0.2 = 400, +- 5 sd


def test_other_hash_version_disables_local_evaluation() -> None:
    """Definitions for another hash version are installed but never used to decide."""
    ev = LocalEvaluator()
    ev.install(
        Definitions(
            version=1,
            hash_version=HASH_VERSION + 1,
            global_holdout=0.0,
            kill_switch=False,
            experiments=[],
            remote_placements=[],
        )
    )
    assert not ev.ready
    assert not ev.can_evaluate("p")


DECISIONS: dict[str, Any] = json.loads((GOLDEN.parent / "decision_cases.json").read_text())


@pytest.mark.parametrize("case", DECISIONS["cases"], ids=lambda c: c["name"])
def test_local_evaluator_decides_as_the_golden_file_says(case: dict[str, Any]) -> None:
    """Whole decisions (walk order, reasons, variants) match the file the server passes; the
    caller passes the unit's profile attributes with the context, as local evaluation needs."""
    spec = case["definitions"]
    ev = LocalEvaluator()
    ev.install(
        Definitions(
            version=1,
            hash_version=DECISIONS["hash_version"],
            global_holdout=spec["global_holdout"],
            kill_switch=spec["kill_switch"],
            experiments=[msgspec.convert(e, Definition) for e in spec["experiments"]],
            remote_placements=[],
        )
    )
    attributes = {**case["profile"], **case["context"]}
    for placement, expected in case["expected"].items():
        answer = ev.evaluate(case["unit_id"], placement, attributes, case["consent"])
        got = {"experiment": answer.experiment, "variant": answer.variant, "reason": answer.reason}
        assert got == expected, placement
