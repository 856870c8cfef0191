"""The report's off-policy section: what would each policy have earned on this traffic?

From the logged decisions (non-holdout ``split``/``policy`` exposures with their propensities)
and the rewards the experiment's rules give them, it estimates the value — mean reward per
decision — of the deployed policy, the uniform policy and every "always variant X" policy, with
IPS, SNIPS and doubly robust estimates (the reward model: shrunk cell means over the report's
segment and the variant), their intervals, the effective sample size and the estimators' support
warnings. Intervals are clipped to the reward's range ``[min_reward, max_reward]``. See
:mod:`experiments.reports.cells` for the arithmetic.
"""

from __future__ import annotations

import numpy as np

from experiments.reports.arms import policy_kind
from experiments.reports.cells import (
    evaluate_constant_target,
    evaluate_logging_policy,
    reward_table,
)
from experiments.reports.data import ReportData
from experiments.reports.results import OffPolicySection, PolicyValue
from tailor_contract.definitions import Experiment

__all__ = ["describe_reward", "off_policy"]


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} s"


def describe_reward(experiment: Experiment) -> str:
    """The reward rules in one line, e.g. "first of purchase → 1 within 1 day; otherwise 0"."""
    spec = experiment.reward
    rules = ", ".join(
        f"{r.type} → {r.reward:g}{' × value' if r.per_value else ''}"
        for r in experiment.reward_rules
    )
    how = "first of" if spec.aggregation == "first" else "sum of"
    return (
        f"{how} {rules} within {_duration(experiment.reward_window_s)} of the decision, "
        f"clipped to [{spec.min_reward:g}, {spec.max_reward:g}]; otherwise {spec.default:g}"
    )


def off_policy(
    data: ReportData, experiment: Experiment, *, segment: str, level: float
) -> OffPolicySection | None:
    """Estimates for the deployed, uniform and each always-one-variant policy.

    None when fewer than two logged decisions are left.
    """
    cells = data.ope_cells
    used = sum(c.n for c in cells)
    if used < 2:
        return None
    n_actions = len(experiment.variants)
    model = reward_table(cells, n_actions)
    bounds = (experiment.reward.min_reward, experiment.reward.max_reward)
    policies = [
        PolicyValue(
            policy="deployed",
            description=f"the logged decisions' own policy ({policy_kind(experiment)})",
            estimate=evaluate_logging_policy(
                cells, n_actions, reward_model=model, level=level, reward_range=bounds
            ),
        ),
        PolicyValue(
            policy="uniform",
            description="every variant with equal probability",
            estimate=evaluate_constant_target(
                cells,
                np.full(n_actions, 1.0 / n_actions),
                reward_model=model,
                level=level,
                reward_range=bounds,
            ),
        ),
    ]
    for i, variant in enumerate(experiment.variants):
        policies.append(
            PolicyValue(
                policy=f"always:{variant.key}",
                description=f"always {variant.key}",
                estimate=evaluate_constant_target(
                    cells,
                    np.eye(n_actions)[i],
                    reward_model=model,
                    level=level,
                    reward_range=bounds,
                ),
            )
        )
    warnings = []
    if data.ope_fraction < 1.0:
        warnings.append(
            f"estimated on a {data.ope_fraction:.1%} sample of units ({used} of "
            f"{data.logged_decisions} decisions); the intervals account for it"
        )
    if data.ope_unknown_variants:
        warnings.append(
            f"{data.ope_unknown_variants} logged decisions of variants no longer configured "
            "were left out"
        )
    return OffPolicySection(
        logged_decisions=data.logged_decisions,
        decisions_used=used,
        sampled_fraction=data.ope_fraction,
        reward=describe_reward(experiment),
        segment=segment,
        policies=policies,
        warnings=warnings,
    )
