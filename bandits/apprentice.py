"""Apprentice mode: a learning policy that serves a fixed split while it learns, until it is
better.

Until it takes over, :class:`ApprenticePolicy` serves the experiment's fixed split (the variant
weights; all weight on the default variant serves it alone) mixed with ``explore`` spread evenly
over the candidates: ``pmf = (1 - e) · split + e / n``, the logged propensity being that pmf's.
Every joined decision teaches the inner (learning) policy, and before it learns a batch the
inner policy's pmf on each of its decisions gives a paired off-policy estimate of its own value
against the split's (progressive validation, as ``experiments.off_policy.what_if``): with
w_i = π(a_i | x_i) / p_i and b_i = split(a_i) / p_i, the per-decision terms are
d_i = (w_i - b_i) r_i, and the gain is mean(d) ± 1.96 sd(d) / √n.

It takes over — serves the inner policy's own choices, with its name — when the lower bound of
the gain is above zero after ``min_decisions`` (``takeover: auto``), or when an admin says so
(``takeover: manual``; :func:`take_over` rewrites a snapshot). While apprenticing its name is
``apprentice:<inner>``, which every decision logs; after the takeover it is the inner policy's.
The snapshot holds the inner model's, the running sums of the estimate and who took over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

import msgspec
import numpy as np

from bandits.base import (
    Arm,
    Candidate,
    Choice,
    Context,
    Example,
    FloatArray,
    Policy,
    Sampler,
    SnapshotError,
    check_candidates,
    decode_snapshot,
)
from bandits.fixed import FixedPolicy
from tailor_contract.policies import Apprentice

__all__ = ["ApprenticeEstimate", "ApprenticePolicy", "estimate_of", "take_over"]

NAME: Final = "apprentice"
_Z95: Final = 1.959963984540054


class _State(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    inner: bytes
    taken_over_by: Literal["", "auto", "admin"] = ""
    n: int = 0
    sum_own: float = 0.0
    sum_split: float = 0.0
    sum_d: float = 0.0
    sum_d2: float = 0.0


class ApprenticeEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """The apprentice's off-policy estimate against the split it serves.

    Attributes:
        n: decisions learned.
        own: IPS estimate of its own value (mean reward per decision).
        split: IPS estimate of the split's value.
        gain: own − split; ``gain_lower``/``gain_upper`` its 95% bounds (NaN below 2).
        serving: ``"split"`` while apprenticing, else ``"policy"``.
        taken_over_by: ``""``, ``"auto"`` or ``"admin"``.
    """

    n: int
    own: float
    split: float
    gain: float
    gain_lower: float
    gain_upper: float
    serving: Literal["split", "policy"]
    taken_over_by: str


class ApprenticePolicy:
    """Serves the split (plus exploration) while ``inner`` learns; then ``inner`` serves."""

    def __init__(
        self,
        inner: Policy,
        arms: Sequence[Arm],
        mode: Apprentice,
        *,
        state: _State | None = None,
        version: str = "0",
    ) -> None:
        self._inner = inner
        self._split = FixedPolicy(arms, version=version)
        self._mode = mode
        self._state = state or _State(inner=b"")
        self.version = version

    @property
    def name(self) -> str:
        """``apprentice:<inner>`` while apprenticing, the inner policy's name after."""
        return self._inner.name if self.taken_over else f"{NAME}:{self._inner.name}"

    @property
    def taken_over(self) -> bool:
        """Whether the inner policy serves its own choices."""
        return bool(self._state.taken_over_by)

    def _served(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        split = self._split.pmf(context, candidates)
        explore = self._mode.explore
        out: FloatArray = (1.0 - explore) * split + explore / len(candidates)
        return out

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """The inner policy's pmf after the takeover, else the explored split's."""
        if self.taken_over:
            return self._inner.pmf(context, candidates)
        return self._served(context, candidates)

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw from :meth:`pmf`, consuming one ``rng.random()``."""
        if self.taken_over:
            return self._inner.choose(context, candidates, rng)
        keys = check_candidates(candidates)
        sampler = Sampler(self._served(context, candidates))
        return sampler.choice(keys, rng.random(), self.name, self.version)

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Repeated :meth:`choose`."""
        return [self.choose(c, candidates, rng) for c in contexts]

    def learn(self, examples: Sequence[Example]) -> None:
        """Score ``examples`` with the inner model first (the estimate), then teach it; take
        over when ``takeover == "auto"`` and the gain's lower bound is above zero."""
        s = self._state
        n, own, split, sd, sd2 = s.n, s.sum_own, s.sum_split, s.sum_d, s.sum_d2
        for ex in examples:
            w = float(self._inner.pmf(ex.context, ex.candidates)[ex.chosen]) / ex.propensity
            b = float(self._split.pmf(ex.context, ex.candidates)[ex.chosen]) / ex.propensity
            d = (w - b) * ex.reward
            n, own, split, sd, sd2 = (
                n + 1,
                own + w * ex.reward,
                split + b * ex.reward,
                sd + d,
                sd2 + d * d,
            )
        self._inner.learn(examples)
        self._state = msgspec.structs.replace(
            s, n=n, sum_own=own, sum_split=split, sum_d=sd, sum_d2=sd2
        )
        if (
            not self.taken_over
            and self._mode.takeover == "auto"
            and n >= self._mode.min_decisions
            and self.estimate().gain_lower > 0.0
        ):
            self._state = msgspec.structs.replace(self._state, taken_over_by="auto")

    def estimate(self) -> ApprenticeEstimate:
        """The running off-policy estimate of the inner policy against the split."""
        return _estimate(self._state)

    def snapshot(self) -> bytes:
        """The inner model's snapshot inside the apprentice's state."""
        state = msgspec.structs.replace(self._state, inner=self._inner.snapshot())
        return msgspec.msgpack.encode(state)


def _estimate(s: _State) -> ApprenticeEstimate:
    nan = math.nan
    gain = s.sum_d / s.n if s.n else nan
    half = nan
    if s.n >= 2:
        var = max(0.0, (s.sum_d2 - s.n * gain * gain) / (s.n - 1))
        half = _Z95 * math.sqrt(var / s.n)
    return ApprenticeEstimate(
        n=s.n,
        own=s.sum_own / s.n if s.n else nan,
        split=s.sum_split / s.n if s.n else nan,
        gain=gain,
        gain_lower=gain - half,
        gain_upper=gain + half,
        serving="policy" if s.taken_over_by else "split",
        taken_over_by=s.taken_over_by,
    )


def estimate_of(snapshot: bytes) -> ApprenticeEstimate:
    """The estimate recorded in an apprentice snapshot, without rebuilding its model.

    Raises:
        SnapshotError: if it is not an apprentice snapshot.
    """
    return _estimate(decode_state(snapshot))


def decode_state(snapshot: bytes) -> _State:
    """The apprentice state of a snapshot, or SnapshotError."""
    return decode_snapshot(snapshot, _State, NAME)


def take_over(snapshot: bytes) -> bytes:
    """The snapshot with the takeover done by an admin (unchanged if already taken over).

    Raises:
        SnapshotError: if it is not an apprentice snapshot.
    """
    state = decode_state(snapshot)
    if state.taken_over_by:
        return snapshot
    return msgspec.msgpack.encode(msgspec.structs.replace(state, taken_over_by="admin"))


def inner_snapshot(snapshot: bytes) -> tuple[_State, bytes]:
    """The apprentice state and the inner model's snapshot within it."""
    state = decode_state(snapshot)
    if not state.inner:
        raise SnapshotError("apprentice snapshot without an inner model")
    return state, state.inner
