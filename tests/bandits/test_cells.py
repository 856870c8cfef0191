"""Hierarchical cells: empirical-Bayes priors from the parent cell, partition search, the
serving table, forgetting."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest

from bandits.base import Context
from bandits.cells import CellModels, _between_variance, best_probabilities

ARMS = ("v0", "v1", "v2")


def _models() -> CellModels:
    return CellModels(max_attributes=6, max_values=12, half_life=None)


def _in_arms_order(cells: CellModels, values: list[float]) -> np.ndarray:
    """A table row (arm-index order: first learned first) reordered as ARMS."""
    return np.array([values[cells.arms[a]] for a in ARMS])


def _feed(cells: CellModels, rates: object, n: int, seed: int, attributes: dict[str, int]) -> None:
    """Uniform logging over ARMS; contexts with the given attributes (values 0..m-1)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = {a: int(rng.integers(m)) for a, m in attributes.items()}
        context: Context = {a: f"{a}{v}" for a, v in x.items()}
        arm = int(rng.integers(len(ARMS)))
        p = rates(x)[arm]  # type: ignore[operator]
        cells.learn(context, ARMS[arm], float(rng.random() < p))


def test_a_cell_without_trials_starts_from_its_parent() -> None:
    """A cell with no trials of its own has its parent cell's means: with segment s0 strongly
    preferring v2, the unseen cell (s0, d9) prefers v2 too, not the global favourite."""
    cells = _models()
    rng = np.random.default_rng(0)
    for i in range(6000):
        segment = "s0" if i % 2 else "s1"
        arm = int(rng.integers(3))
        p = (0.1, 0.1, 0.5)[arm] if segment == "s0" else (0.5, 0.1, 0.1)[arm]
        cells.learn({"segment": segment, "device": f"d{i % 3}"}, ARMS[arm], float(rng.random() < p))
    cells.learn({"segment": "s0", "device": "d9"}, "v0", 0.0)  # the cell exists, one trial
    table = cells.table(("segment", "device"))
    parent = _in_arms_order(cells, table[1].means["s0"])
    child = _in_arms_order(cells, table[2].means["s0\x1fd9"])
    assert int(np.argmax(child)) == 2 == int(np.argmax(parent))
    assert abs(child[2] - parent[2]) < 0.01
    glob = _in_arms_order(cells, table[0].means[""])  # the global mixes both segments
    assert int(np.argmax(glob)) in (0, 2)


def test_a_cell_with_many_trials_follows_its_own_data() -> None:
    """Where a child cell disagrees with its parent and has plenty of trials, its own data wins
    (the level's prior strength comes from how much its cells differ)."""
    cells = _models()

    def rates(x: dict[str, int]) -> tuple[float, ...]:
        return (0.5, 0.1, 0.1) if x["a"] == x["b"] else (0.1, 0.1, 0.5)

    _feed(cells, rates, 12_000, 1, {"a": 2, "b": 2})
    table = cells.table(("a", "b"))
    for a, b in itertools.product(range(2), range(2)):
        means = _in_arms_order(cells, table[2].means[f"a{a}\x1fb{b}"])
        assert int(np.argmax(means)) == (0 if a == b else 2)


def test_a_noise_attribute_collapses_onto_its_parent() -> None:
    """An attribute that does not matter gets a prior as strong as allowed: its cells' means
    stay within a fraction of the parent's, though each differs by chance in its data."""
    cells = _models()
    _feed(
        cells,
        lambda x: (0.3, 0.1, 0.1) if x["a"] else (0.1, 0.1, 0.3),
        6000,
        2,
        {"a": 2, "noise": 4},
    )
    table = cells.table(("a", "noise"))
    for a, n in itertools.product(range(2), range(4)):
        child = np.array(table[2].means[f"a{a}\x1fnoise{n}"])
        parent = np.array(table[1].means[f"a{a}"])
        assert np.abs(child - parent).max() < 0.02


@pytest.mark.parametrize("relevant", [("a", "b"), ("a", "b", "c")])
def test_partition_search_finds_two_and_three_way_interactions(
    relevant: tuple[str, ...],
) -> None:
    """With the best arm set by the parity of 2 (or 3) attributes, and two noise attributes,
    the best-ranked partition is exactly the relevant attributes: no single attribute or
    pair predicts anything, and the noise attributes only add noise."""
    cells = _models()

    def rates(x: dict[str, int]) -> tuple[float, ...]:
        best = sum(x[a] for a in relevant) % 3
        out = [0.1, 0.1, 0.1]
        out[best] = 0.4
        return tuple(out)

    _feed(cells, rates, 30_000, 3, {"a": 3, "b": 3, "c": 3, "n1": 3, "n2": 2})
    best, _ = cells.ranked()[0]
    assert set(best) == set(relevant)


def test_without_context_effect_the_global_model_ranks_first() -> None:
    """When no attribute matters, the global model (the empty partition) wins the search:
    every crossing pays the Occam penalty for nothing."""
    cells = _models()
    _feed(cells, lambda x: (0.2, 0.3, 0.2), 8000, 4, {"a": 3, "b": 2})
    assert cells.ranked()[0][0] == ()


def test_best_probabilities_match_monte_carlo() -> None:
    """The quadrature's P(best) agrees with a large Monte Carlo draw, sums to one, and puts
    everything on a dominant arm."""
    mean = np.array([0.10, 0.12, 0.11, 0.05])
    var = np.array([1e-4, 2e-4, 4e-5, 1e-4])
    got = best_probabilities(mean, var)
    draws = np.random.default_rng(0).standard_normal((400_000, 4)) * np.sqrt(var) + mean
    mc = np.bincount(draws.argmax(axis=1), minlength=4) / len(draws)
    np.testing.assert_allclose(got, mc, atol=0.004)
    assert got.sum() == pytest.approx(1.0)
    dominant = best_probabilities(np.array([0.9, 0.1]), np.array([1e-6, 1e-6]))
    assert dominant[0] == pytest.approx(1.0)


def test_forget_scales_every_statistic() -> None:
    """``forget(keep)`` divides the evidence by 1/keep: counts shrink, means stay."""
    cells = _models()
    _feed(cells, lambda x: (0.2, 0.3, 0.5), 3000, 5, {"a": 2})
    before = cells.table(("a",))
    n_before = cells.overall()
    cells.forget(0.1)
    after = cells.table(("a",))
    assert cells.overall()[0] == pytest.approx(n_before[0])
    np.testing.assert_allclose(after[0].means[""], before[0].means[""], atol=0.01)
    assert min(after[0].variances[""]) > 5 * max(before[0].variances[""])


def test_between_cell_variance_is_right_on_adaptively_collected_clicks() -> None:
    """The level's prior variance comes from cross-fold products, so it is right where a
    policy played each cell's believed-best arm thousands of times and the others a few dozen,
    at click rates of 2-7 % (whose noise is far below the pooled variance): 400 cells, true
    deviations of the cells' arm means from the parent's with variance 1.2e-4."""
    rng = np.random.default_rng(7)
    cells, arms = 400, 8
    parent = np.full((cells, arms), 0.035)
    deviation = np.zeros((cells, arms))
    deviation[np.arange(cells), rng.integers(arms, size=cells)] = 0.04
    deviation -= deviation.mean(axis=1, keepdims=True)
    truth = float((deviation**2).mean())
    n = np.where(rng.random((cells, arms)) < 0.2, 2000.0, 30.0)  # uneven, as a bandit logs
    half = n / 2
    s_a = rng.binomial(half.astype(int), parent + deviation).astype(float)
    s_b = rng.binomial(half.astype(int), parent + deviation).astype(float)
    got = _between_variance(half, s_a, half, s_b, parent, np.zeros_like(parent))
    assert truth / 1.5 < got < truth * 1.5
    # Without variation between cells the estimate is about zero.
    flat = _between_variance(
        half,
        rng.binomial(half.astype(int), parent).astype(float),
        half,
        rng.binomial(half.astype(int), parent).astype(float),
        parent,
        np.zeros_like(parent),
    )
    assert abs(flat) < truth / 4


def test_every_partition_counts_exactly_the_examples_of_its_cells() -> None:
    """Each example adds one trial to its cell in every partition whose attributes it has: a
    context without ``b`` counts only where ``b`` is not crossed, an attribute with too many
    values is dropped with its partitions, and a model restored from its state continues
    exactly as the original (the prepared cell getters follow every change)."""
    rng = np.random.default_rng(7)
    contexts: list[Context] = []
    for i in range(3000):
        context: Context = {
            "a": f"a{rng.integers(3)}",
            "c": f"c{i % 20}",
            "z": f"z{rng.integers(2)}",
        }
        if rng.random() < 0.7:
            context["b"] = f"b{rng.integers(2)}"
        contexts.append(context)
    cells = _models()
    for i, context in enumerate(contexts[:1500]):
        cells.learn(context, ARMS[i % 3], float(i % 5 == 0))
    restored = CellModels(max_attributes=6, max_values=12, half_life=None, state=cells.state())
    for model in (cells, restored):
        for i, context in enumerate(contexts[1500:], start=1500):
            model.learn(context, ARMS[i % 3], float(i % 5 == 0))
    assert msgspec.msgpack.encode(cells.state()) == msgspec.msgpack.encode(restored.state())
    assert "c" not in cells.attributes
    for part, stored in cells.partitions.items():
        expected: dict[tuple[str, ...], int] = {}
        for context in contexts:
            if all(a in context for a in part):
                cell = tuple(str(context[a]) for a in part)
                expected[cell] = expected.get(cell, 0) + 1
        got = {cell: round(sum(row[0]) + sum(row[2])) for cell, row in stored.cells.items()}
        assert got == expected, part
