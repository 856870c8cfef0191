"""What ``decide`` and ``decide_batch`` give back: one :class:`Decision` per placement.

A decision is never missing: when the API is slow or down (or refuses the request) every
placement carries the caller's default with ``fallback=True``; a placement the API serves with
no experiment (reason ``no_experiment``) carries the caller's default too, with
``fallback=False``. Decisions made in-process by the local evaluator have ``local=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from sdk.errors import InvalidRequest, TailorError
from tailor_contract.wire import Factor, PlacementDecision, RecipientDecision, SlotDecision

__all__ = [
    "DecideResult",
    "Decision",
    "DefaultVariant",
    "Defaults",
    "RecipientResult",
    "fallback_decisions",
    "from_server",
    "recipient_fallback",
    "recipient_result",
]

FALLBACK_REASON = "fallback"


class DefaultVariant(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller shows when Tailor does not decide a placement."""

    variant: str | None = None
    payload: dict[str, Any] | None = None


Defaults = Mapping[str, DefaultVariant | str]
"""Per placement: a :class:`DefaultVariant` or just a variant key."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One placement's answer (see ``tailor_contract.wire.PlacementDecision`` for the fields).

    ``fallback`` is true when this is the caller's default because Tailor could not answer;
    ``local`` when the SDK's local evaluator decided it.
    """

    placement: str
    variant: str | None
    payload: dict[str, Any] | None
    reason: str
    policy: str = "default"
    propensity: float = 1.0
    experiment: str | None = None
    experiment_version: int | None = None
    model_version: str | None = None
    send_at: datetime | None = None
    fallback: bool = False
    local: bool = False
    explanation: list[Factor] | None = None
    slate: list[SlotDecision] | None = None
    """A ranked slate's items in order (``slates=`` asked for it and a ``vw_slates``
    experiment serves the placement): each slot's item, propensity and payload."""


class DecideResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``decide``: a decision for every requested placement, in request order.

    ``decision_id`` is None only for a fallback (nothing was decided, nothing to attribute
    outcomes to); ``error`` holds why Tailor could not answer.
    """

    decision_id: str | None
    decisions: dict[str, Decision]
    degraded: bool = False
    fallback: bool = False
    error: TailorError | None = None

    def __getitem__(self, placement: str) -> Decision:
        """The decision for ``placement`` (KeyError if it was not requested)."""
        return self.decisions[placement]

    def __contains__(self, placement: object) -> bool:
        return placement in self.decisions

    def variant(self, placement: str) -> str | None:
        """The variant key shown in ``placement``."""
        return self.decisions[placement].variant

    def payload(self, placement: str) -> dict[str, Any] | None:
        """The payload to render in ``placement``."""
        return self.decisions[placement].payload


class RecipientResult(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient's answer from ``decide_batch`` (in request order, ``index`` from 0)."""

    index: int
    unit_id: str
    decision_id: str | None
    decisions: dict[str, Decision]
    degraded: bool = False
    fallback: bool = False
    error: TailorError | None = None

    def __getitem__(self, placement: str) -> Decision:
        """The decision for ``placement``."""
        return self.decisions[placement]


def _default(placement: str, defaults: Defaults | None) -> DefaultVariant:
    given = defaults.get(placement) if defaults is not None else None
    if isinstance(given, str):
        return DefaultVariant(variant=given)
    return given or DefaultVariant()


def fallback_decisions(placements: Iterable[str], defaults: Defaults | None) -> dict[str, Decision]:
    """The caller's defaults for ``placements``, each marked ``fallback=True``."""
    out: dict[str, Decision] = {}
    for placement in placements:
        default = _default(placement, defaults)
        out[placement] = Decision(
            placement=placement,
            variant=default.variant,
            payload=default.payload,
            reason=FALLBACK_REASON,
            fallback=True,
        )
    return out


def from_server(answer: PlacementDecision, defaults: Defaults | None) -> Decision:
    """A server answer as a :class:`Decision`; no experiment means the caller's default."""
    if answer.variant is None:
        default = _default(answer.placement, defaults)
        return Decision(
            placement=answer.placement,
            variant=default.variant,
            payload=default.payload,
            reason=answer.reason,
            policy=answer.policy,
        )
    return Decision(
        placement=answer.placement,
        variant=answer.variant,
        payload=answer.payload,
        reason=answer.reason,
        policy=answer.policy,
        propensity=answer.propensity,
        experiment=answer.experiment,
        model_version=answer.model_version,
        send_at=answer.send_at,
        explanation=answer.explanation,
        slate=answer.slate,
    )


def recipient_result(
    line: RecipientDecision, placements: Sequence[str], defaults: Defaults | None
) -> RecipientResult:
    """One NDJSON line of ``/v1/decide/batch`` as a result; a per-recipient error falls back."""
    if line.error is not None:
        error = InvalidRequest(
            422, line.error.message, code=line.error.code, field=line.error.field
        )
        return RecipientResult(
            index=line.index,
            unit_id=line.unit_id,
            decision_id=None,
            decisions=fallback_decisions(placements, defaults),
            degraded=line.degraded,
            fallback=True,
            error=error,
        )
    return RecipientResult(
        index=line.index,
        unit_id=line.unit_id,
        decision_id=line.decision_id,
        decisions={d.placement: from_server(d, defaults) for d in line.decisions},
        degraded=line.degraded,
    )


def recipient_fallback(
    index: int,
    unit_id: str,
    placements: Sequence[str],
    defaults: Defaults | None,
    error: TailorError,
) -> RecipientResult:
    """A recipient the API did not answer (down, timed out, stream broken): defaults."""
    return RecipientResult(
        index=index,
        unit_id=unit_id,
        decision_id=None,
        decisions=fallback_decisions(placements, defaults),
        fallback=True,
        error=error,
    )
