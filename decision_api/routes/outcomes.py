"""Outcomes: clicks, opens, purchases — logged and joined to their decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from decision_api.event_writer import now_ms
from decision_api.events import Outcome
from decision_api.routes.guards import require
from decision_api.schemas import OutcomeAccepted, OutcomeBatch, OutcomeRequest
from decision_api.services import Services


def accept_outcomes(services: Services, requests: Sequence[OutcomeRequest]) -> OutcomeAccepted:
    """Turn outcome requests into event-log rows (and reward-join input)."""
    received = now_ms()
    ids = []
    for req in requests:
        event_id = uuid.uuid4()
        ts_ms = int(req.ts.timestamp() * 1000) if req.ts is not None else received
        outcome = Outcome(
            event_id=event_id,
            ts_ms=ts_ms,
            decision_id=req.decision_id or "",
            unit_id=req.unit_id or "",
            experiment=req.experiment or "",
            type=req.type,
            value=req.value,
            properties=dict(req.properties),
        )
        services.writer.submit(outcome)
        services.metrics.outcomes.labels(req.type).inc()
        ids.append(event_id.hex)
    return OutcomeAccepted(accepted=len(ids), event_ids=ids)


class OutcomeController(Controller):
    """Record what units did after decisions."""

    path = "/v1/outcomes"
    tags = ["outcomes"]
    guards = [require("decide")]

    @post("", status_code=202)
    async def record(
        self, data: JSONBody[OutcomeRequest], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept one outcome."""
        return accept_outcomes(services, [data])

    @post("/batch", status_code=202)
    async def record_batch(
        self, data: JSONBody[OutcomeBatch], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept up to 10,000 outcomes at once."""
        return accept_outcomes(services, data.outcomes)
