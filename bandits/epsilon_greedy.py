"""Non-contextual epsilon-greedy over the mean reward of each arm.

With ``n`` candidates and ``G`` the set of greedy ones (highest mean reward), the pmf is
``epsilon / n + (1 - epsilon) / |G|`` for members of ``G`` and ``epsilon / n`` otherwise. Ties
share the greedy mass instead of being broken at random, so the propensity stays exact. Arms
without data join ``G`` only while no candidate has data: a new variant is explored through
``epsilon`` rather than flooded with traffic until the learner's next snapshot arrives.
Rewards may be any finite number (revenue as well as conversions). The pmf is then mixed with
uniform up to the config's ``min_propensity`` floor (``bandits.base.floor_pmf``); with the
default floor and ``epsilon >= 0.1`` it already is above it and stays unchanged.
"""

from __future__ import annotations

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
    Sampler,
    SamplerCache,
    check_candidates,
    decode_snapshot,
    floor_pmf,
)
from tailor_contract.policies import EpsilonGreedyConfig

__all__ = ["EpsilonGreedyPolicy"]

NAME: Final = "epsilon_greedy"


class _EpsilonGreedyState(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    """Per-arm (reward sum, count)."""

    arms: dict[str, tuple[float, int]]
    format: Literal[1] = 1


class EpsilonGreedyPolicy:
    """Epsilon-greedy with exact propensities; the context is ignored."""

    def __init__(
        self,
        config: EpsilonGreedyConfig,
        arms: Sequence[Arm],
        *,
        version: str = "0",
        state: _EpsilonGreedyState | None = None,
    ) -> None:
        """Build the policy for the experiment's arms (keys must be unique and non-empty).

        Raises:
            ValueError: if ``min_propensity * len(arms) > 1``.
        """
        self._keys = check_candidates([Candidate(key=a.key) for a in arms])
        config.check_arms(len(self._keys))
        self.name: str = NAME
        self.version: str = version
        self._epsilon = config.epsilon
        self._config = config
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        if state is not None:
            for key, (total, count) in state.arms.items():
                self._sums[key] = total
                self._counts[key] = count
        self._cache = SamplerCache()
        self._sampler(self._keys)

    def _probabilities(self, keys: tuple[str, ...]) -> FloatArray:
        """The epsilon-greedy pmf over ``keys``, shape ``(n,)``."""
        n = len(keys)
        means = np.array(
            [self._sums[k] / self._counts[k] if self._counts.get(k) else np.nan for k in keys]
        )
        seen = ~np.isnan(means)
        greedy = (means == np.nanmax(means)) if seen.any() else np.ones(n, dtype=bool)
        probs = self._epsilon / n + (1.0 - self._epsilon) * greedy / greedy.sum()
        floored: FloatArray = np.asarray(floor_pmf(probs.tolist(), self._config.floor(n)))
        return floored

    def _sampler(self, keys: tuple[str, ...]) -> Sampler:
        sampler = self._cache.get(keys)
        if sampler is None:
            sampler = self._cache.put(keys, Sampler(self._probabilities(keys)))
        return sampler

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Return the epsilon-greedy probabilities of ``candidates``, shape ``(n,)``."""
        return self._sampler(check_candidates(candidates)).pmf

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw a candidate from the epsilon-greedy pmf."""
        keys = check_candidates(candidates)
        return self._sampler(keys).choice(keys, rng.random(), self.name, self.version)

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Draw one candidate per context in one vectorised pass; equals repeated ``choose``."""
        keys = check_candidates(candidates)
        u = rng.random(len(contexts))
        return self._sampler(keys).choices(keys, u, self.name, self.version)

    def learn(self, examples: Sequence[Example]) -> None:
        """Add each reward to its arm's running sum and count."""
        for ex in examples:
            key = ex.chosen_key
            self._sums[key] = self._sums.get(key, 0.0) + ex.reward
            self._counts[key] = self._counts.get(key, 0) + 1
        if examples:
            self._cache.clear()

    def mean(self, key: str) -> float | None:
        """Return arm ``key``'s mean reward, or None before its first reward."""
        count = self._counts.get(key, 0)
        return self._sums[key] / count if count else None

    def snapshot(self) -> bytes:
        """Serialize the per-arm reward sums and counts."""
        arms = {k: (self._sums[k], self._counts[k]) for k in self._counts}
        return msgspec.msgpack.encode(_EpsilonGreedyState(arms=arms))

    @classmethod
    def restore(
        cls, config: EpsilonGreedyConfig, arms: Sequence[Arm], snapshot: bytes, *, version: str
    ) -> EpsilonGreedyPolicy:
        """Rebuild from a snapshot; arms new since the snapshot start without data."""
        state = decode_snapshot(snapshot, _EpsilonGreedyState, NAME)
        return cls(config, arms, version=version, state=state)
