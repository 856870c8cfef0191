"""Outcomes: clicks, opens, purchases — logged and joined to their decisions.

An outcome sent with the ``unit_id`` of a unit that withdrew consent is logged as its decisions are:
under the unit's pseudonym, without ``properties`` (the same
:class:`~decision_api.decisions.engine.Pseudonymiser`), and so not joined by unit id either. The
stored opt-outs are read in one script call per request; when Redis cannot answer, outcomes are
logged as sent and the answer says ``degraded: true`` (as decisions fail open on the profile read).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from redis.exceptions import RedisError

from bandits.join import OutcomeRef
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.rows import Outcome, event_time_problem, new_event_id
from event_log.writer import now_ms
from tailor_contract.errors import InvalidInput
from tailor_contract.wire import OutcomeAccepted, OutcomeBatch, OutcomeRequest

log = structlog.get_logger("tailor.outcomes")


def outcome_times(
    services: Services, requests: Sequence[OutcomeRequest], now: int, prefix: str
) -> list[int]:
    """Each outcome's time in epoch ms (``now`` unless given).

    Raises:
        InvalidInput: naming the first ``ts`` outside the accepted window (``<prefix>.ts``).
    """
    cfg = services.settings.event_log
    times = []
    for index, req in enumerate(requests):
        if req.ts is None:
            times.append(now)
            continue
        ts_ms = int(req.ts.timestamp() * 1000)
        problem = event_time_problem(
            ts_ms, now, max_age_s=cfg.max_event_age_s, max_lead_s=cfg.max_event_lead_s
        )
        if problem is not None:
            field = prefix.format(index=index) + ".ts"
            raise InvalidInput(f"ts {req.ts.isoformat()} {problem}", field=field)
        times.append(ts_ms)
    return times


async def accept_outcomes(
    services: Services, requests: Sequence[OutcomeRequest], prefix: str = "$"
) -> OutcomeAccepted:
    """Log outcomes durably, then apply them to the reward join (degrades if Redis is down).

    Every outcome is checked before any is logged: a refused batch logs nothing. ``prefix``
    is the JSON path of an outcome in the body (``$.outcomes[{index}]`` for a batch).
    """
    received = now_ms()
    times = outcome_times(services, requests, received, prefix)
    ids = []
    outcomes = []
    opted_out, consent_unknown = await opted_out_units(services, requests)
    for req, ts_ms in zip(requests, times, strict=True):
        event_id = uuid.UUID(req.event_id) if req.event_id else new_event_id()
        unit_id, properties = req.unit_id or "", dict(req.properties)
        if unit_id in opted_out:
            unit_id, properties = services.pseudonymise(unit_id), {}
        outcome = Outcome(
            event_id=event_id,
            ts_ms=ts_ms,
            decision_id=req.decision_id or "",
            unit_id=unit_id,
            experiment=req.experiment or "",
            type=req.type,
            value=req.value,
            properties=properties,
            slot=-1 if req.slot is None else req.slot,
            item=req.item or "",
        )
        services.writer.submit(outcome)
        services.metrics.outcomes.labels(req.type).inc()
        ids.append(event_id.hex)
        outcomes.append(outcome)
    joined, degraded = await join_outcomes(services, outcomes, received)
    return OutcomeAccepted(
        accepted=len(ids), event_ids=ids, joined=joined, degraded=degraded or consent_unknown
    )


async def opted_out_units(
    services: Services, requests: Sequence[OutcomeRequest]
) -> tuple[set[str], bool]:
    """The outcomes' unit ids whose unit withdrew consent, and whether Redis failed to say."""
    units = [req.unit_id for req in requests if req.unit_id]
    if not units:
        return set(), False
    try:
        return await services.features.opted_out(units), False
    except RedisError as exc:
        services.metrics.degraded.labels("redis").inc()
        log.warning("consent_read_failed", error=str(exc))
        return set(), True


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
        # 20 ms) must be in Redis first, or an outcome sent right after its decision misses it;
        # only then is it worth a flush (a click usually comes long after its decision).
        join = services.learning.join
        if any(join.holds(o.decision_id or None, o.unit_id or None) for o in outcomes):
            await join.flush()
        refs = [
            OutcomeRef(
                event_id=outcome.event_id.hex,
                type=outcome.type,
                value=outcome.value,
                ts_ms=outcome.ts_ms,
                decision_id=outcome.decision_id or None,
                unit_id=outcome.unit_id or None,
                experiment=outcome.experiment or None,
                slot=None if outcome.slot < 0 else outcome.slot,
                item=outcome.item or None,
            )
            for outcome in outcomes
        ]
        if len(refs) == 1:  # shares a pipeline with the concurrent requests' outcomes
            applied = [await services.learning.outcomes.apply(refs[0], now, rules)]
        else:  # every outcome of a batch in at most two pipelined round trips
            applied = await join.apply_outcomes(refs, now_ms=now, rules_of=rules)
        for outcome, results in zip(outcomes, applied, strict=True):
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
        services.warn.warning("reward_join_failed", error=str(exc))
        return joined, True
    return joined, False


class OutcomeController(Controller):
    """Record what units did after decisions."""

    path = "/v1/outcomes"
    tags = ["outcomes"]
    guards = [require("decide", "ingest")]

    @post("", status_code=202, dto=StructBody[OutcomeRequest], return_dto=None)
    async def record(
        self, data: JSONBody[OutcomeRequest], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept one outcome."""
        return await accept_outcomes(services, [data])

    @post("/batch", status_code=202, dto=StructBody[OutcomeBatch], return_dto=None)
    async def record_batch(
        self, data: JSONBody[OutcomeBatch], services: NamedDependency[Services]
    ) -> OutcomeAccepted:
        """Accept up to 10,000 outcomes at once."""
        return await accept_outcomes(services, data.outcomes, "$.outcomes[{index}]")
