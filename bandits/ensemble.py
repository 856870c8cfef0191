"""``vw_cb`` as an ensemble: VW, Thompson per cell, a non-contextual baseline, served safely.

Members (all learn from every joined example):

- ``vw``: the VW contextual bandit (:class:`bandits.vw.VWPolicy`), trained with propensity 1 in
  its label (importance weights from SquareCB's tiny probabilities make its regression noise;
  the logged propensity stays the true one and the value estimates below use it);
- ``cells``: Thompson sampling per cell of the crossing of categorical attributes that best
  predicts the rewards (:class:`bandits.cells.CellModels`, pairs and triples found in the data);
- ``baseline``: Thompson sampling on the global (non-contextual) model, which converges on the
  best single variant.

Serving: for each contextual member ``c`` (``cells``, ``vw``) the learner keeps a forgetting
inverse-propensity estimate of its gain over the baseline on the logged decisions,
``D_c = mean_i r_i (pi_c(a_i|x_i) - pi_b(a_i|x_i)) / p_i`` (each member's pmf from the model as
it was before the batch, ``p_i`` the logged propensity), and its standard error. The served pmf
is ``w pi_c + (1 - w) pi_b`` for one contender ``c``, floored to ``min_propensity``:

- ``vw`` serves alone (``w = 1``) once its lower bound is above zero and above the cells'
  estimate;
- otherwise, when a partition predicts better than the global model, the ``cells`` serve alone
  unless their upper bound is below zero; then the baseline serves with ``w = PROBE`` for the
  cells, so that they can still prove themselves;
- without a partition the baseline serves, VW keeping a ``PROBE`` share unless credibly worse.

So the served policy is never credibly worse than the baseline (by the interval of the gain),
and the contender keeps traffic to be evaluated. The cells serve *without* proof because the
interval of an inverse-propensity gain between two near-deterministic policies (weights up to
1 / floor) is wider than the gains for tens of thousands of decisions: a rule that waited for
proof kept the cells from learning (``docs/experiments.md``). The decision's ``model_version``
says who served: ``<version>/<member>`` with member ``cells:<attributes>``, ``vw``, ``baseline``
or ``mix:<contender>``; :meth:`EnsemblePolicy.serving_report` gives the estimates and
:meth:`EnsemblePolicy.member_pmfs` what each member would serve alone.

Measured (``loadtests/bench_learning.py``, which values each member alone beside the served
pmf): where the served policy falls below the best single variant after 10,000 decisions, the
baseline alone is mostly below it too (50 variants: baseline 0.03-0.15 of the oracle's gain
against the single variant's 0.25-0.35 in every seed; rare: 0.03-0.45 against 0.39-0.47), so no
choice between the members keeps that floor there; only the 3-way world's seed 1 has the
baseline above the cells (10,000-30,000 decisions: 0.41-0.46 against 0.39-0.42), and the
baseline itself sits just below the single variant there (serving it, the cells on a probe
share, whenever a cross-fitted estimate put the cells below: 20 of 20 windows below).

Per-decision cost: when ``cells`` or the baseline serve, a dict lookup of the cell's cached
sampler (win probabilities are computed once per snapshot and cell from seeded draws); when VW
takes part, one VW prediction, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

import msgspec
import numpy as np

from bandits.base import (
    Candidate,
    Choice,
    Context,
    Example,
    FloatArray,
    Sampler,
    SamplerCache,
    SnapshotError,
    check_candidates,
    decode_snapshot,
    draw_weighted,
    floor_pmf,
)
from bandits.cells import (
    GLOBAL_PRIOR,
    CellModels,
    CellsState,
    Level,
    Partition,
    thompson_probabilities,
)
from bandits.drift import CellShift, Cusum, slack_for
from bandits.vw import VWPolicy
from tailor_contract.policies import VWCBConfig
from tailor_contract.wire import Factor

__all__ = ["EnsemblePolicy", "MemberReport", "ServingReport"]

NAME: Final = "vw_cb"
PROBE: Final = 0.1
Z: Final = 1.96
MIN_EVIDENCE: Final = 500.0
ESTIMATE_HALF_LIFE: Final = 10_000
"""Examples after which a member's gain estimate weighs half: the estimate follows the member
as it learns (a member's early, exploring decisions say little about it now)."""
RANK_EVERY: Final = 250
"""Examples between two partition searches (and at least a twentieth of all examples)."""
DRIFT_KEEP: Final = 0.05
"""Share of their weight the statistics keep when a change of the world is detected."""
_CONTEXTUAL: Final = ("cells", "vw")


class _Estimate(msgspec.Struct, array_like=True):
    """Forgetting sums of the gain over the baseline: weight, sum d, sum d^2."""

    weight: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def add(self, d: float, decay: float) -> None:
        self.weight = self.weight * decay + 1.0
        self.total = self.total * decay + d
        self.squares = self.squares * decay + d * d

    def interval(self) -> tuple[float, float, float]:
        """(estimate, lower, upper) of the mean gain; infinite bounds without evidence."""
        if self.weight < MIN_EVIDENCE:
            return 0.0, -math.inf, math.inf
        mean = self.total / self.weight
        var = max(self.squares / self.weight - mean * mean, 0.0)
        se = math.sqrt(var / self.weight)
        return mean, mean - Z * se, mean + Z * se


class _EnsembleState(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="vw_cb_ensemble"
):
    vw_args: list[str]
    vw: bytes
    cells: CellsState
    estimates: dict[str, _Estimate]
    serving: str
    mix: float
    partition: list[str]
    table: list[Level]
    drift: Cusum
    ranked_at: int
    shift: CellShift = msgspec.field(default_factory=CellShift)
    format: Literal[2] = 2
    rows: bytes = b""
    values: bytes = b""
    stride: int = 0
    """The VW member's non-zero weight rows when its decisions depend on the weights alone
    (epsilon exploration): a serving worker patches them in place (:meth:`EnsemblePolicy.patch`)."""


class MemberReport(msgspec.Struct, frozen=True, kw_only=True):
    """A contextual member's estimated gain over the baseline per decision, with its 95% bounds."""

    member: str
    gain: float
    lower: float
    upper: float
    evidence: float


class ServingReport(msgspec.Struct, frozen=True, kw_only=True):
    """Who serves (``member``, with share ``mix`` against the baseline) and why; ``changes``:
    how often a change of the world was detected and the statistics were discounted."""

    member: str
    mix: float
    partition: str
    members: list[MemberReport]
    changes: int = 0


class EnsemblePolicy:
    """``vw_cb``'s default: VW, per-cell Thompson and a baseline behind one Policy."""

    def __init__(
        self, config: VWCBConfig, *, version: str = "0", state: _EnsembleState | None = None
    ) -> None:
        """Build every member, from ``state`` when given.

        Raises:
            SnapshotError: if VW cannot load the state's model.
        """
        self.name: str = NAME
        self.version: str = version
        self._config = config
        self._decay = 0.5 ** (1.0 / ESTIMATE_HALF_LIFE)
        self._vw = VWPolicy(config, version=version, model=state.vw if state else None)
        self._load(state)

    def _load(self, state: _EnsembleState | None) -> None:
        """Everything but the VW member, fresh or from ``state``."""
        config = self._config
        self._cells = CellModels(
            max_attributes=config.max_cell_attributes,
            max_values=config.max_cell_values,
            half_life=config.forget_half_life,
            state=state.cells if state else None,
        )
        self._estimates = {m: _Estimate() for m in _CONTEXTUAL}
        self._serving = "baseline"
        self._mix = 0.0
        self._partition: Partition = ()
        self._table: list[Level] = []
        self._drift = Cusum()
        self._shift = CellShift()
        self._ranked_at = 0
        if state is not None:
            self._estimates.update(
                {
                    k: _Estimate(v.weight, v.total, v.squares)
                    for k, v in state.estimates.items()
                    if k in _CONTEXTUAL
                }
            )
            self._serving, self._mix = state.serving, state.mix
            self._partition = tuple(state.partition)
            self._table = list(state.table)
            self._drift = msgspec.structs.replace(state.drift)
            self._shift = msgspec.structs.replace(state.shift, terms=dict(state.shift.terms))
            self._ranked_at = state.ranked_at
        self._arm_order = tuple(self._cells.arms)
        self._samplers = SamplerCache()
        self._tag = self._member_tag()

    # -- members' pmfs ---------------------------------------------------------------------

    def _cell_level(self, depth: int, context: Context) -> tuple[int, str]:
        """The deepest level (at most ``depth``) of the table holding the context's cell, and
        the cell's key there; (0, "") is the global model."""
        if not self._table:
            return 0, ""
        cell = self._cells.cell_of(self._partition[:depth], context)
        if cell is None:
            return 0, ""
        for level in range(min(depth, len(self._table) - 1), 0, -1):
            key = "\x1f".join(cell[:level])
            if key in self._table[level].best:
                return level, key
        return 0, ""

    def _level_pmf(self, level: int, key: str, keys: tuple[str, ...]) -> FloatArray:
        """Thompson probabilities of ``keys`` in a cell of the table: the shipped ones when
        ``keys`` are all arms in their order, else by quadrature from the cell's posterior
        (arms never learned get the overall mean and the prior variance)."""
        if not self._table:
            return np.full(len(keys), 1.0 / len(keys))
        row = self._table[level]
        arms = self._cells.arms
        if keys == self._arm_order:
            return np.asarray(row.best[key])
        if len(keys) == len(arms) and all(k in arms for k in keys):
            best = row.best[key]
            return np.array([best[arms[k]] for k in keys])
        mean0, sigma2 = self._cells.overall()
        means, variances = row.means[key], row.variances[key]
        mean = np.array([means[arms[k]] if k in arms else mean0 for k in keys])
        var = np.array([variances[arms[k]] if k in arms else sigma2 / GLOBAL_PRIOR for k in keys])
        return thompson_probabilities(mean, var)

    def _cell_pmf(self, context: Context, keys: tuple[str, ...], depth: int) -> FloatArray:
        level, key = self._cell_level(depth, context)
        return self._level_pmf(level, key, keys)

    def _member_pmfs(
        self,
        context: Context,
        candidates: Sequence[Candidate],
        keys: tuple[str, ...],
        cache: dict[object, FloatArray],
        with_vw: bool,
    ) -> dict[str, FloatArray]:
        """Each member's pmf for one context; cell pmfs memoised in ``cache``."""
        out: dict[str, FloatArray] = {}
        base_key = ("b", keys)
        base = cache.get(base_key)
        if base is None:
            base = cache[base_key] = self._level_pmf(0, "", keys)
        out["baseline"] = base
        if self._partition:
            level, key = self._cell_level(len(self._partition), context)
            cell_key = ("c", level, key, keys)
            pmf = cache.get(cell_key)
            if pmf is None:
                pmf = cache[cell_key] = self._level_pmf(level, key, keys)
            out["cells"] = pmf
        if with_vw:
            out["vw"] = self._vw.pmf(context, candidates)
        return out

    def member_pmfs(
        self, context: Context, candidates: Sequence[Candidate]
    ) -> dict[str, FloatArray]:
        """Each member's own pmf for ``context`` (``baseline``, ``cells`` once a partition is
        chosen, ``vw``), before mixing and flooring: what each would serve alone."""
        keys = check_candidates(candidates)
        return self._member_pmfs(context, candidates, keys, {}, with_vw=True)

    # -- decisions -------------------------------------------------------------------------

    def _member_tag(self) -> str:
        member = self._serving
        if member == "cells":
            member = "cells:" + "+".join(self._partition)
        if self._mix == 0.0:
            member = "baseline"
        elif self._mix < 1.0:
            member = f"mix:{member}"
        return f"{self.version}/{member}"

    def floor(self, n: int) -> float:
        """The exploration floor of each of ``n`` candidates now (it falls with evidence)."""
        return self._config.floor(n, examples=self._cells.count)

    def _served(
        self, context: Context, candidates: Sequence[Candidate], keys: tuple[str, ...]
    ) -> tuple[Sampler | None, list[float] | None]:
        """The served pmf: a cached Sampler when no VW prediction is needed, else weights."""
        uses_vw = self._serving == "vw" and self._mix > 0.0
        floor = self.floor(len(keys))
        if not uses_vw:
            depth = len(self._partition) if self._serving == "cells" and self._mix > 0 else 0
            level, key = self._cell_level(depth, context)
            cache_key = (level, key, keys)
            sampler = self._samplers.get(cache_key)
            if sampler is None:
                base = self._level_pmf(0, "", keys)
                pmf = (
                    base
                    if level == 0
                    else (self._mix * self._level_pmf(level, key, keys) + (1.0 - self._mix) * base)
                )
                sampler = self._samplers.put(cache_key, Sampler(floor_pmf(pmf.tolist(), floor)))
            return sampler, None
        base_sampler = self._samplers.get(("base", keys))
        if base_sampler is None:
            base_sampler = self._samplers.put(("base", keys), Sampler(self._level_pmf(0, "", keys)))
        vw = self._vw.pmf(context, candidates)
        mixed = self._mix * vw + (1.0 - self._mix) * base_sampler.pmf
        return None, floor_pmf(mixed.tolist(), floor)

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """The served pmf over ``candidates``, shape ``(n,)``: what ``choose`` draws from."""
        keys = check_candidates(candidates)
        sampler, weights = self._served(context, candidates, keys)
        if sampler is not None:
            return sampler.pmf
        return np.asarray(weights)

    def explain(
        self, context: Context, candidates: Sequence[Candidate], chosen: str
    ) -> list[Factor]:
        """Why ``chosen`` was drawn: the cell attributes (with the unit's values) when the cells
        member serves and the unit falls in a cell; the VW member's own explanation when VW
        serves; nothing for the baseline (no feature of the unit selects it)."""
        if self._mix == 0.0:
            return []
        if self._serving == "cells" and self._partition:
            level, _ = self._cell_level(len(self._partition), context)
            if level == 0:
                return []
            cell = self._cells.cell_of(self._partition[:level], context)
            assert cell is not None
            return [
                Factor(feature=a, value=v)
                for a, v in zip(self._partition[:level], cell, strict=True)
            ]
        if self._serving == "vw":
            return self._vw.explain(context, candidates, chosen)
        return []

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw from the served pmf; ``model_version`` names the serving member."""
        keys = check_candidates(candidates)
        sampler, weights = self._served(context, candidates, keys)
        if sampler is not None:
            return sampler.choice(keys, rng.random(), self.name, self._tag)
        assert weights is not None
        index, propensity = draw_weighted(weights, rng.random())
        return Choice(
            index=index,
            key=keys[index],
            propensity=propensity,
            policy=self.name,
            model_version=self._tag,
        )

    def choose_many(
        self, contexts: Sequence[Context], candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> list[Choice]:
        """Decide for each context over the same candidates; equals repeated ``choose``."""
        keys = check_candidates(candidates)
        out = []
        for context, u in zip(contexts, rng.random(len(contexts)).tolist(), strict=True):
            sampler, weights = self._served(context, candidates, keys)
            if sampler is not None:
                out.append(sampler.choice(keys, u, self.name, self._tag))
                continue
            assert weights is not None
            index, propensity = draw_weighted(weights, u)
            out.append(
                Choice(
                    index=index,
                    key=keys[index],
                    propensity=propensity,
                    policy=self.name,
                    model_version=self._tag,
                )
            )
        return out

    # -- learning --------------------------------------------------------------------------

    def learn(self, examples: Sequence[Example]) -> None:
        """Score the members on the batch (as they were before it), watch for a change of the
        world, then teach every member and refresh the partition and the serving table."""
        if not examples:
            return
        cache: dict[object, FloatArray] = {}
        changed = False
        _, sigma2 = self._cells.overall()
        sd = math.sqrt(sigma2)
        checked: list[tuple[str, float, float, float]] = []  # cell and arm, reward, mean, var
        for ex in examples:
            keys = check_candidates(ex.candidates)
            pmfs = self._member_pmfs(ex.context, ex.candidates, keys, cache, with_vw=True)
            base = float(pmfs["baseline"][ex.chosen])
            scale = ex.reward / ex.propensity
            for member in _CONTEXTUAL:
                pmf = pmfs.get(member)
                gain = 0.0 if pmf is None else (float(pmf[ex.chosen]) - base) * scale
                self._estimates[member].add(gain, self._decay)
            predicted = self._predicted(ex.context, ex.chosen_key)
            if predicted is None:
                continue
            cell, mean, var = predicted
            if self._drift.update((ex.reward - mean) / sd, slack_for(len(keys))):
                changed = True
            checked.append((cell, ex.reward, mean, var))
        if checked:
            noises = self._cells.noise(np.array([c[2] for c in checked])).tolist()
            for (cell, reward, mean, var), noise in zip(checked, noises, strict=True):
                if self._shift.update(cell, reward, mean, noise, var):
                    changed = True
        if changed:
            self._cells.forget(DRIFT_KEEP)
            self._estimates = {m: _Estimate() for m in _CONTEXTUAL}
            self._shift.reset()
        self._vw.learn([msgspec.structs.replace(ex, propensity=1.0) for ex in examples])
        for ex in examples:
            self._cells.learn(ex.context, ex.chosen_key, ex.reward)
        self._arm_order = tuple(self._cells.arms)
        self._select(rank=changed)

    def _predicted(self, context: Context, arm: str) -> tuple[str, float, float] | None:
        """The served chain's (cell and arm, posterior mean, posterior variance) of ``arm`` in
        the context's cell (None before anything was learned)."""
        i = self._cells.arms.get(arm)
        if i is None or not self._table:
            return None
        level, key = self._cell_level(len(self._partition), context)
        row = self._table[level]
        return f"{level}\x1f{key}\x1f{arm}", row.means[key][i], row.variances[key][i]

    def _select(self, rank: bool = False) -> None:
        """Search the partition now and then, rebuild the serving table, and pick who serves
        and with what share (module docstring)."""
        count = self._cells.count
        if rank or count - self._ranked_at >= max(RANK_EVERY, count // 20) or not self._table:
            self._partition = self._cells.ranked()[0][0]
            self._ranked_at = count
        self._table = self._cells.table(self._partition)
        bounds = {m: self._estimates[m].interval() for m in _CONTEXTUAL}
        cells_est, _, cells_hi = bounds["cells"]
        _, vw_lo, vw_hi = bounds["vw"]
        if vw_lo > 0.0 and (not self._partition or vw_lo > cells_est):
            # VW serves once credibly better than the baseline and than the cells' estimate.
            contender, mix = "vw", 1.0
        elif self._partition:
            # The cells serve unless credibly worse than the baseline; then they keep a probe
            # share, enough to be re-evaluated.
            contender, mix = "cells", (PROBE if cells_hi < 0.0 else 1.0)
        else:
            # No partition predicts better than the global model: the baseline serves, VW
            # probes unless credibly worse.
            contender, mix = "vw", (0.0 if vw_hi < 0.0 else PROBE)
        self._serving, self._mix = contender, mix
        self._samplers.clear()
        self._tag = self._member_tag()

    # -- reports and snapshots -------------------------------------------------------------

    def serving_report(self) -> ServingReport:
        """Who serves, and every contextual member's estimated gain over the baseline."""
        members = []
        for m in _CONTEXTUAL:
            est, lo, hi = self._estimates[m].interval()
            members.append(
                MemberReport(
                    member=m, gain=est, lower=lo, upper=hi, evidence=self._estimates[m].weight
                )
            )
        return ServingReport(
            member=self._tag.partition("/")[2],
            mix=self._mix,
            partition="+".join(self._partition),
            members=members,
            changes=self._drift.alarms + self._shift.alarms,
        )

    def snapshot(self) -> bytes:
        """Serialize every member and the serving state (with the VW member's weight rows when
        its decisions depend on them alone)."""
        rows, values, stride = self._vw.weight_rows() if self._vw.patchable else (b"", b"", 0)
        state = _EnsembleState(
            vw_args=self._config.structural_args(),
            vw=self._vw.model_bytes(),
            cells=self._cells.state(),
            estimates=dict(self._estimates),
            serving=self._serving,
            mix=self._mix,
            partition=list(self._partition),
            table=self._table,
            drift=self._drift,
            ranked_at=self._ranked_at,
            shift=self._shift,
            rows=rows,
            values=values,
            stride=stride,
        )
        return msgspec.msgpack.encode(state)

    def patch(self, snapshot: bytes, *, version: str) -> bool:
        """Take a newer snapshot in place (a serving worker's model swap): the VW member's
        weights overwritten from the snapshot's rows (a memory copy instead of loading a VW
        workspace, which held the worker's GIL for 10-20 ms per snapshot), the other members
        and the serving state decoded. Decisions afterwards equal those of
        :meth:`restore`'s. False, changing nothing, when the snapshot carries no rows or was
        trained with other VW arguments."""
        try:
            state = decode_snapshot(snapshot, _EnsembleState, "vw_cb ensemble")
        except SnapshotError:
            return False
        if state.vw_args != self._config.structural_args() or not state.rows:
            return False
        if not self._vw.patch_rows(state.rows, state.values, state.stride, version=version):
            return False
        self.version = version
        self._load(state)
        return True

    @classmethod
    def restore(cls, config: VWCBConfig, snapshot: bytes, *, version: str) -> EnsemblePolicy:
        """Rebuild from a snapshot of an ensemble.

        Raises:
            SnapshotError: if it is not an ensemble snapshot or VW cannot load its model.
        """
        state = decode_snapshot(snapshot, _EnsembleState, "vw_cb ensemble")
        expected = config.structural_args()
        if state.vw_args != expected:
            raise SnapshotError(
                "snapshot's VW member was trained with VW arguments "
                f"{' '.join(state.vw_args)!r} but the config gives {' '.join(expected)!r}; "
                "only epsilon may change"
            )
        return cls(config, version=version, state=state)
