"""``POST /v1/decide/batch``: variants and send times for many recipients (email, flows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from decision_api.bulk import Campaign, decide_bulk
from decision_api.errors import InvalidInput
from decision_api.event_writer import now_ms
from decision_api.routes.guards import require
from decision_api.schemas import BatchDecideRequest, BatchDecideResponse, RecipientDecision
from decision_api.services import Services

NDJSON = "application/x-ndjson"
_encoder = msgspec.json.Encoder()


def _campaign(data: BatchDecideRequest, services: Services) -> Campaign:
    limit = services.settings.decisions.max_batch_recipients
    if len(data.recipients) > limit:
        raise InvalidInput(
            f"at most {limit} recipients per request, got {len(data.recipients)}; split the "
            "campaign into several requests",
            field="$.recipients",
        )
    if data.send_window is None:
        for placement in data.placements:
            if any(
                c.experiment.kind == "send_time" for c in services.cache.for_placement(placement)
            ):
                raise InvalidInput(
                    f"placement {placement!r} chooses send times: send_window is required",
                    field="$.send_window",
                )
    return Campaign(
        name=data.campaign,
        placements=tuple(data.placements),
        window=data.send_window,
        default_send_time=data.default_send_time,
        step=data.step,
        context=data.context,
    )


class BatchController(Controller):
    """Bulk decisions: one request for a whole campaign (or a chunk of it)."""

    path = "/v1/decide/batch"
    tags = ["decisions"]

    @post(
        "",
        guards=[require("decide")],
        status_code=200,
        responses=None,
        description=(
            "Answers every recipient. With `Accept: application/x-ndjson` the answer streams one "
            "JSON object per recipient per line, in request order, as chunks are decided."
        ),
    )
    async def decide_batch(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[BatchDecideRequest],
        services: NamedDependency[Services],
    ) -> BatchDecideResponse | Stream:
        """Decide every placement (and send time) for every recipient."""
        campaign = _campaign(data, services)
        started = now_ms()
        batches = decide_bulk(
            services.engine,
            services.features,
            services.learning,
            data.recipients,
            campaign,
            now_ms=started,
            rng=np.random.default_rng(),
        )
        if NDJSON in request.headers.get("accept", ""):

            async def lines() -> AsyncIterator[bytes]:
                async for batch in batches:
                    yield b"".join(_encoder.encode(r) + b"\n" for r in batch)

            return Stream(lines(), media_type=NDJSON)
        answers: list[RecipientDecision] = []
        async for batch in batches:
            answers.extend(batch)
        errors = sum(1 for a in answers if a.error is not None)
        return BatchDecideResponse(
            campaign=campaign.name,
            count=len(answers),
            errors=errors,
            degraded=any(a.degraded for a in answers),
            recipients=answers,
        )
