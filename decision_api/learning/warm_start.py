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
from bandits.slates import SlateExample, SlatePolicy
from decision_api.learning.runtime import join_rules_of, spec_of
from event_log import sql as event_sql
from event_log.rows import parse_context_value
from event_log.store import EventLog
from tailor_contract.definitions import Experiment

__all__ = [
    "history_examples",
    "history_slates",
    "parse_context_value",
    "warm_policy",
    "warm_slates_policy",
]


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


def history_slates(
    event_log: EventLog, experiment: Experiment, limit: int = 500_000
) -> list[SlateExample]:
    """Training slates from a ``vw_slates`` experiment's logged slot exposures and the outcomes
    naming their slot or item (by decision id) within the reward window, oldest first.

    Only slates over the experiment's own variants can be rebuilt (the features of items passed
    in a request are not logged), and only whole ones (slots 0..k-1 all read); ``limit`` counts
    slot rows. Each slot's reward follows the experiment's rules (``first``/``sum``, default,
    clipped), as the reward join computes it.
    """
    spec = spec_of(experiment)
    rules = join_rules_of(experiment)
    rows = event_log.query(
        event_sql.WARM_START_SLATES, {"experiment": experiment.key, "limit": limit}
    )
    if not rows:
        return []
    since = min(int(row[5]) for row in rows)
    outcomes = event_log.query(
        event_sql.WARM_START_SLOT_OUTCOMES,
        {"types": sorted(rules.rewards), "since_ms": since, "experiment": experiment.key},
    )
    hits: dict[str, list[tuple[int, str, int, float]]] = defaultdict(list)
    for decision_id, slot, item, typ, value, ts_ms in outcomes:
        reward = rules.reward_of(str(typ), float(value))
        if reward is not None:
            hits[str(decision_id)].append((int(slot), str(item), int(ts_ms), reward))
    index = {c.key: i for i, c in enumerate(spec.candidates)}
    slates: dict[str, list[tuple[int, str, float, dict[str, str], int]]] = defaultdict(list)
    for decision_id, slot, item, propensity, context, ts_ms in rows:
        slates[str(decision_id)].append(
            (int(slot), str(item), float(propensity), dict(context), int(ts_ms))
        )
    examples = []
    for decision_id, slots in reversed(list(slates.items())):  # oldest first
        slots.sort()
        if [s[0] for s in slots] != list(range(len(slots))):
            continue  # cut by the row limit
        if any(s[1] not in index for s in slots):
            continue  # items passed in a request: their features are not logged
        start = slots[0][4]
        rewards = []
        for slot, item, _, _, _ in slots:
            mine = sorted(
                (ts, r) for s, i, ts, r in hits.get(decision_id, ())
                if (s == slot or (i and i == item)) and start <= ts <= start + rules.window_ms
            )  # fmt: skip
            if not mine:
                reward = rules.default
            elif rules.aggregation == "first":
                reward = mine[0][1]
            else:
                reward = sum(r for _, r in mine)
            rewards.append(spec.scale(min(rules.hi, max(rules.lo, reward))))
        examples.append(
            SlateExample(
                context={k: parse_context_value(v) for k, v in slots[0][3].items()},
                candidates=spec.candidates,
                chosen=tuple(index[s[1]] for s in slots),
                propensities=tuple(min(1.0, max(s[2], 1e-9)) for s in slots),
                rewards=tuple(rewards),
            )
        )
    return examples


def warm_slates_policy(experiment: Experiment, examples: list[SlateExample]) -> Policy:
    """A fresh slates policy for the experiment taught the given slates, in chunks.

    Raises:
        ValueError: when the experiment's policy does not rank slates.
    """
    spec = spec_of(experiment)
    policy = build_policy(spec.config, spec.arms, version="warm")
    if not isinstance(policy, SlatePolicy):
        raise ValueError(f"policy {policy.name!r} does not rank slates")
    for i in range(0, len(examples), 5000):
        policy.learn_slates(examples[i : i + 5000])
    return policy
