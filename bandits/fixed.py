"""Fixed split (A/B/n): each candidate drawn in proportion to its variant's weight.

The pmf over the offered candidates is ``w_i / sum(w)``, where ``w`` are the experiment's
variant weights; a candidate that is not a variant of the experiment gets weight 0. When some
variants are withheld (a frequency cap, a guard-rail), the rest share the traffic in
proportion, and the logged propensity is that renormalised share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal

import msgspec
import numpy as np

from bandits.base import (
    Arm,
    Candidate,
    CandidateError,
    Choice,
    Context,
    Example,
    FloatArray,
    Sampler,
    SamplerCache,
    check_candidates,
    decode_snapshot,
)

__all__ = ["FixedPolicy"]

NAME: Final = "fixed"


class _FixedState(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    """A fixed split learns nothing; its snapshot only records what it is."""

    format: Literal[1] = 1


class FixedPolicy:
    """Weighted random split over the experiment's variants; ``learn`` is a no-op."""

    def __init__(self, arms: Sequence[Arm], *, version: str = "0") -> None:
        """Build the split from the variants' weights.

        Raises:
            ValueError: if there are no arms, duplicate keys, or every weight is zero.
        """
        keys = check_candidates([Candidate(key=a.key) for a in arms])
        self._weights: Mapping[str, float] = {a.key: a.weight for a in arms}
        if sum(self._weights.values()) <= 0:
            raise ValueError("at least one variant weight must be > 0")
        self.name: str = NAME
        self.version: str = version
        self._cache = SamplerCache()
        self._cache.put(keys, Sampler([self._weights[k] for k in keys]))

    def _sampler(self, candidates: Sequence[Candidate]) -> tuple[tuple[str, ...], Sampler]:
        keys = check_candidates(candidates)
        sampler = self._cache.get(keys)
        if sampler is None:
            weights = [self._weights.get(k, 0.0) for k in keys]
            if not any(weights):
                raise CandidateError(f"no candidate among {list(keys)} has a positive weight")
            sampler = self._cache.put(keys, Sampler(weights))
        return keys, sampler

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Return the weight shares of ``candidates``, shape ``(len(candidates),)``."""
        return self._sampler(candidates)[1].pmf

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw a candidate by weight share; the context is ignored."""
        keys, sampler = self._sampler(candidates)
        return sampler.choice(keys, rng.random(), self.name, self.version)

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Draw one candidate per context in one vectorised pass; equals repeated ``choose``."""
        keys, sampler = self._sampler(candidates)
        return sampler.choices(keys, rng.random(len(contexts)), self.name, self.version)

    def learn(self, examples: Sequence[Example]) -> None:
        """Do nothing: a fixed split does not adapt."""

    def snapshot(self) -> bytes:
        """Return a marker snapshot (there is no learned state)."""
        return msgspec.msgpack.encode(_FixedState())

    @classmethod
    def restore(cls, arms: Sequence[Arm], snapshot: bytes, *, version: str) -> FixedPolicy:
        """Rebuild from a snapshot, checking it is a fixed-split one."""
        decode_snapshot(snapshot, _FixedState, NAME)
        return cls(arms, version=version)
