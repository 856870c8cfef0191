"""Offline what-if over HTTP: ``POST /v1/experiments/{key}/what-if`` (scope ``report``).

The body names a candidate policy configuration (the same tagged union as an experiment's
``policy``) and, optionally, the interval ``level``, the replay's ``batch_size`` and how many of
the latest logged decisions to use (``limit``). The server replays the candidate's training over
the experiment's logged decisions in time order and answers its off-policy value next to the
deployed policy's (:class:`experiments.off_policy.what_if.WhatIfResult`). Nothing is deployed or
changed: the scope is ``report``, as for the report, whose data it reads; the work is bounded by
``limit`` and runs in a worker thread.

Errors: a config that does not decode or does not fit the experiment's variants is a 422 naming
the field (``$.policy.min_propensity``), as is a send-time policy (``$.policy.kind``: a what-if
replays variant choices); fewer than two logged decisions is a 409.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from bandits.vw import check_vw_config
from decision_api.learning.runtime import spec_of
from decision_api.learning.warm_start import history_examples
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from experiments.off_policy.what_if import DEFAULT_BATCH_SIZE, WhatIfResult, what_if
from tailor_contract.definitions import Experiment
from tailor_contract.errors import Conflict, InvalidInput
from tailor_contract.policies import (
    FixedConfig,
    PolicyConfig,
    SendTimeThompsonConfig,
    VWCBConfig,
    VWSlatesConfig,
)

__all__ = ["WhatIfController", "WhatIfRequest"]

_FIELD = re.compile(r"\A([a-z_]+) ==")


class WhatIfRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A candidate configuration to evaluate on the experiment's logged decisions.

    Attributes:
        policy: the candidate policy config, e.g. ``{"kind": "thompson", "segment_by": "plan"}``.
        level: interval level.
        batch_size: decisions scored by one model before it learns them (1 = strictly
            progressive; larger is faster).
        limit: the latest logged decisions to replay, at most 500,000.
    """

    policy: PolicyConfig
    level: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.95
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = DEFAULT_BATCH_SIZE
    limit: Annotated[int, msgspec.Meta(ge=2, le=500_000)] = 100_000


def _check_policy(config: PolicyConfig, n_variants: int) -> None:
    """Raise InvalidInput naming the field unless ``config`` fits ``n_variants`` variants."""
    if isinstance(config, SendTimeThompsonConfig):
        raise InvalidInput(
            "a what-if replays variant choices; send-time policies are not supported",
            field="$.policy.kind",
        )
    if isinstance(config, VWCBConfig | VWSlatesConfig):
        try:
            check_vw_config(config)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="$.policy.extra_args") from exc
    check = getattr(config, "check_arms", None)
    if check is None:
        return
    try:
        check(n_variants)
    except ValueError as exc:
        match = _FIELD.match(str(exc))
        field = f"$.policy.{match.group(1)}" if match else "$.policy"
        raise InvalidInput(str(exc), field=field) from exc


def _run(services: Services, experiment: Experiment, request: WhatIfRequest) -> WhatIfResult:
    # A fixed config leaves rewards unscaled: the examples carry the experiment's raw rewards.
    raw = msgspec.structs.replace(experiment, policy=FixedConfig())
    examples = history_examples(services.event_log, raw, limit=request.limit)
    if len(examples) < 2:
        raise Conflict(
            f"experiment {experiment.key!r} has {len(examples)} logged decisions with a "
            "propensity; a what-if needs at least 2",
            field="$.key",
        )
    try:
        return what_if(
            request.policy,
            spec_of(experiment).arms,
            examples,
            reward_range=(experiment.reward.min_reward, experiment.reward.max_reward),
            level=request.level,
            batch_size=request.batch_size,
        )
    except ValueError as exc:  # the candidate cannot decide on these logs
        raise InvalidInput(
            f"the candidate cannot replay these logs: {exc}", field="$.policy"
        ) from exc


class WhatIfController(Controller):
    """Evaluate a candidate policy configuration on an experiment's logs."""

    path = "/v1/experiments"
    tags = ["reports"]
    guards = [require("report")]

    @post("/{key:str}/what-if", status_code=200, dto=StructBody[WhatIfRequest], return_dto=None)
    async def what_if(
        self,
        key: FromPath[str],
        data: JSONBody[WhatIfRequest],
        services: NamedDependency[Services],
    ) -> WhatIfResult:
        """Replay a candidate config over the logged decisions; its value vs the deployed one."""
        experiment = await services.store.get(key)
        _check_policy(data.policy, len(experiment.variants))
        await services.writer.flush()
        return await asyncio.to_thread(_run, services, experiment, data)
