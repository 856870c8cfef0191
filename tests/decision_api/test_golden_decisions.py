"""The server's decision engine passes the whole-decision golden file the SDK passes.

Each case of ``tests/golden/decision_cases.json`` is installed into a real
:class:`~experiments.cache.ExperimentCache` and decided by the real
:class:`~decision_api.decisions.engine.DecisionEngine` with the case's profile, context,
consent, kill switch and global holdout; the experiment, variant and reason of every placement
must be the file's, and every decision with an experiment is logged as an exposure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from decision_api.decisions.engine import DecisionEngine, Pseudonymiser
from decision_api.metrics import Metrics
from decision_api.profiles.store import UnitProfile
from event_log.rows import Event
from experiments.cache import ExperimentCache
from tailor_contract.assignment import HASH_VERSION
from tailor_contract.definitions import Experiment

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "decision_cases.json"
CASES: dict[str, Any] = json.loads(GOLDEN.read_text())


class _Collect:
    """An event sink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def submit(self, event: Event) -> None:
        self.events.append(event)

    def submit_many(self, events: Iterable[Event]) -> None:
        self.events.extend(events)


def _experiment(raw: dict[str, Any]) -> Experiment:
    return msgspec.convert(raw, Experiment)


def test_file_is_for_this_hash_version() -> None:
    """The file pins the hash version the server uses."""
    assert CASES["hash_version"] == HASH_VERSION
    assert len(CASES["cases"]) >= 20


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_engine_decides_as_the_golden_file_says(case: dict[str, Any]) -> None:
    """Experiment, variant and reason of every placement match the golden case."""
    definitions = case["definitions"]
    cache = ExperimentCache(store=None)  # type: ignore[arg-type]  # install() needs no store
    cache.install([_experiment(e) for e in definitions["experiments"]], version=1)
    sink = _Collect()
    engine = DecisionEngine(
        features=None,  # type: ignore[arg-type]  # no caps in the golden cases
        cache=cache,
        policies=None,
        sink=sink,
        metrics=Metrics(),
        pseudonymise=Pseudonymiser("golden"),
        rng=np.random.default_rng(0),
        global_holdout=definitions["global_holdout"],
    )
    engine.kill_switch = definitions["kill_switch"]
    profile = UnitProfile(attributes=case["profile"], hours={}, found=True)
    unit = engine.prepare(
        case["unit_id"], case["context"], case["consent"], profile, False, 1_700_000_000_000
    )
    placements = list(case["expected"])
    answers = engine.decide_unit(unit, placements)
    got = {
        a.placement: {"experiment": a.experiment, "variant": a.variant, "reason": a.reason}
        for a in answers
    }
    assert got == case["expected"]
    assert len(sink.events) == sum(1 for a in answers if a.experiment is not None)
