"""Ranked slates: what a slate policy decides, what it learns from, and its protocol.

A slate is an ordered list of ``k`` distinct candidates (a carousel, a product list, the
content blocks of an email). A slate policy fills the slots in order: slot ``j`` draws one of
the candidates the earlier slots left, and its logged ``propensity`` is the probability of that
draw *given the earlier slots*. The probability of the whole slate is the product of its slots'
propensities; an off-policy estimate for slot ``j`` weighs its reward by the target policy's
conditional probability of the same item over that propensity.

Each slot earns its own reward (a click on the item shown there), so a training example carries
one reward per slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Protocol, runtime_checkable

import msgspec
import numpy as np

from bandits.base import Candidate, Context, FeatureValue, Policy

__all__ = ["Slate", "SlateExample", "SlatePolicy", "SlotChoice"]


class SlotChoice(msgspec.Struct, frozen=True, kw_only=True):
    """The item one slot shows: its index into the candidates, its key, and the probability
    with which the slot drew it given the items of the earlier slots."""

    index: int
    key: str
    propensity: float


class Slate(msgspec.Struct, frozen=True, kw_only=True):
    """A ranked decision: ``slots[0]`` is the first position."""

    slots: tuple[SlotChoice, ...]
    policy: str
    model_version: str

    @property
    def keys(self) -> list[str]:
        """The items in slot order."""
        return [s.key for s in self.slots]

    @property
    def propensity(self) -> float:
        """The probability of the whole ordered slate (the product of its slots')."""
        return math.prod(s.propensity for s in self.slots)


class SlateExample(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One joined slate: the logged decision and the reward each slot earned.

    ``chosen[j]`` indexes ``candidates`` (distinct), ``propensities[j]`` is slot ``j``'s logged
    conditional probability and ``rewards[j]`` its reward; all three have one entry per slot.
    """

    context: Mapping[str, FeatureValue]
    candidates: tuple[Candidate, ...]
    chosen: tuple[int, ...]
    propensities: tuple[Annotated[float, msgspec.Meta(gt=0.0, le=1.0)], ...]
    rewards: tuple[float, ...]

    def __post_init__(self) -> None:
        k = len(self.chosen)
        if k == 0:
            raise ValueError("chosen: a slate has at least one slot")
        if len(self.propensities) != k or len(self.rewards) != k:
            raise ValueError(
                f"propensities and rewards need one entry per slot ({k}), got "
                f"{len(self.propensities)} and {len(self.rewards)}"
            )
        if len(set(self.chosen)) != k:
            raise ValueError(f"chosen == {list(self.chosen)}, the slots' items must be distinct")
        for i in self.chosen:
            if not 0 <= i < len(self.candidates):
                raise ValueError(
                    f"chosen == {list(self.chosen)}, each must be in "
                    f"[0, {len(self.candidates)}) (an index into candidates)"
                )
        for p in self.propensities:
            if not 0.0 < p <= 1.0:
                raise ValueError(f"propensity == {p}, must be in (0, 1]")
        for r in self.rewards:
            if not math.isfinite(r):
                raise ValueError(f"reward == {r}, must be finite")


@runtime_checkable
class SlatePolicy(Policy, Protocol):
    """A policy that ranks: a :class:`~bandits.base.Policy` (whose one choice is a slate of
    one slot) that can also fill ``k`` slots and learn from every slot's reward."""

    def choose_slate(
        self,
        context: Context,
        candidates: Sequence[Candidate],
        slots: int,
        rng: np.random.Generator,
    ) -> Slate:
        """Fill ``min(slots, len(candidates))`` slots in order, each with its propensity;
        consumes one ``rng.random()`` per slot."""
        ...

    def slot_pmfs(
        self, context: Context, candidates: Sequence[Candidate], chosen: Sequence[int]
    ) -> list[list[float]]:
        """For each slot ``j`` of a logged slate (``chosen``), the pmf over ``candidates`` that
        ``choose_slate`` would draw slot ``j`` from after the logged items of slots ``< j``
        (those get probability 0)."""
        ...

    def learn_slates(self, examples: Sequence[SlateExample]) -> None:
        """Update the model in place from joined slates."""
        ...
