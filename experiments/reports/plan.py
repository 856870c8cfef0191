"""Power that matches the verdict: horizons and "about N more units" for the always-valid test.

The verdict calls a comparison significant with the always-valid test after the multiple-testing
correction, so every plan here is made for that test (`experiments.statistics.power`
``sequential_*``) at α / m, m the number of comparisons in the family (Holm's first step):

* `default_horizon_units`: the planned horizon N* when the caller gives none — the total units at
  which the always-valid test has 80% power to detect a 10% relative lift on a 5% conversion rate.
  (The fixed test's sample size, used before, left the verdict's test 41% power at its horizon
  read once, about 52% read daily.)
* `power_plan`: the report's ``plan`` section — for the primary metric, the units per arm the test
  needs for the requested relative effect (``mde``) at the requested power, against the control's
  observed rate, and how many more units that is.
* `more_units_phrase`: the same for an observed lift, for verdict sentences that lean one way
  without being significant yet ("about 4,200 more units to confirm a lift this size").

Rates are planned from Agresti–Caffo smoothed counts ((c + 1)/(n + 2)), so a control that has not
converted yet still gives a plan.
"""

from __future__ import annotations

import math

from experiments.reports.results import ArmMetric, MetricReport, PowerPlan
from experiments.statistics.power import (
    sequential_horizon_units,
    sequential_proportion_power,
    sequential_units_needed,
)
from tailor_contract.definitions import Experiment

__all__ = [
    "DEFAULT_BASELINE_RATE",
    "DEFAULT_RELATIVE_MDE",
    "default_horizon_units",
    "more_units_phrase",
    "planned_comparisons",
    "power_plan",
]

DEFAULT_BASELINE_RATE = 0.05
DEFAULT_RELATIVE_MDE = 0.10
_MAX_RATE = 1.0 - 1e-9


def planned_comparisons(experiment: Experiment) -> int:
    """Conversion-rate comparisons a report of this experiment makes: each non-control variant
    on the primary metric and on every guard-rail."""
    return max(len(experiment.variants) - 1, 1) * (1 + len(experiment.guardrail_metrics))


def default_horizon_units(n_arms: int, comparisons: int = 1, level: float = 0.95) -> int:
    """Planned total units for the always-valid tests, from a power calculation fixed in advance.

    All ``n_arms`` (at least 2) at which the always-valid test, at α = (1 - level) / comparisons,
    has 80% power to detect a 10% relative lift on a 5% conversion rate — never tuned on the data.
    """
    return sequential_horizon_units(
        DEFAULT_BASELINE_RATE,
        DEFAULT_BASELINE_RATE * (1 + DEFAULT_RELATIVE_MDE),
        arms=max(n_arms, 2),
        alpha=(1.0 - level) / max(comparisons, 1),
    )


def _smoothed(arm: ArmMetric) -> float:
    return (arm.converters + 1.0) / (arm.units + 2.0)


def _needed(
    p_c: float, p_t: float, *, horizon: int, alpha: float, power: float
) -> tuple[int, float]:
    """Units per arm needed, and the power function's argument check, for p_c vs p_t."""
    p_t = min(max(p_t, 1e-9), _MAX_RATE)
    needed = sequential_units_needed(p_c, p_t, horizon_units=horizon, alpha=alpha, power=power)
    return needed, p_t


def more_units_phrase(
    control: ArmMetric,
    treatment: ArmMetric,
    *,
    horizon_units: int,
    alpha: float,
    power: float = 0.8,
) -> str:
    """ "about 4,200 more units to confirm a difference this size at 80% power" for the observed
    (smoothed) rates of two arms, or "the test has 80% power for a difference this size now"."""
    p_c, p_t = _smoothed(control), _smoothed(treatment)
    if p_c == p_t:
        return "no difference to plan for"
    needed, _ = _needed(p_c, p_t, horizon=horizon_units, alpha=alpha, power=power)
    have = min(control.units, treatment.units)
    if needed <= have:
        return (
            f"the always-valid test already has {power:.0%} power for a difference this size; "
            "keep reading"
        )
    return (
        f"about {2 * (needed - have):,} more units to confirm a difference this size at "
        f"{power:.0%} power"
    )


def power_plan(
    primary: MetricReport,
    control_arm: str,
    variants: list[str],
    *,
    horizon_units: int,
    comparisons: int,
    level: float,
    mde: float,
    power: float,
) -> PowerPlan | None:
    """The report's plan: units the verdict's test needs to detect ``mde`` (relative) on the
    primary metric's rate at ``power``, with ``variants`` the non-control variants; the planning
    default 5% baseline while control has no units. None without a variant to compare."""
    arms = {a.arm: a for a in primary.arms}
    control = arms.get(control_arm)
    if not variants:
        return None
    baseline = (
        _smoothed(control) if control is not None and control.units > 0 else DEFAULT_BASELINE_RATE
    )
    target = baseline * (1.0 + mde)
    if target >= 1.0:
        target = baseline * (1.0 - mde) if mde < 1.0 else baseline / 2.0
    alpha = (1.0 - level) / max(comparisons, 1)
    needed, target = _needed(baseline, target, horizon=horizon_units, alpha=alpha, power=power)
    have = min(arms[a].units if a in arms else 0 for a in [control_arm, *variants])
    more = max(needed - have, 0) * (len(variants) + 1)
    power_now = (
        sequential_proportion_power(
            baseline, target, have, horizon_units=horizon_units, alpha=alpha
        )
        if have >= 1
        else 0.0
    )
    effect = target - baseline
    what = (
        f"{effect * 100:+.2f} pp ({effect / baseline:+.0%} relative) on {primary.metric}, "
        f"from {baseline:.2%}"
    )
    if more == 0:
        sentence = f"Enough units to detect {what} at {power:.0%} power with the always-valid test."
    else:
        sentence = (
            f"About {more:,} more units to detect {what} at {power:.0%} power "
            f"with the always-valid test ({needed:,} per arm)."
        )
    return PowerPlan(
        metric=primary.metric,
        baseline_rate=baseline,
        effect=effect,
        relative_effect=effect / baseline,
        power=power,
        alpha=alpha,
        comparisons=comparisons,
        horizon_units=horizon_units,
        units_per_arm_needed=needed,
        units_per_arm=have,
        more_units=more,
        power_now=power_now if math.isfinite(power_now) else 0.0,
        sentence=sentence,
    )
