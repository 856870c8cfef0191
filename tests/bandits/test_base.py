"""Shared types: candidate checks, exact samplers and example validation."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.base import (
    Candidate,
    CandidateError,
    Example,
    Sampler,
    check_candidates,
    draw_weighted,
)


def test_sampler_normalises_and_never_draws_zero_weights() -> None:
    """A Sampler's pmf sums to one and zero-weight indices are never drawn, even at u -> 1."""
    sampler = Sampler([0.0, 2.0, 0.0, 6.0, 0.0])
    assert sampler.pmf.tolist() == [0.0, 0.25, 0.0, 0.75, 0.0]
    u = np.array([0.0, 0.2499, 0.25, 0.999999, np.nextafter(1.0, 0.0)])
    assert sampler.draw_many(u).tolist() == [1, 1, 3, 3, 3]
    assert [sampler.draw(float(x)) for x in u] == [1, 1, 3, 3, 3]


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([], "at least one"),
        ([0.0, 0.0], "positive probability"),
        ([1.0, -1.0], ">= 0"),
        ([1.0, float("nan")], "finite"),
    ],
)
def test_sampler_rejects_bad_weights(weights: list[float], match: str) -> None:
    """Empty, all-zero, negative or non-finite weights are refused."""
    with pytest.raises(CandidateError, match=match):
        Sampler(weights)


def test_draw_weighted_matches_sampler() -> None:
    """The pure-Python draw agrees with the numpy Sampler on index and propensity."""
    weights = [0.1, 0.0, 0.3, 0.6]
    sampler = Sampler(weights)
    for u in np.linspace(0.0, 0.999999, 101).tolist():
        index, prob = draw_weighted(weights, u)
        assert index == sampler.draw(u)
        assert prob == pytest.approx(sampler.pmf[index], rel=1e-12)
    assert draw_weighted([0.5, 0.5, 0.0], np.nextafter(1.0, 0.0))[0] == 1


@pytest.mark.parametrize(
    ("keys", "match"),
    [([], "no candidates"), (["a", "b", "a"], "unique")],
)
def test_check_candidates_rejects(keys: list[str], match: str) -> None:
    """Empty candidate sets and duplicate keys are refused."""
    with pytest.raises(CandidateError, match=match):
        check_candidates([Candidate(key=k) for k in keys])


@pytest.mark.parametrize(
    ("chosen", "propensity", "reward", "match"),
    [
        (2, 0.5, 1.0, r"chosen == 2, must be in \[0, 2\)"),
        (-1, 0.5, 1.0, r"chosen == -1"),
        (0, 0.0, 1.0, r"propensity == 0.0, must be in \(0, 1\]"),
        (0, 1.5, 1.0, r"propensity == 1.5"),
        (0, 0.5, float("inf"), r"reward == inf, must be finite"),
    ],
)
def test_example_validates(chosen: int, propensity: float, reward: float, match: str) -> None:
    """An Example refuses an out-of-range index, impossible propensity or non-finite reward."""
    with pytest.raises(ValueError, match=match):
        Example(
            context={},
            candidates=(Candidate(key="a"), Candidate(key="b")),
            chosen=chosen,
            propensity=propensity,
            reward=reward,
        )
