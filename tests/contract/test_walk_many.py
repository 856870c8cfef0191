"""``walk_many`` answers, unit by unit, exactly what ``walk`` answers (the bulk path's walk)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from tailor_contract.assignment import unit_hash
from tailor_contract.definitions import Condition, LayerSlice
from tailor_contract.placement import Gate, walk, walk_many


@dataclass(frozen=True)
class Candidate:
    """A compiled experiment as the walk sees it."""

    key: str
    gate: Gate


def random_gate(rng: random.Random, i: int) -> Gate:
    """A gate with any mix of pause, targeting, layer slice (or none), holdout, send time."""
    layer = rng.choice([None, "L1", "L2"])
    start = rng.choice([0.0, 0.25, 0.5])
    return Gate(
        paused=rng.random() < 0.15,
        salt=f"salt-{i}-{rng.randrange(1000)}",
        holdout=rng.choice([0.0, 0.0, 0.1, 0.5]),
        layer=layer,
        layer_slice=None
        if layer is None or rng.random() < 0.1
        else LayerSlice(start=start, end=start + rng.choice([0.25, 0.5])),
        targeting=rng.choice(
            [None, None, Condition(attribute="tier", op="in", value=["gold", "silver"])]
        ),
        send_time=rng.random() < 0.2,
    )


@pytest.mark.parametrize("seed", range(40))
def test_walk_many_is_walk_for_every_unit(seed: int) -> None:
    rng = random.Random(seed)
    candidates = [Candidate(f"e{i}", random_gate(rng, i)) for i in range(rng.randint(0, 4))]
    n = 300
    unit_ids = [f"u-{seed}-{i}" for i in range(n)]
    attributes = [{"tier": rng.choice(["gold", "silver", "bronze"])} for _ in range(n)]
    consent = [rng.random() > 0.1 for _ in range(n)]
    held = [rng.random() < 0.05 for _ in range(n)]
    kill_switch = rng.random() < 0.05
    many = walk_many(
        candidates,
        unit_ids=unit_ids,
        attributes=attributes,
        consent=consent,
        kill_switch=kill_switch,
        global_holdout=held,
    )
    single = [
        walk(
            candidates,
            unit_id=unit_ids[i],
            attributes=attributes[i],
            consent=consent[i],
            kill_switch=kill_switch,
            global_holdout=held[i],
        )
        for i in range(n)
    ]
    assert many == single


def test_walk_many_meets_every_verdict_and_hashes_each_salt_once() -> None:
    """A placement stacking every rule: all verdicts occur, and each hash stream is computed by
    one call for the units that reach it."""
    tiers = Condition(attribute="tier", op="eq", value="gold")
    candidates = [
        Candidate("paused", Gate(paused=True, salt="p")),
        Candidate("targeted", Gate(paused=False, salt="t", targeting=tiers, holdout=0.2)),
        Candidate(
            "layered",
            Gate(paused=False, salt="l", layer="L", layer_slice=LayerSlice(start=0, end=0.5)),
        ),
        Candidate("send", Gate(paused=False, salt="s", send_time=True, holdout=0.1)),
    ]
    n = 2000
    unit_ids = [f"unit-{i}" for i in range(n)]
    attributes = [{"tier": "gold" if i % 4 == 0 else "bronze"} for i in range(n)]
    consent = [i % 9 != 0 for i in range(n)]
    held = [i % 50 == 0 for i in range(n)]
    calls: list[str] = []

    def hashes(salt: str, ids: list[str]) -> list[float]:
        calls.append(salt)
        return [unit_hash(salt, u) for u in ids]

    many = walk_many(
        candidates,
        unit_ids=unit_ids,
        attributes=attributes,
        consent=consent,
        kill_switch=False,
        global_holdout=held,
        hashes=hashes,
    )
    verdicts = Counter((c.key if c else None, v) for c, v in many)
    assert {v for _, v in verdicts} == {
        "assign", "send_time", "holdout", "global_holdout", "no_consent"
    }  # fmt: skip
    assert sorted(calls) == sorted(["t:holdout", "layer:L", "s:holdout"])
    for i in range(n):
        assert many[i] == walk(
            candidates,
            unit_id=unit_ids[i],
            attributes=attributes[i],
            consent=consent[i],
            kill_switch=False,
            global_holdout=held[i],
        )


def test_walk_many_without_experiments_or_units() -> None:
    common = {"attributes": [{}], "consent": [True], "kill_switch": False}
    assert walk_many([], unit_ids=["u"], global_holdout=[False], **common) == [
        (None, "no_experiment")
    ]
    candidates = [Candidate("a", Gate(paused=False, salt="a"))]
    assert (
        walk_many(
            candidates,
            unit_ids=[],
            attributes=[],
            consent=[],
            kill_switch=False,
            global_holdout=[],
        )
        == []
    )
