"""Warm-start a learning policy from history already in the event log.

Reads the experiment's logged decisions (exposures with their propensities — native traffic or
``tailor import``-ed history) and the outcomes that followed within the reward window, applies
the experiment's reward rules, and teaches a model from them. The result is published as a new
model generation, so every worker and the learner continue from it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bandits.base import Example, Policy
from bandits.registry import build_policy
from decision_api.learning.runtime import join_rules_of, spec_of
from event_log import sql as event_sql
from event_log.rows import parse_context_value
from event_log.store import EventLog
from tailor_contract.definitions import Experiment

__all__ = ["history_examples", "parse_context_value", "warm_policy"]


def history_examples(
    event_log: EventLog, experiment: Experiment, limit: int = 500_000
) -> list[Example]:
    """Training examples from the experiment's logged decisions and outcomes."""
    spec = spec_of(experiment)
    rules = join_rules_of(experiment)
    exposures = event_log.query(
        event_sql.WARM_START_EXPOSURES, {"experiment": experiment.key, "limit": limit}
    )
    if not exposures:
        return []
    since = min(int(row[5]) for row in exposures)
    outcomes = event_log.query(
        event_sql.WARM_START_OUTCOMES,
        {"types": sorted(rules.rewards), "since_ms": since, "experiment": experiment.key},
    )
    by_decision: dict[str, list[tuple[int, float]]] = defaultdict(list)
    by_unit: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for decision_id, unit_id, typ, value, ts_ms in outcomes:
        reward = rules.reward_of(str(typ), float(value))
        if reward is None:
            continue
        if decision_id:
            by_decision[str(decision_id)].append((int(ts_ms), reward))
        elif unit_id:
            by_unit[str(unit_id)].append((int(ts_ms), reward))
    keys = [c.key for c in spec.candidates]
    examples = []
    for decision_id, unit_id, variant, propensity, context, ts_ms in reversed(exposures):
        if variant not in keys:
            continue
        start, end = int(ts_ms), int(ts_ms) + rules.window_ms
        hits = sorted(
            (t, r)
            for t, r in [*by_decision.get(str(decision_id), []), *by_unit.get(str(unit_id), [])]
            if start <= t <= end
        )
        if not hits:
            reward = rules.default
        elif rules.aggregation == "first":
            reward = hits[0][1]
        else:
            reward = sum(r for _, r in hits)
        reward = min(rules.hi, max(rules.lo, reward))
        features: dict[str, Any] = {k: parse_context_value(v) for k, v in dict(context).items()}
        examples.append(
            Example(
                context=features,
                candidates=spec.candidates,
                chosen=keys.index(str(variant)),
                propensity=min(1.0, max(float(propensity), 1e-9)),
                reward=spec.scale(reward),
            )
        )
    return examples


def warm_policy(experiment: Experiment, examples: list[Example]) -> Policy:
    """A fresh policy for the experiment taught the given examples, in chunks."""
    spec = spec_of(experiment)
    policy = build_policy(spec.config, spec.arms, version="warm")
    for i in range(0, len(examples), 5000):
        policy.learn(examples[i : i + 5000])
    return policy
