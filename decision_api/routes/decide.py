"""``POST /v1/decide``: variants for one unit's placements."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from decision_api.routes.bodies import StructBody
from decision_api.routes.fast_decide import fast_decide
from decision_api.routes.guards import is_public, require
from decision_api.services import Services
from event_log.writer import now_ms
from tailor_contract.errors import InvalidInput
from tailor_contract.wire import DecideRequest, DecideResponse


class DecideController(Controller):
    """Real-time decisions for websites and apps."""

    path = "/v1/decide"
    tags = ["decisions"]

    @post(
        "",
        guards=[require("decide")],
        status_code=200,
        middleware=[fast_decide],
        dto=StructBody[DecideRequest],
        return_dto=None,
    )
    async def decide(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[DecideRequest],
        services: NamedDependency[Services],
    ) -> DecideResponse:
        """Pick a variant for each placement (reason codes: docs/http-api.md#reason-codes).

        Valid, authorised requests are answered by the fast path in
        :mod:`decision_api.routes.fast_decide`; this handler serves the rest (and the errors).
        """
        started = time.perf_counter()
        limit = services.settings.decisions.max_placements
        if len(data.placements) > limit:
            raise InvalidInput(
                f"at most {limit} placements per request, got {len(data.placements)}",
                field="$.placements",
            )
        response = await services.engine.decide(
            data.unit_id,
            data.placements,
            data.context,
            data.consent,
            now_ms(),
            public=is_public(request),
            exclude=data.exclude,
            explain=data.explain,
            slates=data.slates,
        )
        services.metrics.decision_latency.labels("decide").observe(time.perf_counter() - started)
        return response
