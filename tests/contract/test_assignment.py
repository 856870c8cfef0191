"""Deterministic assignment: golden vectors, split quality, holdouts, layers, other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from tailor_contract.assignment import (
    HASH_VERSION,
    allocate_slice,
    cumulative_shares,
    in_holdout,
    in_layer,
    pick_bucket,
    unit_hash,
    variant_index,
)
from tailor_contract.definitions import LayerSlice
from tests.golden import make_assignment_cases

REPO = Path(__file__).resolve().parents[2]
GOLDEN_PATH = REPO / "tests" / "golden" / "assignment_cases.json"
GOLDEN: dict[str, Any] = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
UNITS = [f"unit-{i}" for i in range(100_000)]
# Significance for the goodness-of-fit tests: a correct hash fails one in a thousand seeds, and
# the ids are fixed, so each test's outcome is fixed too.
ALPHA = 0.001


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [f"{c.get('salt', c.get('layer'))}|{c['unit_id'][:20]}" for c in cases]


def test_golden_file_is_the_generators_output() -> None:
    """The checked-in vectors are exactly what the independent spec generator produces."""
    assert GOLDEN["hash_version"] == HASH_VERSION
    assert len(GOLDEN["assignment"]) >= 50
    expected = make_assignment_cases.render(make_assignment_cases.build())
    assert GOLDEN_PATH.read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("case", GOLDEN["assignment"], ids=_ids(GOLDEN["assignment"]))
def test_golden_assignment(case: dict[str, Any]) -> None:
    """The hash and the variant index reproduce every golden vector bit for bit."""
    u = unit_hash(case["salt"], case["unit_id"])
    assert u == case["hash"]
    assert u == int(case["hash_uint64"]) / 2.0**64
    assert variant_index(case["salt"], case["unit_id"], case["weights"]) == case["variant"]


@pytest.mark.parametrize("case", GOLDEN["bucket"])
def test_golden_bucket_edges(case: dict[str, Any]) -> None:
    """A position on a bucket edge lands where the golden file says (zero-weight buckets empty)."""
    assert pick_bucket(case["hash"], cumulative_shares(case["weights"])) == case["variant"]


@pytest.mark.parametrize("case", GOLDEN["holdout"], ids=_ids(GOLDEN["holdout"]))
def test_golden_holdout(case: dict[str, Any]) -> None:
    """Holdout membership reproduces every golden vector."""
    assert unit_hash(case["salt"] + ":holdout", case["unit_id"]) == case["hash"]
    assert in_holdout(case["salt"], case["unit_id"], case["holdout"]) is case["in_holdout"]


@pytest.mark.parametrize("case", GOLDEN["layer"], ids=_ids(GOLDEN["layer"]))
def test_golden_layer(case: dict[str, Any]) -> None:
    """Layer-slice membership reproduces every golden vector."""
    start, end = case["slice"]
    member = in_layer(case["layer"], case["unit_id"], LayerSlice(start=start, end=end))
    assert member is case["in_layer"]


@pytest.mark.parametrize("weights", [[1, 1], [1, 2, 7], [0.2, 0.3, 0.0, 0.5]])
def test_split_of_100k_units_matches_weights(weights: list[float]) -> None:
    """The split of 100,000 fixed ids passes a chi-square test against the weights (p > 0.001)."""
    cumulative = cumulative_shares(weights)
    counts = np.bincount(
        [pick_bucket(unit_hash("split-test", u), cumulative) for u in UNITS],
        minlength=len(weights),
    )
    shares = np.asarray(weights, dtype=float) / sum(weights)
    assert counts[shares == 0].sum() == 0  # a zero-weight variant gets nobody
    live = shares > 0
    result = stats.chisquare(counts[live], shares[live] * len(UNITS))
    assert result.pvalue > ALPHA, (counts, result)


def test_changing_one_salt_moves_no_unit_in_another_experiment() -> None:
    """Re-salting experiment A re-shuffles A's units but leaves B's assignment untouched."""
    units = UNITS[:20_000]
    a_before = [variant_index("exp-a", u, [1, 1]) for u in units]
    b_before = [variant_index("exp-b", u, [1, 1, 1]) for u in units]
    a_after = [variant_index("exp-a-resalted", u, [1, 1]) for u in units]
    b_after = [variant_index("exp-b", u, [1, 1, 1]) for u in units]
    assert b_after == b_before
    moved = np.mean(np.asarray(a_before) != np.asarray(a_after))
    # Independent halves: ~50% move; 0.48..0.52 is > 5 standard deviations wide at n = 20,000.
    assert 0.48 < moved < 0.52


def test_variant_and_holdout_streams_are_independent() -> None:
    """Holdout share is within sampling error and does not depend on the variant a unit has."""
    holdout, weights = 0.1, [1, 2, 7]
    cumulative = cumulative_shares(weights)
    variant = np.array([pick_bucket(unit_hash("hero", u), cumulative) for u in UNITS])
    held = np.array([in_holdout("hero", u, holdout) for u in UNITS])
    sd = np.sqrt(holdout * (1 - holdout) / len(UNITS))
    assert abs(held.mean() - holdout) < 4 * sd
    table = np.array([[np.sum(held & (variant == k)), np.sum(~held & (variant == k))]
                      for k in range(len(weights))])  # fmt: skip
    assert stats.chi2_contingency(table).pvalue > ALPHA


def test_raising_a_holdout_only_adds_units_to_it() -> None:
    """Units held out at 5% stay held out at 10% (the slice grows, it does not reshuffle)."""
    small = {u for u in UNITS[:20_000] if in_holdout("hero", u, 0.05)}
    large = {u for u in UNITS[:20_000] if in_holdout("hero", u, 0.10)}
    assert small < large
    assert not any(in_holdout("hero", u, 0.0) for u in UNITS[:1000])


def test_slices_of_one_layer_never_share_a_unit() -> None:
    """Two adjacent slices of a layer partition its units: each unit is in exactly one."""
    first, second = allocate_slice([], 0.4), None
    assert first is not None
    second = allocate_slice([first], 0.6)
    assert second is not None
    a = np.array([in_layer("home", u, first) for u in UNITS[:20_000]])
    b = np.array([in_layer("home", u, second) for u in UNITS[:20_000]])
    assert not np.any(a & b)
    assert np.all(a | b)
    assert abs(a.mean() - 0.4) < 4 * np.sqrt(0.24 / 20_000)


@pytest.mark.parametrize(
    ("taken", "traffic", "expected"),
    [
        ([], 0.5, (0.0, 0.5)),
        ([], 1.0, (0.0, 1.0)),
        ([(0.0, 0.5)], 0.5, (0.5, 1.0)),
        ([(0.0, 0.5)], 0.3, (0.5, 0.8)),
        ([(0.0, 0.3), (0.6, 1.0)], 0.3, (0.3, 0.6)),  # fits the gap exactly
        ([(0.0, 0.3), (0.6, 1.0)], 0.2, (0.3, 0.5)),  # first fit, not best fit
        ([(0.2, 0.5)], 0.2, (0.0, 0.2)),  # a gap before the first slice is used
        ([(0.2, 0.5)], 0.3, (0.5, 0.8)),  # ... unless it is too small
        ([(0.5, 1.0), (0.0, 0.5)], 0.1, None),  # full (order of `taken` does not matter)
        ([(0.0, 0.3), (0.6, 1.0)], 0.31, None),  # enough space in total, but not contiguous
        ([(0.1, 0.2)], 0.95, None),
    ],
)
def test_allocate_slice_first_fit(
    taken: list[tuple[float, float]], traffic: float, expected: tuple[float, float] | None
) -> None:
    """Slices are allocated first-fit in the layer's free space and refused when none fits."""
    got = allocate_slice([LayerSlice(start=s, end=e) for s, e in taken], traffic)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.start, got.end) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("weights", "match"),
    [([], "positive total"), ([0, 0], "positive total"), ([1, -1], "positive total")],
)
def test_cumulative_shares_rejects_non_positive_totals(weights: list[float], match: str) -> None:
    """Weights that do not sum to a positive total are refused, not divided by."""
    with pytest.raises(ValueError, match=match):
        cumulative_shares(weights)


_CHILD = """
import json, sys
from tailor_contract.assignment import in_holdout, unit_hash, variant_index
units = json.loads(sys.stdin.read())
print(json.dumps([[unit_hash("hero", u), variant_index("hero", u, [1, 2, 7]),
                   in_holdout("hero", u, 0.2)] for u in units]))
"""


def test_assignment_is_identical_in_another_process() -> None:
    """A fresh interpreter with a different PYTHONHASHSEED computes the same hashes and variants."""
    units = [*UNITS[:300], "ünïcödé", "用户-7", "emoji-🎉"]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(units),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
        timeout=60,
    )
    here = [[unit_hash("hero", u), variant_index("hero", u, [1, 2, 7]), in_holdout("hero", u, 0.2)]
            for u in units]  # fmt: skip
    assert json.loads(out.stdout) == here
