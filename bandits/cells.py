"""Hierarchical per-cell reward models over automatically chosen crossings of attributes.

A *partition* is a tuple of context attributes, e.g. ``("segment", "device")``; its *cells* are
the value combinations seen (``("s1", "mobile")``). For every partition of up to three kept
attributes and every cell the model keeps, per arm and for two folds (examples alternate),
a forgetting count ``n`` and reward sum ``s``; the empty partition ``()`` is the global
(non-contextual) model. Attributes are discovered from the data: the first ``max_attributes``
context attributes holding a string, boolean or integer, each dropped (with its partitions)
once it shows more than ``max_values`` distinct values.

**Hierarchy.** A partition is read as a *chain* of nested partitions, its attributes added one
at a time (most predictive first): ``() -> (segment,) -> (segment, device)``. The arm means of
a cell are Gaussian with an empirical-Bayes prior from its parent cell: at level ``L``
``theta ~ N(mu_parent, tau_L^2 + var_parent)``, observed means with variance ``sigma^2 / n``
(``sigma^2`` the pooled reward variance), ``tau_L^2`` estimated by the method of moments from
all cells of the level. So a rare cell starts from its parent's posterior, a level whose cells
do not differ (a noise attribute) collapses onto its parent, and a level whose cells differ
learns from its own data as soon as it has some. The global arms have ``GLOBAL_PRIOR``
pseudo-trials at the overall mean.

**Partition search.** Each partition is scored by cross-fitted prediction error: the chain is
fitted on one fold and predicts the rewards of the other fold's examples (the squared error,
both ways, less the part common to every partition), plus an Occam penalty of
``OCCAM * sigma^2`` per effective parameter (the summed shrinkage factors ``n / (n + m)`` of
its finest cells). The lowest score wins; ties go to fewer attributes.

**Serving table.** :meth:`CellModels.table` computes, for a chain, every cell's posterior means,
variances and Thompson probabilities ``P(arm is best)`` over all arms, by deterministic
quadrature (no Monte Carlo); it is what a snapshot ships and what serving looks up.

Forgetting: every statistic is weighted by ``0.5 ** (age / half_life)`` (age in examples),
kept exactly with a growing scale factor instead of touching every cell per example;
:meth:`CellModels.forget` multiplies every statistic by a factor at once (after a detected
change of the world).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from scipy import special

from bandits.base import Context, FloatArray

__all__ = [
    "CellModels",
    "CellsState",
    "Level",
    "best_probabilities",
    "cell_value",
    "thompson_probabilities",
]

GLOBAL_PRIOR: Final = 2.0
MAX_PRIOR_TRIALS: Final = 5_000.0
"""The strongest prior a level can get, in pseudo-trials (``sigma^2 / tau^2``): a level whose
cells look alike still moves once a cell has thousands of trials of its own."""
OCCAM: Final = 1.0
SAMPLING_VARIANCE: Final = 0.25
"""Thompson probabilities are computed from the posterior with its variance times this (its
spread halved): a greedier Thompson sampling. Measured with ``loadtests/bench_learning.py``
(medians of 3 seeds) against the plain posterior: 3-way 0.56 vs 0.48, additive 0.93 vs 0.88,
change 0.68 vs 0.48, rare 0.52 vs 0.43, 2-way 0.84 vs 0.86; the exploration floor still
reaches every arm."""
_QUAD_POINTS: Final = 400
_RESCALE_AT: Final = 1e150
_MAX_ORDER: Final = 3

Partition = tuple[str, ...]
Cell = tuple[str, ...]
_Getter = Callable[[list[str | None]], tuple[str | None, ...]]


def _one(at: int, values: list[str | None]) -> tuple[str | None, ...]:
    return (values[at],)


def _none(values: list[str | None]) -> tuple[str | None, ...]:
    return ()


def cell_value(value: object) -> str | None:
    """The categorical value of an attribute, or None (numbers other than ints, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return repr(value)
    return None


def best_probabilities(mean: FloatArray, var: FloatArray) -> FloatArray:
    """``P(arm i has the largest draw)`` for independent Gaussians, shape ``(n,)``.

    Deterministic quadrature of ``int phi_i(x) prod_{j != i} Phi_j(x) dx`` on a grid covering
    every arm's mean +- 7 sd; normalised to sum to one.
    """
    n = len(mean)
    if n <= 1:
        return np.ones(n)
    sd = np.sqrt(np.maximum(var, 1e-18))
    lo = float((mean - 7 * sd).min())
    hi = float((mean + 7 * sd).max())
    x = np.linspace(lo, hi, _QUAD_POINTS)
    z = (x[None, :] - mean[:, None]) / sd[:, None]
    log_cdf = special.log_ndtr(z)
    total = log_cdf.sum(axis=0)
    dens = np.exp(-0.5 * z * z) / sd[:, None]
    out: FloatArray = (dens * np.exp(total[None, :] - log_cdf)).sum(axis=1)
    s = float(out.sum())
    if not s > 0:
        out = np.zeros(n)
        out[int(np.argmax(mean))] = 1.0
        return out
    return out / s


def _between_variance(
    n_a: FloatArray,
    s_a: FloatArray,
    n_b: FloatArray,
    s_b: FloatArray,
    mu_p: FloatArray,
    v_p: FloatArray,
) -> float:
    """Method-of-moments variance of the cells' arm means around their parents' (``tau^2``).

    Cross-fold: ``(ybar_A - mu_p) (ybar_B - mu_p)`` has expectation ``(theta - mu_p)^2 +
    var_p`` whatever the reward noise (the folds are independent given the cell's true mean),
    so no noise model is subtracted (the pooled variance overstates the noise of a 2 % arm in a
    6 % population, and subtracting it left the estimate near zero, the prior thousands of
    pseudo-trials strong); weights ``n_A n_B / (n_A + n_B)``, the product's precision. Returns
    0 without a cell-arm seen in both folds."""
    both = (n_a > 0) & (n_b > 0)
    if not both.any():
        return 0.0
    na, nb = n_a[both], n_b[both]
    excess = (s_a[both] / na - mu_p[both]) * (s_b[both] / nb - mu_p[both]) - v_p[both]
    w = na * nb / (na + nb)
    return float((w * excess).sum() / w.sum())


def thompson_probabilities(mean: FloatArray, var: FloatArray) -> FloatArray:
    """The probabilities Thompson sampling plays each arm with, from the posterior means and
    variances: ``best_probabilities`` of the posterior narrowed by ``SAMPLING_VARIANCE``."""
    return best_probabilities(mean, var * SAMPLING_VARIANCE)


# Per cell and arm, for the two folds A and B (examples alternate between them): trials and
# reward sums.
_N_A, _S_A, _N_B, _S_B = range(4)
Row = list[list[float]]


class _PartitionState(msgspec.Struct, frozen=True, array_like=True):
    attributes: list[str]
    cells: dict[str, Row]  # "\x1f"-joined cell -> the four per-arm lists


class CellsState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a :class:`CellModels` needs to continue exactly where it was."""

    arms: list[str]
    attributes: list[str]
    values: dict[str, list[str]]
    dropped: list[str]
    partitions: list[_PartitionState]
    scale: float
    totals: tuple[float, float, float]  # forgetting count, sum and sum of squares of rewards
    count: int
    unit_rewards: bool = True  # every reward learned so far was in [0, 1]


class Level(msgspec.Struct, frozen=True, array_like=True):
    """One level of a chain's posterior: per cell (``"\\x1f"``-joined values in chain order)
    the arms' posterior means, variances and Thompson probabilities, in arm-index order."""

    attributes: list[str]
    means: dict[str, list[float]]
    variances: dict[str, list[float]]
    best: dict[str, list[float]]


class _Fit(NamedTuple):
    """One level of a fitted chain: cells (values in chain order), posterior means and
    variances ``(cells, arms)``, the held-out fold's counts and sums, parent cell indices."""

    cells: list[Cell]
    mean: FloatArray
    var: FloatArray
    n_test: FloatArray
    s_test: FloatArray
    up: npt.NDArray[np.intp]


class _Partition:
    __slots__ = ("attributes", "cells")

    def __init__(self, attributes: Partition) -> None:
        self.attributes = attributes
        self.cells: dict[Cell, Row] = {}


class CellModels:
    """Forgetting per-cell statistics for every crossing of up to three attributes."""

    def __init__(
        self,
        *,
        max_attributes: int,
        max_values: int,
        half_life: int | None,
        state: CellsState | None = None,
    ) -> None:
        self._max_attributes = max_attributes
        self._max_values = max_values
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self.arms: dict[str, int] = {}
        self.attributes: list[str] = []
        self._values: dict[str, set[str]] = {}
        self._dropped: set[str] = set()
        self.partitions: dict[Partition, _Partition] = {(): _Partition(())}
        self._by_set: dict[frozenset[str], Partition] = {frozenset(): ()}
        self.scale = 1.0
        self._totals = [0.0, 0.0, 0.0]
        self._count = 0
        self._unit = True
        # Per stored partition, its cells and statistics as an array (divided by the scale);
        # emptied whenever a statistic changes.
        self._raw: dict[Partition, tuple[list[Cell], FloatArray]] = {}
        self._plan: list[tuple[dict[Cell, Row], _Getter]] | None = None
        if state is not None:
            self._load(state)

    # -- statistics ------------------------------------------------------------------------

    def _arm(self, key: str) -> int:
        index = self.arms.get(key)
        if index is None:
            index = self.arms[key] = len(self.arms)
        return index

    @property
    def count(self) -> int:
        """Examples learned (not forgotten by weight: a plain count)."""
        return self._count

    def overall(self) -> tuple[float, float]:
        """(mean, pooled variance) of all rewards learned, forgetting applied."""
        n, s, ss = self._totals
        if n <= 0:
            return 0.0, 0.25
        mean = s / n
        var = max(ss / n - mean * mean, 1e-6)
        return mean, var if n >= 2 * self.scale else 0.25

    def noise(self, mean: FloatArray) -> FloatArray:
        """The reward variance of an arm whose mean is near ``mean`` (same shape).

        Rewards in ``[0, 1]`` (clicks, conversions) have a variance that follows their mean,
        ``mu (1 - mu)`` for 0/1 rewards: a 2 % arm is far less noisy than the pooled variance of
        a population whose mean is 6 %, and treating it as that noisy would discount its data.
        So with rewards in ``[0, 1]`` the variance is ``phi mu (1 - mu)``, ``phi`` the pooled
        variance over that of the overall mean (one for 0/1 rewards); otherwise it is the
        pooled variance.
        """
        mean0, sigma2 = self.overall()
        if not self._unit or not 0.0 < mean0 < 1.0:
            return np.full_like(mean, sigma2)
        phi = min(sigma2 / (mean0 * (1.0 - mean0)), 1.0)
        mu = np.clip(mean, 1e-3, 0.999)
        out: FloatArray = phi * mu * (1.0 - mu)
        return out

    def cell_of(self, part: Sequence[str], context: Context) -> Cell | None:
        """The cell of ``context`` in partition ``part``; None when an attribute is missing."""
        out = []
        for attribute in part:
            value = cell_value(context.get(attribute))
            if value is None:
                return None
            out.append(value)
        return tuple(out)

    # -- the hierarchical posterior --------------------------------------------------------

    def _arrays(
        self, part: Partition, order: Sequence[str]
    ) -> tuple[list[Cell], FloatArray, FloatArray, FloatArray, FloatArray]:
        """Cells of the stored partition with attributes ``set(order)``, each cell's values in
        ``order``; per fold (A, B) counts and sums, shape ``(cells, arms)``, unscaled."""
        key = self._by_set[frozenset(part)]
        raw = self._raw.get(key)
        if raw is None:
            stored = self.partitions[key]
            k = len(self.arms)
            arr = np.zeros((len(stored.cells), 4, k))
            for j, row in enumerate(stored.cells.values()):
                arr[j, :, : len(row[0])] = row
            arr /= self.scale
            raw = self._raw[key] = (list(stored.cells), arr)
        stored_cells, arr = raw
        perm = [key.index(a) for a in order]
        cells = [tuple(cell[i] for i in perm) for cell in stored_cells]
        return cells, arr[:, _N_A], arr[:, _S_A], arr[:, _N_B], arr[:, _S_B]

    def _chain(self, order: Sequence[str], folds: str) -> list[_Fit]:
        """Posterior per level of the chain ``order`` fitted on ``folds`` ("A", "B" or "AB"),
        with the other fold's data (zeros for "AB") and each cell's parent index."""
        mean0, _ = self.overall()
        out: list[_Fit] = []
        parent_index: dict[Cell, int] = {}
        parent_mean = parent_var = np.zeros((0, 0))
        for level in range(len(order) + 1):
            cells, n_a, s_a, n_b, s_b = self._arrays(tuple(order[:level]), order[:level])
            if level == 0 and not cells:  # nothing learned yet
                cells = [()]
                n_a = s_a = n_b = s_b = np.zeros((1, len(self.arms)))
            if folds == "A":
                n, s, n_o, s_o = n_a, s_a, n_b, s_b
            elif folds == "B":
                n, s, n_o, s_o = n_b, s_b, n_a, s_a
            else:
                n, s = n_a + n_b, s_a + s_b
                n_o = s_o = np.zeros_like(n)
            if level == 0:
                up = np.zeros(1, dtype=np.intp)
                mean = (s + GLOBAL_PRIOR * mean0) / (n + GLOBAL_PRIOR)
                var = self.noise(mean) / (n + GLOBAL_PRIOR)
            else:
                up = np.array([parent_index[c[:-1]] for c in cells], dtype=np.intp)
                mu_p, v_p = parent_mean[up], parent_var[up]
                noise = self.noise(mu_p)
                tau2 = max(
                    _between_variance(n_a, s_a, n_b, s_b, mu_p, v_p),
                    float(noise.mean()) / MAX_PRIOR_TRIALS,
                )
                prior_var = tau2 + v_p
                precision = n / noise + 1.0 / prior_var
                mean = (s / noise + mu_p / prior_var) / precision
                var = 1.0 / precision
            out.append(_Fit(cells, mean, var, n_o, s_o, up))
            parent_index = {c: i for i, c in enumerate(cells)}
            parent_mean, parent_var = mean, var
        return out

    def _score(self, order: Sequence[str]) -> float:
        """Cross-fitted squared prediction error of the chain's finest level (less the
        ``sum r^2`` common to every partition) plus, for each level, ``OCCAM`` standard errors
        of its improvement over its parent level; per unit of weight, lower is better."""
        _, sigma2 = self.overall()
        loss = 0.0
        variances = np.zeros(len(order) + 1)
        for fit in ("A", "B"):
            levels = self._chain(order, fit)
            last = levels[-1]
            loss += float((last.n_test * last.mean**2 - 2.0 * last.mean * last.s_test).sum())
            for level in range(1, len(levels)):
                here, parent = levels[level], levels[level - 1]
                d = here.mean - parent.mean[here.up]
                variances[level] += 4.0 * sigma2 * float((here.n_test * d * d).sum())
        total = self._totals[0] / self.scale
        return (loss + OCCAM * float(np.sqrt(variances).sum())) / max(total, 1e-12)

    def ranked(self) -> list[tuple[Partition, float]]:
        """Partitions (attributes in chain order) and their scores, best (lowest) first."""
        if not self.arms or self._totals[0] <= 0:
            return [((), 0.0)]
        singles = {a: self._score((a,)) for a in self.attributes}
        order = sorted(self.attributes, key=lambda a: (singles[a], self.attributes.index(a)))
        scored: list[tuple[Partition, float]] = [((), self._score(()))]
        for part in self.partitions:
            if not part:
                continue
            chain = tuple(sorted(part, key=order.index))
            scored.append((chain, singles[chain[0]] if len(chain) == 1 else self._score(chain)))
        return sorted(scored, key=lambda x: (x[1], len(x[0])))

    def table(self, order: Sequence[str]) -> list[Level]:
        """The posterior of every level of the chain ``order`` from all data (module doc)."""
        out = []
        for level, fit in enumerate(self._chain(order, "AB")):
            cells, mean, var = fit.cells, fit.mean, fit.var
            best = np.stack([thompson_probabilities(m, v) for m, v in zip(mean, var, strict=True)])
            joined = ["\x1f".join(c) for c in cells]
            out.append(
                Level(
                    attributes=list(order[:level]),
                    means=dict(zip(joined, mean.tolist(), strict=True)),
                    variances=dict(zip(joined, var.tolist(), strict=True)),
                    best=dict(zip(joined, best.tolist(), strict=True)),
                )
            )
        return out

    # -- learning --------------------------------------------------------------------------

    def _discover(self, context: Context) -> None:
        for attribute, raw in context.items():
            if attribute in self._dropped:
                continue
            value = cell_value(raw)
            if value is None:
                continue
            seen = self._values.get(attribute)
            if seen is None:
                if len(self.attributes) >= self._max_attributes:
                    continue
                seen = self._values[attribute] = set()
                self._add_attribute(attribute)
            if value not in seen:
                seen.add(value)
                if len(seen) > self._max_values:
                    self._drop_attribute(attribute)

    def _add_attribute(self, attribute: str) -> None:
        self._plan = None
        others = list(self.attributes)
        self.attributes.append(attribute)
        for order in range(0, _MAX_ORDER):
            for combo in itertools.combinations(others, order):
                part = (*combo, attribute)
                self.partitions[part] = _Partition(part)
                self._by_set[frozenset(part)] = part

    def _drop_attribute(self, attribute: str) -> None:
        self._plan = None
        self._dropped.add(attribute)
        self.attributes.remove(attribute)
        del self._values[attribute]
        self.partitions = {p: v for p, v in self.partitions.items() if attribute not in p}
        self._by_set = {frozenset(p): p for p in self.partitions}

    def _make_plan(self) -> list[tuple[dict[Cell, Row], _Getter]]:
        """Per stored partition, its cells and the getter of a context's cell from the list of
        attribute values (in ``attributes`` order): what :meth:`learn` walks."""
        index = {a: j for j, a in enumerate(self.attributes)}
        plan: list[tuple[dict[Cell, Row], _Getter]] = []
        for part in self.partitions.values():
            at = [index[a] for a in part.attributes]
            get: _Getter
            if len(at) >= 2:
                get = operator.itemgetter(*at)
            elif at:
                get = functools.partial(_one, at[0])
            else:
                get = _none
            plan.append((part.cells, get))
        self._plan = plan
        return plan

    def learn(self, context: Context, arm: str, reward: float) -> None:
        """Add one example to its cell in every partition (alternating folds)."""
        self._raw.clear()
        self._discover(context)
        if self.scale > _RESCALE_AT:
            self._rescale()
        self.scale *= self._growth
        w = self.scale
        i = self._arm(arm)
        fold = self._count % 2
        self._count += 1
        n_at, s_at = (_N_A, _S_A) if fold == 0 else (_N_B, _S_B)
        # Each attribute's value once, not once per partition (26 partitions of 5 attributes),
        # and each partition's cell picked from them by a prepared getter.
        values = [cell_value(context.get(a)) for a in self.attributes]
        missing = None in values
        gain = w * reward
        for cells, get in self._plan or self._make_plan():
            cell = get(values)
            if missing and None in cell:
                continue
            row = cells.get(cell)  # type: ignore[arg-type]  # no None left in it
            if row is None:
                row = cells[cell] = [[] for _ in range(4)]  # type: ignore[index]
            if len(row[0]) <= i:
                grow = [0.0] * (i + 1 - len(row[0]))
                for column in row:
                    column.extend(grow)
            row[n_at][i] += w
            row[s_at][i] += gain
        if not 0.0 <= reward <= 1.0:
            self._unit = False
        t = self._totals
        t[0] += w
        t[1] += w * reward
        t[2] += w * reward * reward

    def forget(self, keep: float) -> None:
        """Multiply every statistic by ``keep`` in ``(0, 1]`` (old evidence weighs less)."""
        self._rescale(self.scale / keep)

    def _rescale(self, divisor: float | None = None) -> None:
        """Divide every stored weight by ``divisor`` (default: the scale, which then becomes
        one: forgetting unchanged, numbers bounded)."""
        self._raw.clear()
        inv = 1.0 / (self.scale if divisor is None else divisor)
        for part in self.partitions.values():
            for row in part.cells.values():
                for values in row:
                    values[:] = [x * inv for x in values]
        self._totals = [x * inv for x in self._totals]
        if divisor is None:
            self.scale = 1.0

    # -- snapshots -------------------------------------------------------------------------

    def state(self) -> CellsState:
        """The statistics as a snapshot struct."""
        arms = sorted(self.arms, key=self.arms.__getitem__)
        return CellsState(
            arms=arms,
            attributes=list(self.attributes),
            values={a: sorted(v) for a, v in self._values.items()},
            dropped=sorted(self._dropped),
            partitions=[
                _PartitionState(
                    attributes=list(p.attributes),
                    cells={"\x1f".join(c): row for c, row in p.cells.items()},
                )
                for p in self.partitions.values()
            ],
            scale=self.scale,
            totals=(self._totals[0], self._totals[1], self._totals[2]),
            count=self._count,
            unit_rewards=self._unit,
        )

    def _load(self, state: CellsState) -> None:
        self._plan = None
        self.arms = {k: i for i, k in enumerate(state.arms)}
        self.attributes = list(state.attributes)
        self._values = {a: set(v) for a, v in state.values.items()}
        self._dropped = set(state.dropped)
        self.partitions = {}
        for ps in state.partitions:
            part = _Partition(tuple(ps.attributes))
            for joined, row in ps.cells.items():
                cell: Cell = tuple(joined.split("\x1f")) if ps.attributes else ()
                part.cells[cell] = [list(values) for values in row]
            self.partitions[part.attributes] = part
        self._by_set = {frozenset(p): p for p in self.partitions}
        self.scale = state.scale
        self._totals = list(state.totals)
        self._count = state.count
        self._unit = state.unit_rewards


def names(parts: Iterable[Partition]) -> list[str]:
    """Readable partition names: ``segment+device`` (``global`` for the empty one)."""
    return ["+".join(p) or "global" for p in parts]
