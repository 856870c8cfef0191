"""Per-cell reward statistics over automatically chosen crossings of categorical attributes.

A *partition* is a tuple of context attributes, e.g. ``("segment", "device")``; its *cells* are
the value combinations seen (``("s1", "mobile")``). For every partition and cell the model keeps,
per arm, a forgetting count ``n`` and reward sum ``s``; the empty partition ``()`` is the global
(non-contextual) model. Attributes are discovered from the data: the first
``max_attributes`` context attributes holding a string, boolean or integer, each dropped
(with its partitions) once it shows more than ``max_values`` distinct values. Partitions are all
crossings of 1 to 3 kept attributes.

Posterior of arm ``a`` in a cell, Gaussian with a hierarchical prior (the global arm mean,
``CELL_PRIOR`` pseudo-trials; the global arm's prior is the overall mean, ``GLOBAL_PRIOR``):
``mean = (s + m mu0) / (n + m)``, ``var = sigma2 / (n + m)``, ``sigma2`` the pooled reward
variance. A cell with few trials therefore falls back to the global arm means. Rewards of any
range work (no Beta assumption).

Which partition explains the rewards is chosen by prequential squared error: before an example
is learned, every partition predicts its reward from the cell's posterior mean of the chosen arm;
the partition with the lowest (forgetting) mean error is the best contextual model. A crossing
with more cells pays for its extra parameters through worse early predictions (Occam's razor
without a penalty term).

Forgetting: every statistic is weighted by ``0.5 ** (age / half_life)`` (age in examples),
kept exactly with a growing scale factor instead of touching every cell per example.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import numpy as np

from bandits.base import Context, FloatArray

__all__ = ["CellModels", "CellsState", "cell_value"]

GLOBAL_PRIOR: Final = 2.0
CELL_PRIOR: Final = 10.0
MC_DRAWS: Final = 2_000
_RESCALE_AT: Final = 1e150
_MAX_ORDER: Final = 3

Partition = tuple[str, ...]
Cell = tuple[str, ...]


def cell_value(value: object) -> str | None:
    """The categorical value of an attribute, or None (numbers other than ints, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return repr(value)
    return None


# Per cell and arm, for the two folds A and B (examples alternate between them): trials,
# reward sums, and inverse-propensity-weighted reward sums.
_N_A, _S_A, _N_B, _S_B, _I_A, _I_B = range(6)
Row = list[list[float]]


class _PartitionState(msgspec.Struct, frozen=True, array_like=True):
    attributes: list[str]
    cells: dict[str, Row]  # "\x1f"-joined cell -> the six per-arm lists


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


class _Partition:
    __slots__ = ("attributes", "cells")

    def __init__(self, attributes: Partition) -> None:
        self.attributes = attributes
        self.cells: dict[Cell, Row] = {}


class CellModels:
    """Forgetting per-cell statistics for every crossing of up to three attributes."""

    def __init__(self, *, max_attributes: int, max_values: int,
                 half_life: int | None, state: CellsState | None = None) -> None:
        self._max_attributes = max_attributes
        self._max_values = max_values
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self.arms: dict[str, int] = {}
        self.attributes: list[str] = []
        self._values: dict[str, set[str]] = {}
        self._dropped: set[str] = set()
        self.partitions: dict[Partition, _Partition] = {(): _Partition(())}
        self.scale = 1.0
        self._totals = [0.0, 0.0, 0.0]
        self._count = 0
        if state is not None:
            self._load(state)

    # -- statistics ------------------------------------------------------------------------

    def _arm(self, key: str) -> int:
        index = self.arms.get(key)
        if index is None:
            index = self.arms[key] = len(self.arms)
        return index

    def overall(self) -> tuple[float, float]:
        """(mean, pooled variance) of all rewards learned, forgetting applied."""
        n, s, ss = self._totals
        if n <= 0:
            return 0.0, 0.25
        mean = s / n
        var = max(ss / n - mean * mean, 1e-6)
        return mean, var if n >= 2 * self.scale else 0.25

    def cell_of(self, part: Partition, context: Context) -> Cell | None:
        """The cell of ``context`` in partition ``part``; None when an attribute is missing."""
        out = []
        for attribute in part:
            value = cell_value(context.get(attribute))
            if value is None:
                return None
            out.append(value)
        return tuple(out)

    def posterior(self, part: Partition, cell: Cell | None,
                  keys: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """Posterior means and variances of ``keys`` in a cell, shape ``(n,)`` each."""
        mean0, var = self.overall()
        inv = 1.0 / self.scale
        glob = self.partitions[()].cells.get(())
        mu0 = np.full(len(keys), mean0)
        n0 = np.zeros(len(keys))
        if glob is not None:
            for j, key in enumerate(keys):
                i = self.arms.get(key)
                if i is not None and i < len(glob[0]):
                    n = (glob[_N_A][i] + glob[_N_B][i]) * inv
                    n0[j] = n
                    total = (glob[_S_A][i] + glob[_S_B][i]) * inv
                    mu0[j] = (total + GLOBAL_PRIOR * mean0) / (n + GLOBAL_PRIOR)
        if not part:
            return mu0, var / (n0 + GLOBAL_PRIOR)
        row = None if cell is None else self.partitions[part].cells.get(cell)
        ns = np.zeros(len(keys))
        ss = np.zeros(len(keys))
        if row is not None:
            for j, key in enumerate(keys):
                i = self.arms.get(key)
                if i is not None and i < len(row[0]):
                    ns[j] = (row[_N_A][i] + row[_N_B][i]) * inv
                    ss[j] = (row[_S_A][i] + row[_S_B][i]) * inv
        return (ss + CELL_PRIOR * mu0) / (ns + CELL_PRIOR), var / (ns + CELL_PRIOR)

    def win_probabilities(self, part: Partition, cell: Cell | None,
                          keys: Sequence[str]) -> FloatArray:
        """P(arm is best) under the cell's posterior from ``MC_DRAWS`` seeded draws, ``(n,)``.

        The generator is seeded from the posterior itself, so equal states give equal pmfs.
        """
        mean, var = self.posterior(part, cell, keys)
        if len(keys) == 1:
            return np.ones(1)
        digest = hashlib.blake2b(mean.tobytes() + var.tobytes(), digest_size=8).digest()
        gen = np.random.default_rng(int.from_bytes(digest, "little"))
        draws = gen.standard_normal((MC_DRAWS, len(keys))) * np.sqrt(var) + mean
        wins: FloatArray = np.bincount(draws.argmax(axis=1), minlength=len(keys)) / MC_DRAWS
        return wins

    def _global_mean(self, i: int) -> float:
        """Posterior mean of arm index ``i`` in the global model (scalar, for learning)."""
        mean0 = self._totals[1] / self._totals[0] if self._totals[0] > 0 else 0.0
        glob = self.partitions[()].cells.get(())
        if glob is None or i >= len(glob[0]):
            return mean0
        inv = 1.0 / self.scale
        n = (glob[_N_A][i] + glob[_N_B][i]) * inv
        return ((glob[_S_A][i] + glob[_S_B][i]) * inv + GLOBAL_PRIOR * mean0) / (n + GLOBAL_PRIOR)

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
        others = list(self.attributes)
        self.attributes.append(attribute)
        for order in range(0, _MAX_ORDER):
            for combo in itertools.combinations(others, order):
                part = (*combo, attribute)
                self.partitions[part] = _Partition(part)

    def _drop_attribute(self, attribute: str) -> None:
        self._dropped.add(attribute)
        self.attributes.remove(attribute)
        del self._values[attribute]
        self.partitions = {p: v for p, v in self.partitions.items() if attribute not in p}

    def learn(self, context: Context, arm: str, reward: float, propensity: float) -> None:
        """Add one example to its cell in every partition (alternating folds)."""
        self._discover(context)
        if self.scale > _RESCALE_AT:
            self._rescale()
        self.scale *= self._growth
        w = self.scale
        i = self._arm(arm)
        fold = self._count % 2
        self._count += 1
        n_at, s_at, i_at = (_N_A, _S_A, _I_A) if fold == 0 else (_N_B, _S_B, _I_B)
        ips = w * reward / propensity
        for part in self.partitions.values():
            cell = self.cell_of(part.attributes, context)
            if cell is None:
                continue
            row = part.cells.get(cell)
            if row is None:
                row = part.cells[cell] = [[] for _ in range(6)]
            if len(row[0]) <= i:
                grow = [0.0] * (i + 1 - len(row[0]))
                for values in row:
                    values.extend(grow)
            row[n_at][i] += w
            row[s_at][i] += w * reward
            row[i_at][i] += ips
        t = self._totals
        t[0] += w
        t[1] += w * reward
        t[2] += w * reward * reward

    def _rescale(self) -> None:
        """Divide every stored weight by the scale (forgetting unchanged, numbers bounded)."""
        inv = 1.0 / self.scale
        for part in self.partitions.values():
            for row in part.cells.values():
                for values in row:
                    values[:] = [x * inv for x in values]
        self._totals = [x * inv for x in self._totals]
        self.scale = 1.0

    def ranked(self) -> list[tuple[Partition, float]]:
        """Partitions and their cross-fitted value, best first.

        A partition's value is the inverse-propensity estimate of playing, in each cell, the
        arm with the best shrunk mean in one fold, measured on the other fold, both ways:
        ``sum_c I_B(c, argmax mean_A(c)) + I_A(c, argmax mean_B(c))`` over all examples. It is
        unbiased whatever the logging policy, and a crossing whose cells are too small to pick
        the right arm scores no better than a coarser one.
        """
        n_arms = len(self.arms)
        if not n_arms or self._totals[0] <= 0:
            return [((), 0.0)]
        glob = self.partitions[()].cells.get(())
        mean0 = self._totals[1] / self._totals[0]
        prior = np.full(n_arms, mean0)
        if glob is not None:
            n = np.zeros(n_arms)
            t = np.zeros(n_arms)
            k = len(glob[0])
            n[:k] = np.asarray(glob[_N_A]) + np.asarray(glob[_N_B])
            t[:k] = np.asarray(glob[_S_A]) + np.asarray(glob[_S_B])
            prior = (t + GLOBAL_PRIOR * self.scale * mean0) / (n + GLOBAL_PRIOR * self.scale)
        m = CELL_PRIOR * self.scale
        total = self._totals[0]
        scored = []
        for part in self.partitions.values():
            if not part.cells:
                continue
            rows = list(part.cells.values())
            arr = np.zeros((len(rows), 6, n_arms))
            for j, row in enumerate(rows):
                arr[j, :, : len(row[0])] = row
            mean_a = (arr[:, _S_A] + m * prior) / (arr[:, _N_A] + m)
            mean_b = (arr[:, _S_B] + m * prior) / (arr[:, _N_B] + m)
            pick_a = mean_a.argmax(axis=1)
            pick_b = mean_b.argmax(axis=1)
            idx = np.arange(len(rows))
            value = arr[idx, _I_B, pick_a].sum() + arr[idx, _I_A, pick_b].sum()
            scored.append((part.attributes, float(value / total)))
        return sorted(scored, key=lambda x: (-x[1], len(x[0])))

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
        )

    def _load(self, state: CellsState) -> None:
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
        self.scale = state.scale
        self._totals = list(state.totals)
        self._count = state.count


def names(parts: Iterable[Partition]) -> list[str]:
    """Readable partition names: ``segment+device`` (``global`` for the empty one)."""
    return ["+".join(p) or "global" for p in parts]
