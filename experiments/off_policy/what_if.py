"""Offline what-if: how would a candidate policy configuration have done on the logged decisions?

Before deploying a configuration (other VW options, another exploration floor, Thompson per
segment), replay its training over the experiment's logged decisions in time order and estimate
its value off-policy against the deployed (logging) policy's:

* **Progressive validation.** The logs are cut into consecutive batches of ``batch_size``
  decisions. For every decision of a batch the candidate's pmf over the candidates is computed
  from the model trained on the earlier batches only; then the model learns the batch (the
  logged action, its propensity and its reward, as the live learner would). With
  ``batch_size=1`` each decision is scored by the model of all earlier ones; larger batches
  are faster and closer to the live learner, which also learns in batches and late.
* **Estimates.** With π(a | x_i) the progressive pmf and p_i the logged propensity, the
  candidate's IPS, SNIPS and doubly robust values and intervals come from
  :func:`experiments.off_policy.estimators.evaluate_policy` (DR's reward model: shrunk mean
  reward per action, :func:`experiments.off_policy.reward_models.cell_mean_table`). The deployed
  policy is the logging policy itself (every weight 1: IPS = SNIPS = the mean logged reward).
  The difference candidate − deployed is a paired CLT interval on the per-row terms
  (w_i − 1) r_i, so both values' shared noise cancels.

The estimate is honest only where the logs support the candidate: the logging policy must have
given every action the candidate may take a non-negligible probability (Tailor's learning
policies keep a floor for that, ``min_propensity``); the result carries the estimator's support
warnings. Rewards are the experiment's raw rewards; a candidate whose model needs rewards in
[0, 1] (Thompson, epsilon-greedy) learns them scaled from ``reward_range``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import NDArray

from bandits.base import Arm, Example
from bandits.registry import build_policy
from bandits.spec import PolicySpec
from experiments.off_policy.estimators import OffPolicyEstimate, evaluate_policy
from experiments.off_policy.reward_models import cell_mean_table
from experiments.off_policy.target_policies import logged_policy
from experiments.statistics.intervals import Interval, check_level, z_critical
from tailor_contract.policies import PolicyConfig

__all__ = ["DEFAULT_BATCH_SIZE", "WhatIfResult", "progressive_pmfs", "what_if"]

DEFAULT_BATCH_SIZE = 100
"""Decisions scored by one model before it learns them (see the module docstring)."""


class WhatIfResult(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate configuration's estimated value next to the deployed policy's.

    Attributes:
        n: logged decisions replayed.
        policy: the candidate's kind (``vw_cb``, ``thompson``, ...).
        batch_size: decisions scored per model before it learned them.
        candidate: the candidate's IPS, SNIPS and DR estimates with intervals.
        deployed: the logging policy's estimates (IPS = SNIPS = mean logged reward).
        difference: candidate − deployed (IPS, paired interval).
        warnings: support warnings of the candidate's estimate, empty when none.
    """

    n: int
    policy: str
    batch_size: int
    candidate: OffPolicyEstimate
    deployed: OffPolicyEstimate
    difference: Interval
    warnings: tuple[str, ...]


def _n_actions(examples: Sequence[Example]) -> int:
    sizes = {len(ex.candidates) for ex in examples}
    if len(sizes) != 1:
        raise ValueError(f"every example must have the same candidates, got sizes {sorted(sizes)}")
    return sizes.pop()


def progressive_pmfs(
    config: PolicyConfig,
    arms: Sequence[Arm],
    examples: Sequence[Example],
    *,
    reward_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> NDArray[np.float64]:
    """The candidate's pmf on every logged decision, shape ``(n, n_actions)``.

    Row i comes from a fresh ``build_policy(config, arms)`` that has learned the batches before
    row i's batch only (progressive validation). ``examples`` must be in time order and carry
    raw rewards; bounded policies learn them scaled from ``reward_range``.

    Raises:
        ValueError: if the config does not fit the arms, ``batch_size < 1`` or the examples
            have differing candidate counts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size == {batch_size}, must be >= 1")
    n_actions = _n_actions(examples)
    spec = PolicySpec(
        experiment="what-if",
        experiment_version=0,
        config=config,
        arms=tuple(arms),
        candidates=examples[0].candidates,
        reward_lo=reward_range[0],
        reward_hi=reward_range[1],
    )
    policy = build_policy(config, arms, version="what-if")
    out = np.empty((len(examples), n_actions), dtype=np.float64)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        for j, ex in enumerate(batch):
            out[start + j] = policy.pmf(ex.context, ex.candidates)
        if spec.bounded_rewards:
            batch = [msgspec.structs.replace(ex, reward=spec.scale(ex.reward)) for ex in batch]
        policy.learn(batch)
    return out


def _difference(
    rewards: NDArray[np.float64], weights: NDArray[np.float64], level: float
) -> Interval:
    terms = (weights - 1.0) * rewards
    estimate = float(terms.mean())
    se = float(np.std(terms, ddof=1)) / math.sqrt(terms.size)
    crit = z_critical(level)
    return Interval(
        estimate=estimate, lower=estimate - crit * se, upper=estimate + crit * se, level=level
    )


def what_if(
    config: PolicyConfig,
    arms: Sequence[Arm],
    examples: Sequence[Example],
    *,
    reward_range: tuple[float, float] = (0.0, 1.0),
    level: float = 0.95,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> WhatIfResult:
    """Replay ``config`` over the logged ``examples`` (time order, raw rewards) and estimate its
    value and the deployed policy's, with intervals at ``level`` clipped to ``reward_range``.

    Raises:
        ValueError: with fewer than two examples, a config that does not fit the arms, or a
            bad ``level`` / ``batch_size``.
    """
    check_level(level)
    if len(examples) < 2:
        raise ValueError(f"{len(examples)} logged decisions, need at least 2")
    target = progressive_pmfs(
        config, arms, examples, reward_range=reward_range, batch_size=batch_size
    )
    n, n_actions = target.shape
    rewards = np.array([ex.reward for ex in examples], dtype=np.float64)
    actions = np.array([ex.chosen for ex in examples], dtype=np.intp)
    propensities = np.array([ex.propensity for ex in examples], dtype=np.float64)
    model = np.broadcast_to(cell_mean_table(rewards, actions, n_actions)[0], (n, n_actions))
    candidate = evaluate_policy(
        rewards,
        propensities,
        actions,
        target,
        reward_model=model,
        level=level,
        reward_range=reward_range,
    )
    deployed = evaluate_policy(
        rewards,
        propensities,
        actions,
        logged_policy(actions, propensities, n_actions),
        reward_model=model,
        level=level,
        reward_range=reward_range,
    )
    weights = target[np.arange(n), actions] / propensities
    return WhatIfResult(
        n=n,
        policy=str(config.__struct_config__.tag),
        batch_size=batch_size,
        candidate=candidate,
        deployed=deployed,
        difference=_difference(rewards, weights, level),
        warnings=candidate.warnings,
    )
