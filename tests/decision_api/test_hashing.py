"""Vectorised unit hashes: bit-identical to ``unit_hash``, so the bulk path assigns, holds out
and layers every unit exactly as a single decision does."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from decision_api.decisions.hashing import unit_hash_list, unit_hashes
from tailor_contract.assignment import unit_hash
from tailor_contract.definitions import Condition, LayerSlice
from tailor_contract.placement import Gate, walk, walk_many

GOLDEN: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "golden" / "assignment_cases.json").read_text("utf-8")
)


def test_golden_cases_hash_to_the_pinned_values() -> None:
    for case in GOLDEN["assignment"]:
        (value,) = unit_hashes(case["salt"], [case["unit_id"]]).tolist()
        assert value == case["hash"] == unit_hash(case["salt"], case["unit_id"])


def test_every_value_equals_unit_hash_exactly() -> None:
    rng = random.Random(5)
    alphabet = "abcXYZ019-_:|Ü€😀 "
    for salt in ("exp-1", "exp-1:holdout", "layer:L", "tailor:global-holdout", "Ünï"):
        ids = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(5000)
        ]
        ids += ["u", "x" * 256]
        got = unit_hashes(salt, ids)
        assert got.dtype == np.float64
        assert got.tolist() == [unit_hash(salt, u) for u in ids]
        assert unit_hash_list(salt, ids) == got.tolist()
    assert unit_hashes("s", []).shape == (0,)


def test_walk_many_with_vectorised_hashes_is_walk() -> None:
    """The engine's bulk walk (``walk_many`` with ``unit_hash_list``) against ``walk``."""
    candidates = [
        Gated(Gate(paused=False, salt="t", holdout=0.3,
                   targeting=Condition(attribute="tier", op="eq", value="gold"))),
        Gated(Gate(paused=False, salt="l", holdout=0.05, layer="L",
                   layer_slice=LayerSlice(start=0.2, end=0.7))),
        Gated(Gate(paused=False, salt="a", holdout=0.1)),
    ]  # fmt: skip
    n = 3000
    ids = [f"r{i:07d}" for i in range(n)]
    attributes = [{"tier": "gold" if i % 3 else "bronze"} for i in range(n)]
    consent = [i % 11 != 0 for i in range(n)]
    held = [i % 97 == 0 for i in range(n)]
    many = walk_many(candidates, unit_ids=ids, attributes=attributes, consent=consent,
                     kill_switch=False, global_holdout=held, hashes=unit_hash_list)  # fmt: skip
    for i in range(n):
        single = walk(candidates, unit_id=ids[i], attributes=attributes[i],
                      consent=consent[i], kill_switch=False, global_holdout=held[i])  # fmt: skip
        assert many[i] == single


class Gated:
    """A compiled experiment as the walk sees it."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
