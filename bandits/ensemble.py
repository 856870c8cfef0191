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
it was before the batch, ``p_i`` the logged propensity), and its standard error. The member with
the highest lower bound ``D_c - 1.96 SE`` is the contender; the served pmf is
``w pi_c + (1 - w) pi_b``, floored to ``min_propensity``, with

- ``w = 1`` when the contender's lower bound is above zero (it serves alone),
- ``w = PROBE`` when its upper bound is below zero (the baseline serves, the contender keeps a
  share so that it can still prove itself),
- ``w = 1/2`` otherwise (and ``1`` again while a member that served alone keeps a positive
  estimate, so that serving does not flap).

So the served policy is never worse than the baseline by more than the interval of the gain, and
the contender gets enough traffic to be evaluated. The decision's ``model_version`` says who
served: ``<version>/<member>`` with member ``cells:<attributes>``, ``vw``, ``baseline`` or
``mix:<contender>``; :meth:`EnsemblePolicy.serving_report` gives the estimates.

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
from bandits.cells import Cell, CellModels, CellsState, Partition
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


class _EnsembleState(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind",
                     tag="vw_cb_ensemble"):
    vw_args: list[str]
    vw: bytes
    cells: CellsState
    estimates: dict[str, _Estimate]
    serving: str
    mix: float
    partition: list[str]
    format: Literal[1] = 1


class MemberReport(msgspec.Struct, frozen=True, kw_only=True):
    """A contextual member's estimated gain over the baseline per decision, with its 95% bounds."""

    member: str
    gain: float
    lower: float
    upper: float
    evidence: float


class ServingReport(msgspec.Struct, frozen=True, kw_only=True):
    """Who serves (``member``, with share ``mix`` against the baseline) and why."""

    member: str
    mix: float
    partition: str
    members: list[MemberReport]


class EnsemblePolicy:
    """``vw_cb``'s default: VW, per-cell Thompson and a baseline behind one Policy."""

    def __init__(self, config: VWCBConfig, *, version: str = "0",
                 state: _EnsembleState | None = None) -> None:
        """Build every member, from ``state`` when given.

        Raises:
            SnapshotError: if VW cannot load the state's model.
        """
        self.name: str = NAME
        self.version: str = version
        self._config = config
        half = config.forget_half_life
        self._decay = 0.5 ** (1.0 / ESTIMATE_HALF_LIFE)
        self._vw = VWPolicy(config, version=version, model=state.vw if state else None)
        self._cells = CellModels(
            max_attributes=config.max_cell_attributes, max_values=config.max_cell_values,
            half_life=half, state=state.cells if state else None,
        )
        self._estimates = {m: _Estimate() for m in _CONTEXTUAL}
        self._serving = "baseline"
        self._mix = 0.0
        self._partition: Partition = ()
        if state is not None:
            self._estimates.update({k: _Estimate(v.weight, v.total, v.squares)
                                    for k, v in state.estimates.items() if k in _CONTEXTUAL})
            self._serving, self._mix = state.serving, state.mix
            self._partition = tuple(state.partition)
        self._samplers = SamplerCache()
        self._tag = self._member_tag()

    # -- members' pmfs ---------------------------------------------------------------------

    def _cell_pmf(self, part: Partition, cell: Cell | None, keys: tuple[str, ...]) -> FloatArray:
        return self._cells.win_probabilities(part, cell if part else (), keys)

    def _member_pmfs(self, context: Context, candidates: Sequence[Candidate],
                     keys: tuple[str, ...], cache: dict[object, FloatArray],
                     with_vw: bool) -> dict[str, FloatArray]:
        """Each member's pmf for one context; cell pmfs memoised in ``cache``."""
        out: dict[str, FloatArray] = {}
        base_key = ("b", keys)
        base = cache.get(base_key)
        if base is None:
            base = cache[base_key] = self._cell_pmf((), (), keys)
        out["baseline"] = base
        part = self._partition
        if part:
            cell = self._cells.cell_of(part, context)
            cell_key = ("c", part, cell, keys)
            pmf = cache.get(cell_key)
            if pmf is None:
                pmf = cache[cell_key] = self._cell_pmf(part, cell, keys)
            out["cells"] = pmf
        if with_vw:
            out["vw"] = self._vw.pmf(context, candidates)
        return out

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

    def _served(self, context: Context, candidates: Sequence[Candidate],
                keys: tuple[str, ...]) -> tuple[Sampler | None, list[float] | None]:
        """The served pmf: a cached Sampler when no VW prediction is needed, else weights."""
        uses_vw = self._serving == "vw" and self._mix > 0.0
        floor = self._config.floor(len(keys))
        if not uses_vw:
            part = self._partition if self._serving == "cells" and self._mix > 0.0 else ()
            cell = self._cells.cell_of(part, context) if part else ()
            cache_key = (part, cell, keys)
            sampler = self._samplers.get(cache_key)
            if sampler is None:
                base = self._cell_pmf((), (), keys)
                pmf = base if not part else (
                    self._mix * self._cell_pmf(part, cell, keys) + (1.0 - self._mix) * base)
                sampler = self._samplers.put(cache_key, Sampler(floor_pmf(pmf.tolist(), floor)))
            return sampler, None
        base_sampler = self._samplers.get(("base", keys))
        if base_sampler is None:
            base_sampler = self._samplers.put(("base", keys),
                                              Sampler(self._cell_pmf((), (), keys)))
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
            cell = self._cells.cell_of(self._partition, context)
            if cell is None:
                return []
            return [Factor(feature=a, value=v) for a, v in zip(self._partition, cell, strict=True)]
        if self._serving == "vw":
            return self._vw.explain(context, candidates, chosen)
        return []

    def choose(self, context: Context, candidates: Sequence[Candidate],
               rng: np.random.Generator) -> Choice:
        """Draw from the served pmf; ``model_version`` names the serving member."""
        keys = check_candidates(candidates)
        sampler, weights = self._served(context, candidates, keys)
        if sampler is not None:
            return sampler.choice(keys, rng.random(), self.name, self._tag)
        assert weights is not None
        index, propensity = draw_weighted(weights, rng.random())
        return Choice(index=index, key=keys[index], propensity=propensity, policy=self.name,
                      model_version=self._tag)

    def choose_many(self, contexts: Sequence[Context], candidates: Sequence[Candidate],
                    rng: np.random.Generator) -> list[Choice]:
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
            out.append(Choice(index=index, key=keys[index], propensity=propensity,
                              policy=self.name, model_version=self._tag))
        return out

    # -- learning --------------------------------------------------------------------------

    def learn(self, examples: Sequence[Example]) -> None:
        """Score the members on the batch (as they were before it), then teach every member."""
        if not examples:
            return
        cache: dict[object, FloatArray] = {}
        for ex in examples:
            keys = check_candidates(ex.candidates)
            pmfs = self._member_pmfs(ex.context, ex.candidates, keys, cache, with_vw=True)
            base = float(pmfs["baseline"][ex.chosen])
            scale = ex.reward / ex.propensity
            for member in _CONTEXTUAL:
                pmf = pmfs.get(member)
                gain = 0.0 if pmf is None else (float(pmf[ex.chosen]) - base) * scale
                self._estimates[member].add(gain, self._decay)
        self._vw.learn([msgspec.structs.replace(ex, propensity=1.0) for ex in examples])
        for ex in examples:
            self._cells.learn(ex.context, ex.chosen_key, ex.reward, ex.propensity)
        self._select()

    def _select(self) -> None:
        """Pick the best partition, then who serves and with what share (module docstring)."""
        ranked = self._cells.ranked()
        best = ranked[0][0] if ranked else ()
        # The cells member's estimate carries over a change of partition: it is the track
        # record of serving the best partition of the moment.
        self._partition = best
        bounds = {m: self._estimates[m].interval() for m in _CONTEXTUAL}
        # The contender is the member with the best estimate (cells on ties: it is the cheaper
        # one to serve); its bounds decide its share.
        contender = max(_CONTEXTUAL, key=lambda m: bounds[m][0])
        if not self._partition and contender == "cells":
            contender = "vw"
        estimate, lower, upper = bounds[contender]
        if lower > 0.0:
            mix = 1.0
        elif upper < 0.0:
            mix = PROBE
        elif self._mix == 1.0 and self._serving == contender and estimate > 0.0:
            mix = 1.0
        else:
            mix = 0.5
        self._serving, self._mix = contender, mix
        self._samplers.clear()
        self._tag = self._member_tag()

    # -- reports and snapshots -------------------------------------------------------------

    def serving_report(self) -> ServingReport:
        """Who serves, and every contextual member's estimated gain over the baseline."""
        members = []
        for m in _CONTEXTUAL:
            est, lo, hi = self._estimates[m].interval()
            members.append(MemberReport(member=m, gain=est, lower=lo, upper=hi,
                                        evidence=self._estimates[m].weight))
        return ServingReport(member=self._tag.partition("/")[2], mix=self._mix,
                             partition="+".join(self._partition), members=members)

    def snapshot(self) -> bytes:
        """Serialize every member and the serving state."""
        state = _EnsembleState(
            vw_args=self._config.structural_args(),
            vw=self._vw.model_bytes(),
            cells=self._cells.state(),
            estimates=dict(self._estimates),
            serving=self._serving,
            mix=self._mix,
            partition=list(self._partition),
        )
        return msgspec.msgpack.encode(state)

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
