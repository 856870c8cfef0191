"""Any target policy, evaluated off-policy on an experiment's logged decisions.

A target is named by a small JSON document (:data:`TargetSpec`, tagged by ``kind``):

* ``{"kind": "uniform"}`` — every variant with equal probability;
* ``{"kind": "always", "variant": "b"}`` — always one variant;
* ``{"kind": "rules", "rules": [{"when": <Condition>, "variant": "b"}, ...], "otherwise": "a"}``
  — a context-dependent rule table: the first rule whose ``when`` (a targeting condition, the
  same language and semantics as an experiment's ``targeting``) matches the logged context
  decides; ``variant`` (and ``otherwise``) is a variant key or a probability table
  ``{"a": 0.2, "b": 0.8}`` over variant keys (missing keys get 0; values must sum to 1);
* ``{"kind": "current"}`` / ``{"kind": "current_greedy"}`` — the experiment's current model
  (the published snapshot): its pmf on every logged context, or a one-hot on that pmf's
  highest entry;
* ``{"kind": "saved", "version": 12, "greedy": false}`` — a saved version of the model (saved
  by an admin, or automatically when a reset, warm start or takeover replaced it; the last 20
  per experiment are kept, :mod:`bandits.snapshots`), its pmf or its greedy choice.

:func:`target_matrix` turns a target into the probabilities π(a | x_i) for every logged row,
plus a *cell* per row (the rule that matched, or the model's preferred variant) that the doubly
robust reward model is fitted on: shrunk mean reward per cell × logged variant
(:func:`experiments.off_policy.reward_models.cell_mean_rewards`). :func:`evaluate_target` then
calls :func:`experiments.off_policy.estimators.evaluate_policy`, whose importance weights and DR
correction use the *logged* propensities p_i exactly (no approximation of the logger), clips
every interval to the reward's range and warns about support only where weights are large or
the effective sample size is small. It also returns the deployed policy's value (the mean
logged reward) and the paired difference target − deployed, Σ(w_i − 1) r_i / n with its CLT
interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from bandits.base import Example, Policy
from experiments.off_policy.estimators import OffPolicyEstimate, evaluate_policy
from experiments.off_policy.reward_models import cell_mean_rewards
from experiments.statistics.intervals import Interval, check_level, z_critical
from tailor_contract.definitions import MAX_RULES, Condition
from tailor_contract.targeting import matches

__all__ = [
    "AlwaysTarget",
    "CurrentGreedyTarget",
    "CurrentTarget",
    "OffPolicyResult",
    "RuleRow",
    "RulesTarget",
    "SavedTarget",
    "TargetSpec",
    "UniformTarget",
    "check_target",
    "evaluate_target",
    "needs_model",
    "rule_cells",
    "target_matrix",
]

_SUM_TOLERANCE = 1e-6

Choice = str | dict[str, Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]]
"""A variant key, or a probability table over variant keys."""


class _Target(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    pass


class UniformTarget(_Target, frozen=True, tag="uniform"):
    """Every variant with equal probability."""


class AlwaysTarget(_Target, frozen=True, tag="always"):
    """Always ``variant``."""

    variant: str


class RuleRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One row of a rule table: when ``when`` matches the context, choose ``variant`` (a key or
    a probability table over keys)."""

    when: Condition
    variant: Choice


class RulesTarget(_Target, frozen=True, tag="rules"):
    """A context-dependent rule table; the first matching row decides, else ``otherwise``."""

    rules: Annotated[list[RuleRow], msgspec.Meta(max_length=MAX_RULES)]
    otherwise: Choice


class CurrentTarget(_Target, frozen=True, tag="current"):
    """The experiment's current (published) model, as it would choose: its pmf."""


class CurrentGreedyTarget(_Target, frozen=True, tag="current_greedy"):
    """The experiment's current model without exploration: its pmf's highest entry."""


class SavedTarget(_Target, frozen=True, tag="saved"):
    """A saved version of the experiment's model (``POST .../model/save``, or the model a
    reset, warm start or takeover replaced): its pmf, or with ``greedy`` its highest entry."""

    version: Annotated[int, msgspec.Meta(ge=1)]
    greedy: bool = False


TargetSpec = (
    UniformTarget | AlwaysTarget | RulesTarget | CurrentTarget | CurrentGreedyTarget | SavedTarget
)


def needs_model(target: TargetSpec) -> bool:
    """Whether the target is built from one of the experiment's models (current or saved)."""
    return isinstance(target, CurrentTarget | CurrentGreedyTarget | SavedTarget)


class OffPolicyResult(msgspec.Struct, frozen=True, kw_only=True):
    """A target policy's estimated value on the logged decisions, next to the deployed one's.

    Attributes:
        n: logged decisions used.
        target: the target's kind (``rules``, ``always``, ``current_greedy``, ...).
        description: the target in words.
        estimate: IPS, SNIPS, DM and DR of the target, intervals clipped to the reward range.
        deployed: the logged mean reward (the deployed policy's value; every weight 1).
        difference: target − deployed, paired IPS interval.
        cells: logged decisions per cell of the DR reward model (rule matched, or the model's
            preferred variant).
        warnings: the estimate's support warnings, empty when none.
    """

    n: int
    target: str
    description: str
    estimate: OffPolicyEstimate
    deployed: Interval
    difference: Interval
    cells: dict[str, int]
    warnings: tuple[str, ...]


def _distribution(choice: Choice, keys: Sequence[str], field: str) -> NDArray[np.float64]:
    """The choice as a probability vector over ``keys``.

    Raises:
        ValueError: ``"<field>: ..."`` for an unknown key or a table not summing to 1.
    """
    out = np.zeros(len(keys))
    table: Mapping[str, float] = {choice: 1.0} if isinstance(choice, str) else choice
    for key, prob in table.items():
        if key not in keys:
            raise ValueError(f"{field}: unknown variant {key!r}; variants are {list(keys)}")
        out[list(keys).index(key)] = prob
    if not math.isclose(float(out.sum()), 1.0, abs_tol=_SUM_TOLERANCE):
        raise ValueError(f"{field}: probabilities sum to {out.sum():.6g}, must sum to 1")
    return out


def rule_cells(target: RulesTarget, contexts: Sequence[Mapping[str, Any]]) -> NDArray[np.intp]:
    """Index of the first matching rule per context, ``len(target.rules)`` for ``otherwise``."""
    fallback = len(target.rules)
    return np.array(
        [
            next((i for i, rule in enumerate(target.rules) if matches(rule.when, ctx)), fallback)
            for ctx in contexts
        ],
        dtype=np.intp,
    )


def _model_matrix(
    policy: Policy, examples: Sequence[Example], greedy: bool
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    pmf = np.array([policy.pmf(ex.context, ex.candidates) for ex in examples], dtype=np.float64)
    pmf = pmf / pmf.sum(axis=1, keepdims=True)
    best = np.argmax(pmf, axis=1).astype(np.intp)
    if greedy:
        pmf = np.zeros_like(pmf)
        pmf[np.arange(best.size), best] = 1.0
    return pmf, best


def target_matrix(
    target: TargetSpec,
    keys: Sequence[str],
    examples: Sequence[Example],
    *,
    policy: Policy | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.intp], list[str]]:
    """π(a | x_i) for every logged example, shape ``(n, len(keys))``, the DR cell of each row
    and the cells' names.

    ``policy`` is the current model, needed for ``current`` / ``current_greedy``.

    Raises:
        ValueError: ``"<field>: ..."`` (a JSON path below the target) for an unknown variant,
            a table not summing to 1, or a model target without ``policy``.
    """
    n, k = len(examples), len(keys)
    zeros = np.zeros(n, dtype=np.intp)
    match target:
        case UniformTarget():
            return np.full((n, k), 1.0 / k), zeros, ["all"]
        case AlwaysTarget(variant=variant):
            row = _distribution(variant, keys, "$.target.variant")
            return np.repeat(row[None, :], n, axis=0), zeros, ["all"]
        case RulesTarget():
            rows = [
                _distribution(rule.variant, keys, f"$.target.rules[{i}].variant")
                for i, rule in enumerate(target.rules)
            ]
            rows.append(_distribution(target.otherwise, keys, "$.target.otherwise"))
            cells = rule_cells(target, [ex.context for ex in examples])
            names = [f"rule {i}" for i in range(len(target.rules))] + ["otherwise"]
            return np.asarray(np.stack(rows)[cells], dtype=np.float64), cells, names
        case _:
            if policy is None:
                raise ValueError("$.target.kind: the experiment has no model to evaluate")
            greedy = isinstance(target, CurrentGreedyTarget) or (
                isinstance(target, SavedTarget) and target.greedy
            )
            pi, best = _model_matrix(policy, examples, greedy)
            return pi, best, [f"prefers {key}" for key in keys]


def check_target(target: TargetSpec, keys: Sequence[str]) -> None:
    """Check a target against the experiment's variant keys before reading any logs.

    Raises:
        ValueError: as :func:`target_matrix` (model targets are checked when evaluated).
    """
    if not needs_model(target):
        target_matrix(target, keys, [])


def describe_target(target: TargetSpec) -> str:
    """The target in a few words."""
    match target:
        case UniformTarget():
            return "every variant with equal probability"
        case AlwaysTarget(variant=variant):
            return f"always {variant}"
        case RulesTarget():
            return f"a rule table of {len(target.rules)} rules and a default"
        case CurrentTarget():
            return "the current model, as it chooses (with exploration)"
        case SavedTarget(version=version, greedy=greedy):
            how = "greedy (its most probable variant)" if greedy else "as it chose"
            return f"saved model version {version}, {how}"
        case _:
            return "the current model, greedy (its most probable variant)"


def _clt(terms: NDArray[np.float64], level: float) -> Interval:
    """Mean of the per-row terms ± z · sd / sqrt(n)."""
    estimate = float(terms.mean())
    half = z_critical(level) * float(np.std(terms, ddof=1)) / math.sqrt(terms.size)
    return Interval(estimate=estimate, lower=estimate - half, upper=estimate + half, level=level)


def evaluate_target(
    target: TargetSpec,
    keys: Sequence[str],
    examples: Sequence[Example],
    *,
    policy: Policy | None = None,
    reward_range: tuple[float, float] = (0.0, 1.0),
    level: float = 0.95,
) -> OffPolicyResult:
    """The target's off-policy value on ``examples`` (raw rewards, logged propensities).

    Raises:
        ValueError: with fewer than two examples, a bad ``level``, or as :func:`target_matrix`.
    """
    check_level(level)
    if len(examples) < 2:
        raise ValueError(f"{len(examples)} logged decisions, need at least 2")
    pi, cells, names = target_matrix(target, keys, examples, policy=policy)
    rewards = np.array([ex.reward for ex in examples], dtype=np.float64)
    actions = np.array([ex.chosen for ex in examples], dtype=np.intp)
    propensities = np.array([ex.propensity for ex in examples], dtype=np.float64)
    model = cell_mean_rewards(rewards, actions, len(keys), segments=cells)
    estimate = evaluate_policy(
        rewards,
        propensities,
        actions,
        pi,
        reward_model=model,
        level=level,
        reward_range=reward_range,
    )
    weights = pi[np.arange(len(examples)), actions] / propensities
    counts = np.bincount(cells, minlength=len(names))
    return OffPolicyResult(
        n=len(examples),
        target=str(target.__struct_config__.tag),
        description=describe_target(target),
        estimate=estimate,
        deployed=_clt(rewards, level),
        difference=_clt((weights - 1.0) * rewards, level),
        cells={name: int(c) for name, c in zip(names, counts, strict=True)},
        warnings=estimate.warnings,
    )
