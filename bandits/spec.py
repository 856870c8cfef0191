"""What the learner and the serving side need to know of an experiment's policy.

Built by the API layer from an experiment definition, so ``bandits`` does not depend on the
experiment model: the policy config, the arms (variant keys and weights), the candidates with
their per-action features, and how rewards are scaled into the policy's range.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from bandits.base import Arm, Candidate, Example, FeatureValue
from bandits.join import DecisionRecord
from bandits.slates import SlateExample
from tailor_contract.policies import EpsilonGreedyConfig, FixedConfig, PolicyConfig, ThompsonConfig


class PolicySpec(msgspec.Struct, frozen=True, kw_only=True):
    """One learning experiment as the bandit machinery sees it."""

    experiment: str
    experiment_version: int
    config: PolicyConfig
    arms: tuple[Arm, ...]
    candidates: tuple[Candidate, ...]
    reward_lo: float = 0.0
    reward_hi: float = 1.0

    @property
    def bounded_rewards(self) -> bool:
        """Whether the policy needs rewards in [0, 1] (Beta-Bernoulli, mean-of-arm policies)."""
        return isinstance(self.config, ThompsonConfig | EpsilonGreedyConfig)

    def scale(self, reward: float) -> float:
        """Map a joined reward into the policy's range ([0, 1] for bounded policies)."""
        if not self.bounded_rewards:
            return reward
        span = self.reward_hi - self.reward_lo
        if span <= 0:
            return 0.0
        return min(1.0, max(0.0, (reward - self.reward_lo) / span))

    def example(self, record: DecisionRecord, reward: float) -> Example | None:
        """The training example for a finalised record, or None if its arms are gone.

        A decision among all the experiment's variants (the usual case) gets ``candidates``
        itself, the same tuple for every example: the policies recognise it by identity and
        reuse what they prepared for it (VW's parsed action examples).
        """
        candidates: tuple[Candidate, ...] = self.candidates
        if len(record.candidates) != len(candidates) or any(
            key != c.key for key, c in zip(record.candidates, candidates, strict=True)
        ):
            by_key = {c.key: c for c in self.candidates}
            found = []
            for key in record.candidates:
                candidate = by_key.get(key)
                if candidate is None:
                    return None  # a variant was removed since the decision
                found.append(candidate)
            candidates = tuple(found)
        return Example(
            context=record.context,
            candidates=candidates,
            chosen=record.chosen,
            propensity=max(record.propensity, 1e-9),
            reward=self.scale(reward),
        )

    def slate_example(self, record: DecisionRecord, rewards: list[float]) -> SlateExample | None:
        """The training slate of a finalised slate record (one reward per slot), or None if it
        cannot be rebuilt (a variant removed since, or rewards that do not fit the slots).

        Candidates passed in the request come with their features in the record; otherwise
        they are the experiment's variants, by key."""
        if len(rewards) != len(record.slate) or not record.slate:
            return None
        if record.features is not None:
            if len(record.features) != len(record.candidates):
                return None
            candidates = tuple(
                Candidate(key=k, features=f)
                for k, f in zip(record.candidates, record.features, strict=True)
            )
        else:
            by_key = {c.key: c for c in self.candidates}
            found = [by_key.get(key) for key in record.candidates]
            if None in found:
                return None  # a variant was removed since the decision
            candidates = tuple(c for c in found if c is not None)
        try:
            return SlateExample(
                context=record.context,
                candidates=candidates,
                chosen=tuple(record.slate),
                propensities=tuple(max(p, 1e-9) for p in record.slate_propensities),
                rewards=tuple(self.scale(r) for r in rewards),
            )
        except ValueError:  # an inconsistent record: nothing to learn from it
            return None


def candidate_features(
    payload: Mapping[str, object], features: Mapping[str, FeatureValue]
) -> dict[str, FeatureValue]:
    """Per-action features: the variant's explicit ``features``, else its scalar payload fields."""
    if features:
        return dict(features)
    out: dict[str, FeatureValue] = {}
    for name, value in payload.items():
        if isinstance(value, str | int | float | bool):
            out[name] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = [str(v) for v in value]
    return out


def is_learning(config: PolicyConfig) -> bool:
    """Whether the policy learns from rewards (everything but ``fixed``)."""
    return not isinstance(config, FixedConfig)
