"""Write ``decision_cases.json``: whole placement decisions that the server and the SDK pin.

Each case gives definitions (live experiments, kill switch, global holdout), a unit with its
profile, request context and consent, and for each placement the expected experiment, variant
and reason code (as GrowthBook's ``cases.json`` pins whole experiment runs). The *reason* of
every case is written here by hand, from the placement walk's rules; the variant of a ``split``
is the hash's answer. The generator refuses to write a file whose computed reasons disagree
with the hand-written ones, so regenerating cannot silently change the rules.

    .venv/bin/python tests/golden/make_decision_cases.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from sdk import LocalEvaluator
from tailor_contract.assignment import HASH_VERSION, in_global_holdout, in_holdout, in_layer
from tailor_contract.definitions import LayerSlice
from tailor_contract.wire import Definitions

OUT = Path(__file__).with_name("decision_cases.json")


def exp(key: str, placement: str = "hero", **fields: Any) -> dict[str, Any]:
    """A running fixed experiment with variants a (default), b, c."""
    base: dict[str, Any] = {
        "key": key,
        "placement": placement,
        "salt": key,
        "variants": [
            {"key": "a", "weight": 1.0, "payload": {"v": "a"}},
            {"key": "b", "weight": 1.0, "payload": {"v": "b"}},
            {"key": "c", "weight": 2.0, "payload": {"v": "c"}},
        ],
        "default_variant": "a",
        "status": "running",
        "version": 1,
    }
    base.update(fields)
    return base


def first_unit(predicate: Any, prefix: str = "u") -> str:
    """The first unit id ``u0, u1, ...`` that satisfies ``predicate``."""
    return next(f"{prefix}{i}" for i in range(100_000) if predicate(f"{prefix}{i}"))


HALF = LayerSlice(start=0.0, end=0.5)
TARGET_MOBILE = {"attribute": "device", "op": "eq", "value": "mobile"}
TARGET_GOLD = {"all": [{"attribute": "tier", "op": "eq", "value": "gold"}, TARGET_MOBILE]}

in_half = lambda u: in_layer("L", u, HALF)  # noqa: E731
in_ho = lambda u: in_holdout("held", u, 0.3)  # noqa: E731
in_gho = lambda u: in_global_holdout(u, 0.2)  # noqa: E731
plain = lambda u: not in_holdout("held", u, 0.3) and not in_global_holdout(u, 0.2)  # noqa: E731

# (name, definitions, unit, profile, context, consent, {placement: reason})
SCENARIOS: list[
    tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any], bool, dict[str, str]]
] = [
    ("a split", {"experiments": [exp("e1")]}, "u1", {}, {}, True, {"hero": "split"}),
    *[
        (
            f"a split, unit {u}",
            {"experiments": [exp("e1"), exp("o1", "offer")]},
            u,
            {},
            {},
            True,
            {"hero": "split", "offer": "split"},
        )
        for u in ("alice", "bob", "carol", "dave", "erin", "42", "u-ü")
    ],
    (
        "no experiment",
        {"experiments": [exp("e1")]},
        "u1",
        {},
        {},
        True,
        {"carousel": "no_experiment"},
    ),
    (
        "kill switch before everything",
        {"kill_switch": True, "experiments": [exp("p1", status="paused"), exp("e1")]},
        "u1",
        {},
        {},
        False,
        {"hero": "kill_switch"},
    ),
    (
        "paused is a fallback",
        {"experiments": [exp("p1", status="paused")]},
        "u1",
        {},
        {},
        True,
        {"hero": "experiment_paused"},
    ),
    (
        "a lower-priority experiment after a paused one",
        {"experiments": [exp("p1", status="paused", priority=5), exp("e2", priority=1)]},
        "u1",
        {},
        {},
        True,
        {"hero": "split"},
    ),
    (
        "not targeted",
        {"experiments": [exp("t1", targeting=TARGET_MOBILE)]},
        "u1",
        {},
        {"device": "desktop"},
        True,
        {"hero": "not_targeted"},
    ),
    (
        "targeted by the request context",
        {"experiments": [exp("t1", targeting=TARGET_MOBILE)]},
        "u1",
        {},
        {"device": "mobile"},
        True,
        {"hero": "split"},
    ),
    (
        "targeted by profile and context together",
        {"experiments": [exp("t2", targeting=TARGET_GOLD)]},
        "u1",
        {"tier": "gold"},
        {"device": "mobile"},
        True,
        {"hero": "split"},
    ),
    (
        "the context wins over the profile",
        {"experiments": [exp("t1", targeting=TARGET_MOBILE)]},
        "u1",
        {"device": "mobile"},
        {"device": "tv"},
        True,
        {"hero": "not_targeted"},
    ),
    (
        "first fallback wins",
        {
            "experiments": [
                exp("p1", status="paused", priority=9),
                exp("t1", targeting=TARGET_MOBILE, priority=1),
            ]
        },
        "u1",
        {},
        {},
        True,
        {"hero": "experiment_paused"},
    ),
    (
        "outside the layer",
        {"experiments": [exp("l1", layer="L", layer_slice=HALF)]},
        first_unit(lambda u: not in_half(u)),
        {},
        {},
        True,
        {"hero": "outside_layer"},
    ),
    (
        "inside the layer",
        {"experiments": [exp("l1", layer="L", layer_slice=HALF)]},
        first_unit(in_half),
        {},
        {},
        True,
        {"hero": "split"},
    ),
    (
        "global holdout",
        {"global_holdout": 0.2, "experiments": [exp("e1")]},
        first_unit(in_gho),
        {},
        {},
        True,
        {"hero": "global_holdout"},
    ),
    (
        "global holdout before no consent",
        {"global_holdout": 0.2, "experiments": [exp("e1")]},
        first_unit(in_gho),
        {},
        {},
        False,
        {"hero": "global_holdout"},
    ),
    (
        "experiment holdout",
        {"experiments": [exp("held", holdout=0.3)]},
        first_unit(in_ho),
        {},
        {},
        True,
        {"hero": "holdout"},
    ),
    (
        "not in the holdout",
        {"global_holdout": 0.2, "experiments": [exp("held", holdout=0.3)]},
        first_unit(plain),
        {},
        {},
        True,
        {"hero": "split"},
    ),
    (
        "holdout before no consent",
        {"experiments": [exp("held", holdout=0.3)]},
        first_unit(in_ho),
        {},
        {},
        False,
        {"hero": "holdout"},
    ),
    (
        "no consent",
        {"experiments": [exp("e1"), exp("o1", "offer")]},
        "u1",
        {},
        {},
        False,
        {"hero": "no_consent", "offer": "no_consent"},
    ),
    (
        "targeting before consent",
        {"experiments": [exp("t1", targeting=TARGET_MOBILE)]},
        "u1",
        {},
        {},
        False,
        {"hero": "not_targeted"},
    ),
]


def _definitions(spec: dict[str, Any]) -> Definitions:
    return Definitions(
        version=1,
        hash_version=HASH_VERSION,
        global_holdout=spec.get("global_holdout", 0.0),
        kill_switch=spec.get("kill_switch", False),
        experiments=[_definition(e) for e in spec["experiments"]],
        remote_placements=[],
    )


def _definition(e: dict[str, Any]) -> Any:
    import msgspec

    from tailor_contract.wire import Definition

    return msgspec.convert(e, Definition, from_attributes=True)


def main() -> None:
    """Compute every case, check its reasons, write the file."""
    cases = []
    for name, spec, unit, profile, context, consent, reasons in SCENARIOS:
        evaluator = LocalEvaluator()
        evaluator.install(_definitions(spec))
        expected = {}
        for placement, reason in reasons.items():
            answer = evaluator.evaluate(unit, placement, {**profile, **context}, consent)
            assert answer.reason == reason, (name, placement, answer.reason, reason)
            expected[placement] = {
                "experiment": answer.experiment,
                "variant": answer.variant,
                "reason": answer.reason,
            }
        cases.append(
            {
                "name": name,
                "definitions": {
                    "global_holdout": spec.get("global_holdout", 0.0),
                    "kill_switch": spec.get("kill_switch", False),
                    "experiments": [msgspec.to_builtins(e) for e in spec["experiments"]],
                },
                "unit_id": unit,
                "profile": profile,
                "context": context,
                "consent": consent,
                "expected": expected,
            }
        )
    OUT.write_text(
        json.dumps(
            {
                "hash_version": HASH_VERSION,
                "description": (
                    "Whole placement decisions: definitions, unit, profile, context, "
                    "consent -> experiment, variant, reason per placement. Written by "
                    "make_decision_cases.py."
                ),
                "cases": cases,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
