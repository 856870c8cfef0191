"""The policy protocol and the types every policy speaks.

A policy maps a context (unit profile features merged with the request context) and a
sequence of candidate actions to a :class:`Choice`: the candidate it picked and the exact
probability with which it picked it. Every policy here works the same way: it computes a
probability mass function (pmf) over the candidates, then draws one index from that pmf with
the caller's ``numpy.random.Generator``. The logged propensity is the pmf's value at the drawn
index, so off-policy estimators downstream (IPS, SNIPS, DR) see the probability really used.

Policies serving decisions are never mutated: a learner process calls :meth:`Policy.learn`,
publishes :meth:`Policy.snapshot` with a new version, and workers hot-swap by building a new
policy from the snapshot (see :func:`bandits.registry.build_policy`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol, TypeVar, runtime_checkable

import msgspec
import numpy as np
import numpy.typing as npt

FeatureValue = str | int | float | bool | list[str]
"""A typed feature: strings are categorical, numbers are scaled, lists are sets of tags."""

Context = Mapping[str, FeatureValue]
"""Features describing the decision: unit profile merged with the request context."""

FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T")


class PolicyError(Exception):
    """Base class of every error a policy raises on purpose."""


class CandidateError(PolicyError, ValueError):
    """The candidate set cannot be decided on (empty, duplicate keys, nothing eligible)."""


class SnapshotError(PolicyError, ValueError):
    """A snapshot cannot be restored into this policy (wrong kind, corrupt, incompatible)."""


class Arm(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A variant of the experiment as the policy sees it: its key and traffic weight."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    weight: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0.0):
            raise ValueError(f"weight == {self.weight}, must be finite and >= 0")


class Candidate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An action offered to the policy, with per-action features from the variant's payload."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    features: Mapping[str, FeatureValue] = msgspec.field(default_factory=dict)


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """What a policy decided.

    ``index`` points into the candidate sequence passed to ``choose``; ``propensity`` is the
    probability with which the policy drew that index.
    """

    index: int
    key: str
    propensity: float
    policy: str
    model_version: str


class Example(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One joined training example: the logged decision and the reward it earned.

    ``chosen`` indexes ``candidates``; ``propensity`` is the logged probability of that choice.
    """

    context: Mapping[str, FeatureValue]
    candidates: tuple[Candidate, ...]
    chosen: Annotated[int, msgspec.Meta(ge=0)]
    propensity: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
    reward: float

    def __post_init__(self) -> None:
        if not 0 <= self.chosen < len(self.candidates):
            raise ValueError(
                f"chosen == {self.chosen}, must be in [0, {len(self.candidates)}) "
                "(an index into candidates)"
            )
        if not 0.0 < self.propensity <= 1.0:
            raise ValueError(f"propensity == {self.propensity}, must be in (0, 1]")
        if not math.isfinite(self.reward):
            raise ValueError(f"reward == {self.reward}, must be finite")

    @property
    def chosen_key(self) -> str:
        """The key of the candidate that was chosen."""
        return self.candidates[self.chosen].key


@runtime_checkable
class Policy(Protocol):
    """A decision policy: explore with exact propensities, learn from joined rewards.

    Implementations are not thread-safe for ``learn``; ``choose`` on a serving policy (one that
    is never taught in place) may run on one event loop. The VW policy is not thread-safe at all.
    """

    @property
    def name(self) -> str:
        """The policy kind, e.g. ``"thompson"``, logged with every decision."""
        ...

    @property
    def version(self) -> str:
        """The model version this policy was built from, logged with every decision."""
        ...

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Return the probabilities ``choose`` would use, shape ``(len(candidates),)``."""
        ...

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw one candidate from :meth:`pmf`, consuming exactly one ``rng.random()``."""
        ...

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Decide for many contexts over the same candidates; equals repeated ``choose``."""
        ...

    def learn(self, examples: Sequence[Example]) -> None:
        """Update the model in place from joined examples."""
        ...

    def snapshot(self) -> bytes:
        """Serialize the model state; ``build_policy(..., snapshot=...)`` restores it exactly."""
        ...


@runtime_checkable
class Incremental(Protocol):
    """A serving policy that can take a newer snapshot in place, cheaply (no model rebuild).

    Serving workers swap models while they decide; rebuilding a model can hold the GIL for
    milliseconds (a VW workspace), stalling every request of the worker. A policy whose
    predictions depend on state it can overwrite in a memory copy implements this.
    """

    def patch(self, snapshot: bytes, *, version: str) -> bool:
        """Make this policy equal to ``build_policy(..., snapshot=snapshot)`` for decisions,
        with ``version``; returns False (nothing changed) when it cannot, and the caller
        rebuilds."""
        ...


def check_candidates(candidates: Sequence[Candidate]) -> tuple[str, ...]:
    """Return the candidate keys, raising CandidateError if empty or not unique."""
    keys = tuple(c.key for c in candidates)
    if not keys:
        raise CandidateError("no candidates to choose from")
    if len(set(keys)) != len(keys):
        raise CandidateError(f"candidate keys must be unique, got {list(keys)}")
    return keys


class Sampler:
    """Draws indices from one fixed pmf, exactly.

    The pmf is normalised once in float64; index ``i`` is returned when a uniform ``u`` in
    [0, 1) falls in ``[cdf[i-1], cdf[i])`` after scaling by the total, so zero-probability
    entries are never drawn and each index has probability ``pmf[i]``.
    """

    __slots__ = ("_cdf", "_cdf_list", "_last", "_pmf_list", "_total", "pmf")

    def __init__(self, weights: npt.ArrayLike) -> None:
        pmf = np.asarray(weights, dtype=np.float64)
        if pmf.ndim != 1 or pmf.size == 0:
            raise CandidateError("a pmf needs at least one entry")
        if not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
            raise CandidateError(f"pmf entries must be finite and >= 0, got {pmf.tolist()}")
        total = float(pmf.sum())
        if total <= 0:
            raise CandidateError("no candidate has positive probability")
        self.pmf: FloatArray = pmf / total
        self.pmf.setflags(write=False)
        self._cdf = np.cumsum(self.pmf)
        self._total = float(self._cdf[-1])
        self._last = int(np.flatnonzero(self.pmf)[-1])
        # Python lists for the one-draw path: bisect on a list is ~20x faster than numpy's
        # searchsorted on a small array, and it finds the same index.
        self._cdf_list: list[float] = self._cdf.tolist()
        self._pmf_list: list[float] = self.pmf.tolist()

    def draw(self, u: float) -> int:
        """Map one uniform in [0, 1) to an index."""
        i = bisect.bisect_right(self._cdf_list, u * self._total)
        return min(i, self._last)

    def draw_many(self, u: FloatArray) -> npt.NDArray[np.intp]:
        """Map uniforms in [0, 1), shape ``(n,)``, to indices, shape ``(n,)``."""
        idx = np.searchsorted(self._cdf, u * self._total, side="right")
        return np.minimum(idx, self._last)

    def choice(self, keys: Sequence[str], u: float, name: str, version: str) -> Choice:
        """Draw one index and wrap it as a Choice carrying its exact propensity."""
        i = self.draw(u)
        return Choice(
            index=i,
            key=keys[i],
            propensity=self._pmf_list[i],
            policy=name,
            model_version=version,
        )

    def choices(self, keys: Sequence[str], u: FloatArray, name: str, version: str) -> list[Choice]:
        """Draw one index per uniform in ``u`` and wrap each as a Choice."""
        pmf = self._pmf_list
        return [
            Choice(
                index=i,
                key=keys[i],
                propensity=pmf[i],
                policy=name,
                model_version=version,
            )
            for i in self.draw_many(u).tolist()
        ]


class SamplerCache:
    """A bounded map from a cache key to the Sampler computed for it.

    Serving policies are immutable, so a sampler never goes stale; when ``max_size`` keys are
    held the cache is emptied rather than tracking recency (rare, and cheap to refill).
    """

    __slots__ = ("_items", "_max_size")

    def __init__(self, max_size: int = 4096) -> None:
        self._items: dict[object, Sampler] = {}
        self._max_size = max_size

    def get(self, key: object) -> Sampler | None:
        """Return the cached sampler for ``key``, if any."""
        return self._items.get(key)

    def put(self, key: object, sampler: Sampler) -> Sampler:
        """Store and return ``sampler`` under ``key``."""
        if len(self._items) >= self._max_size:
            self._items.clear()
        self._items[key] = sampler
        return sampler

    def clear(self) -> None:
        """Forget every sampler (call after the model changes)."""
        self._items.clear()


def decode_snapshot(data: bytes, state_type: type[_T], kind: str) -> _T:
    """Decode a msgpack snapshot into ``state_type`` or raise SnapshotError naming ``kind``."""
    try:
        return msgspec.msgpack.decode(data, type=state_type)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise SnapshotError(f"not a {kind} snapshot: {exc}") from exc


def draw_weighted(weights: Sequence[float], u: float) -> tuple[int, float]:
    """Map a uniform ``u`` in [0, 1) to ``(index, weights[index] / sum(weights))``.

    Pure Python for short, once-used weight lists (a fresh pmf per decision), where building
    a numpy array costs more than the walk. Zero-weight entries are never returned.

    Raises:
        CandidateError: if no weight is positive.
    """
    total = math.fsum(weights)
    if not total > 0:
        raise CandidateError("no candidate has positive probability")
    target = u * total
    acc = 0.0
    last = -1
    for i, w in enumerate(weights):
        if w > 0:
            acc += w
            last = i
            if target < acc:
                return i, w / total
    return last, weights[last] / total


def floor_pmf(weights: Sequence[float], floor: float) -> list[float]:
    """Normalise ``weights`` and mix them with uniform just enough that every entry is >= floor.

    With ``p = weights / sum(weights)``, ``n`` entries and ``m = min(p)``: when ``m >= floor``
    the pmf is ``p`` unchanged; otherwise it is ``(1 - lam) p + lam / n`` with
    ``lam = (floor - m) / (1/n - m)``, the smallest mixing weight that lifts the smallest entry
    to ``floor``. The result sums to one, keeps the order of the entries and gives every one at
    least ``floor`` (up to rounding). Costs one pass over the entries: no sampling.

    Args:
        weights: Non-negative weights, shape ``(n,)``, at least one positive.
        floor: The minimum probability, in ``[0, 1/n]`` (see :func:`floor_for`).

    Raises:
        CandidateError: if no weight is positive.
    """
    total = math.fsum(weights)
    if not total > 0:
        raise CandidateError("no candidate has positive probability")
    p = [w / total for w in weights]
    low = min(p)
    if low >= floor:
        return p
    uniform = 1.0 / len(p)
    lam = min(1.0, (floor - low) / (uniform - low))
    keep = 1.0 - lam
    share = lam * uniform
    return [keep * x + share for x in p]


def floor_for(min_propensity: float, n: int) -> float:
    """The floor used with ``n`` candidates: ``min_propensity``, at most a uniform ``1/n``."""
    return min(min_propensity, 1.0 / n)
