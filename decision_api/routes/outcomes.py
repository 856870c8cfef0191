"""Outcomes: clicks, opens, purchases — logged and joined to their decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from redis.exceptions import RedisError

from decision_api.event_writer import now_ms
from decision_api.events import Outcome
from decision_api.routes.guards import require
from decision_api.schemas import OutcomeAccepted, OutcomeBatch, OutcomeRequest
from decision_api.services import Services

log = structlog.get_logger("tailor.outcomes")


async def accept_outcomes(
    services: Services, requests: Sequence[OutcomeRequest]
) -> OutcomeAccepted:
    """Log outcomes durably, then apply them to the reward join (degrades if Redis is down)."""
    received = now_ms()
    ids = []
    outcomes = []
    for req in requests:
        event_id = uuid.UUID(req.event_id) if req.event_id else uuid.uuid4()
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
        outcomes.append(outcome)
    joined, degraded = await join_outcomes(services, outcomes, received)
    return OutcomeAccepted(accepted=len(ids), event_ids=ids, joined=joined, degraded=degraded)


async def join_outcomes(
    services: Services, outcomes: Sequence[Outcome], now: int
) -> tuple[int, bool]:
    """Feed outcomes to the reward join; returns (decisions rewarded, whether Redis failed).

    Outcomes received after their window closed are counted as late, those dated before
    their decision's window opened as early; neither is learned. Unit ids are never logged.
    """
    rules = services.learning.rules
    if not rules:
        return 0, False
    joined = 0
    try:
        # Decisions this worker made but has not written yet (the join flusher runs every
        # 20 ms) must be in Redis first, or an outcome sent right after its decision misses it.
        await services.learning.join.flush()
        for outcome in outcomes:
            results = await services.learning.join.apply_outcome(
                event_id=outcome.event_id.hex,
                outcome_type=outcome.type,
                value=outcome.value,
                now_ms=now,
                ts_ms=outcome.ts_ms,
                rules_of=rules,
                decision_id=outcome.decision_id or None,
                unit_id=outcome.unit_id or None,
                experiment=outcome.experiment or None,
            )
            for experiment, result in results:
                if result == "joined":
                    joined += 1
                elif result == "late":
                    services.metrics.late_outcomes.labels(experiment).inc()
                    log.info("outcome_late", experiment=experiment, type=outcome.type)
                elif result == "early":
                    # Dated before its decision (or send_at): it cannot be the decision's effect.
                    services.metrics.early_outcomes.labels(experiment).inc()
                    log.warning("outcome_rejected_early", experiment=experiment, type=outcome.type)
    except RedisError as exc:
        services.metrics.degraded.labels("redis").inc()
        log.warning("reward_join_failed", error=str(exc))
        return joined, True
    return joined, False


class OutcomeController(Controller):
    """Record what units did after decisions."""

    path = "/v1/outcomes"
    tags = ["outcomes"]
    guards = [require("decide", "ingest")]

    @post("", status_code=202)
    async def record(
        self, data: JSONBody[OutcomeRequest], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept one outcome."""
        return await accept_outcomes(services, [data])

    @post("/batch", status_code=202)
    async def record_batch(
        self, data: JSONBody[OutcomeBatch], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept up to 10,000 outcomes at once."""
        return await accept_outcomes(services, data.outcomes)
