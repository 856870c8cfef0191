"""Off-policy value of any target policy: ``POST /v1/experiments/{key}/off-policy`` (scope
``report``).

The body names a target (:data:`experiments.off_policy.targets.TargetSpec`): ``uniform``,
``always`` a variant, a context-dependent ``rules`` table (targeting conditions → a variant or a
probability table), or the experiment's ``current`` model (its pmf) / ``current_greedy`` (its most
probable variant). The server reads the experiment's logged decisions (exposures with their
context and propensity, outcomes within the reward window — the rows a warm start learns from),
computes the target's probabilities on every logged context and answers its IPS, SNIPS, DM and
DR estimates next to the deployed policy's mean reward
(:class:`experiments.off_policy.targets.OffPolicyResult`). A candidate *configuration* is
evaluated by the what-if route instead (it must be trained first). Nothing changes; the work is
bounded by ``limit`` and runs in a worker thread.

Errors: an unknown variant or a table not summing to 1 is a 422 naming the field
(``$.target.rules[0].variant``); ``current``/``current_greedy`` on an experiment with a fixed
split, or before any model was published, is a 409 (``$.target.kind``); fewer than two logged
decisions is a 409 (``$.key``).

The report takes such targets too: ``GET /v1/experiments/{key}/report?target=<JSON>``
(repeatable) appends each target's estimate to the report's off-policy policies
(:func:`with_targets`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from bandits.base import Policy, SnapshotError
from bandits.registry import build_policy
from bandits.spec import is_learning
from decision_api.learning.runtime import spec_of
from decision_api.learning.warm_start import history_examples
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from experiments.off_policy.targets import (
    OffPolicyResult,
    SavedTarget,
    TargetSpec,
    check_target,
    evaluate_target,
    needs_model,
)
from experiments.reports.results import ExperimentReport, PolicyValue
from tailor_contract.definitions import Experiment
from tailor_contract.errors import Conflict, InvalidInput
from tailor_contract.policies import FixedConfig, SendTimeThompsonConfig

__all__ = ["OffPolicyController", "OffPolicyRequest", "parse_targets", "with_targets"]

T = TypeVar("T")

_FIELD = re.compile(r"\A(\$\.target[^:]*): ")


class OffPolicyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A target policy to evaluate on the experiment's logged decisions.

    Attributes:
        target: e.g. ``{"kind": "rules", "rules": [{"when": {...}, "variant": "b"}],
            "otherwise": "a"}``.
        level: interval level.
        limit: the latest logged decisions to use, at most 500,000.
    """

    target: TargetSpec
    level: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.95
    limit: Annotated[int, msgspec.Meta(ge=2, le=500_000)] = 100_000


async def _current_model(
    services: Services, experiment: Experiment, target: TargetSpec | None = None
) -> Policy:
    """The model a target names — the published one, or a saved version — or a Conflict naming
    ``$.target.kind`` (``$.target.version`` for a version that is not saved)."""
    if not is_learning(experiment.policy) or isinstance(experiment.policy, SendTimeThompsonConfig):
        raise Conflict(
            f"experiment {experiment.key!r} has no variant-choosing model "
            f"(policy {experiment.policy.__struct_config__.tag})",
            field="$.target.kind",
        )
    snapshots = services.learning.snapshots
    if isinstance(target, SavedTarget):
        snap = await snapshots.saved(experiment.key, target.version)
        if snap is None:
            kept = await snapshots.saved_versions(experiment.key)
            raise Conflict(
                f"experiment {experiment.key!r} has no saved model version {target.version} "
                f"(saved: {', '.join(map(str, kept)) or 'none'})",
                field="$.target.version",
            )
        what = f"saved model version {target.version}"
    else:
        snap = await snapshots.get(experiment.key)
        if snap is None:
            raise Conflict(
                f"experiment {experiment.key!r} has no published model yet",
                field="$.target.kind",
            )
        what = "published model"
    spec = spec_of(experiment)
    try:
        return build_policy(
            spec.config, spec.arms, snapshot=snap.data or None, version=str(snap.version)
        )
    except SnapshotError as exc:
        raise Conflict(
            f"the {what} does not fit the experiment's policy: {exc}", field="$.target.kind"
        ) from exc


def _run(
    services: Services, experiment: Experiment, request: OffPolicyRequest, model: Policy | None
) -> OffPolicyResult:
    # A fixed config leaves rewards unscaled: the examples carry the experiment's raw rewards.
    raw = msgspec.structs.replace(experiment, policy=FixedConfig())
    examples = history_examples(services.event_log, raw, limit=request.limit)
    if len(examples) < 2:
        raise Conflict(
            f"experiment {experiment.key!r} has {len(examples)} logged decisions with a "
            "propensity; an off-policy estimate needs at least 2",
            field="$.key",
        )
    return _invalid(
        evaluate_target,
        request.target,
        [v.key for v in experiment.variants],
        examples,
        policy=model,
        reward_range=(experiment.reward.min_reward, experiment.reward.max_reward),
        level=request.level,
    )


def _invalid(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``, its ValueError turned into a 422 naming the target's field."""
    try:
        return func(*args, **kwargs)
    except ValueError as exc:
        match = _FIELD.match(str(exc))
        raise InvalidInput(str(exc), field=match.group(1) if match else "$.target") from exc


class OffPolicyController(Controller):
    """Evaluate any target policy on an experiment's logs."""

    path = "/v1/experiments"
    tags = ["reports"]
    guards = [require("report")]

    @post(
        "/{key:str}/off-policy", status_code=200, dto=StructBody[OffPolicyRequest], return_dto=None
    )
    async def off_policy(
        self,
        key: FromPath[str],
        data: JSONBody[OffPolicyRequest],
        services: NamedDependency[Services],
    ) -> OffPolicyResult:
        """A target policy's IPS, SNIPS and DR value on the logged decisions."""
        experiment = await services.store.get(key)
        _invalid(check_target, data.target, [v.key for v in experiment.variants])
        model = (
            await _current_model(services, experiment, data.target)
            if needs_model(data.target)
            else None
        )
        await services.writer.flush()
        return await asyncio.to_thread(_run, services, experiment, data, model)


def parse_targets(raw: Sequence[str], experiment: Experiment) -> list[TargetSpec]:
    """The report's ``?target=`` values (JSON each), checked against the experiment's variants.

    Raises:
        InvalidInput: naming ``target`` for a value that is not a target, or the target's field.
    """
    targets = []
    for value in raw:
        try:
            target = msgspec.json.decode(value, type=TargetSpec)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"not a target policy: {exc}", field="target") from exc
        _invalid(check_target, target, [v.key for v in experiment.variants])
        targets.append(target)
    return targets


async def with_targets(
    services: Services,
    experiment: Experiment,
    report: ExperimentReport,
    targets: Sequence[TargetSpec],
    level: float,
) -> ExperimentReport:
    """The report with each target's estimate appended to its off-policy section's policies.

    The targets are evaluated as ``POST .../off-policy`` does (on the latest logged decisions,
    whatever the report's period); the description says so.

    Raises:
        Conflict: when the report has no off-policy section (fewer than two logged decisions)
            or a model target has no model.
    """
    if not targets:
        return report
    section = report.off_policy
    if section is None:
        raise Conflict(
            f"experiment {experiment.key!r} has no logged decisions to evaluate targets on",
            field="target",
        )
    added = []
    for target in targets:
        model = await _current_model(services, experiment, target) if needs_model(target) else None
        request = OffPolicyRequest(target=target, level=level)
        result = await asyncio.to_thread(_run, services, experiment, request, model)
        added.append(
            PolicyValue(
                policy=f"target:{result.target}",
                description=(
                    f"{result.description} (on the latest {result.n} logged decisions, all dates)"
                ),
                estimate=result.estimate,
            )
        )
    return msgspec.structs.replace(
        report,
        off_policy=msgspec.structs.replace(section, policies=[*section.policies, *added]),
    )
