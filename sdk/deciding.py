"""The I/O-free steps of ``decide``, shared by the sync and async clients.

:func:`plan` checks the arguments against ``DecideRequest`` and splits the placements between
the local evaluator and the API; the client sends the remote part (if any); :func:`conclude`
merges both into one :class:`~sdk.results.DecideResult` in request order, using the API's
decision id for the local decisions too (so outcomes attribute to both), and returns the
exposure reports of the local decisions for the background buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from sdk import wire
from sdk.errors import TailorError
from sdk.local_eval import LocalEvaluator
from sdk.results import DecideResult, Decision, Defaults, fallback_decisions, from_server
from tailor_contract.wire import DecideResponse, ExposureReport

__all__ = ["Plan", "conclude", "fallback_result", "plan"]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """Which placements go where, and the API request body for the remote ones."""

    unit_id: str
    placements: list[str]
    context: dict[str, Any]
    consent: bool
    local: list[str]
    remote: list[str]
    remote_body: bytes | None


def plan(
    unit_id: str,
    placements: Sequence[str],
    context: Mapping[str, Any] | None,
    consent: bool,
    local: LocalEvaluator | None,
    exclude: Mapping[str, Sequence[str]] | None = None,
    explain: bool = False,
    slates: Mapping[str, Any] | None = None,
) -> Plan:
    """Check the arguments (raises ``InvalidRequest``) and split local from remote placements.

    A placement with exclusions or asking for a slate is always decided by the API (local
    evaluation applies neither), as are those the server lists as remote; with ``explain``
    every placement is (only the server's models can explain a choice).
    """
    placements = list(placements)
    ctx = dict(context or {})
    body = wire.decide_body(unit_id, placements, ctx, consent, exclude, explain, slates)
    if local is None or not local.ready or explain:
        return Plan(
            unit_id=unit_id,
            placements=placements,
            context=ctx,
            consent=consent,
            local=[],
            remote=placements,
            remote_body=body,
        )
    excluded = {p for p, keys in (exclude or {}).items() if keys} | set(slates or ())
    here = [p for p in placements if local.can_evaluate(p) and p not in excluded]
    there = [p for p in placements if p not in here]
    remote_body = None
    if there:
        remote_body = (
            body
            if not here
            else wire.decide_body(unit_id, there, ctx, consent, exclude, slates=slates)
        )
    return Plan(
        unit_id=unit_id,
        placements=placements,
        context=ctx,
        consent=consent,
        local=here,
        remote=there,
        remote_body=remote_body,
    )


def fallback_result(
    placements: Sequence[str], defaults: Defaults | None, error: TailorError
) -> DecideResult:
    """Every placement on the caller's defaults, because of ``error``."""
    return DecideResult(
        decision_id=None,
        decisions=fallback_decisions(placements, defaults),
        fallback=True,
        error=error,
    )


def conclude(
    p: Plan,
    answer: DecideResponse | None,
    error: TailorError | None,
    defaults: Defaults | None,
    local: LocalEvaluator | None,
) -> tuple[DecideResult, list[ExposureReport]]:
    """Merge the API's answer (or its failure) with the local decisions, in request order."""
    decisions: dict[str, Decision] = {}
    if answer is not None:
        for d in answer.decisions:
            decisions[d.placement] = from_server(d, defaults)
    elif p.remote:
        decisions.update(fallback_decisions(p.remote, defaults))
    decision_id = answer.decision_id if answer is not None else None
    exposures: list[ExposureReport] = []
    if p.local and local is not None:
        decision_id = decision_id or wire.new_event_id()
        answers = [
            local.evaluate(p.unit_id, placement, p.context, p.consent) for placement in p.local
        ]
        for a in answers:
            version = local.experiment_version(a.experiment) if a.experiment else None
            decision = from_server(a, defaults)
            decisions[a.placement] = msgspec.structs.replace(
                decision, local=True, experiment_version=version
            )
        exposures = local.exposures(
            answers,
            unit_id=p.unit_id,
            decision_id=decision_id,
            consent=p.consent,
            context=p.context,
            ts=datetime.now(UTC),
        )
    missing = [placement for placement in p.placements if placement not in decisions]
    decisions.update(fallback_decisions(missing, defaults))
    ordered = {placement: decisions[placement] for placement in p.placements}
    result = DecideResult(
        decision_id=decision_id,
        decisions=ordered,
        degraded=answer.degraded if answer is not None else False,
        fallback=error is not None,
        error=error,
    )
    return result, exposures
