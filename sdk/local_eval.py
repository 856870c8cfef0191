"""Local evaluation: assign ``fixed`` experiments in-process, with the server's own functions.

The client fetches ``GET /v1/definitions`` (live ``fixed`` experiments, reduced to what
assignment reads) and re-fetches it periodically with ``If-None-Match``. For a placement the
definitions cover, :class:`LocalEvaluator` walks the experiments exactly as the server's
decision engine does: both call the contract's one placement walk
(:func:`tailor_contract.placement.walk`: kill switch, paused, targeting, layer, global holdout,
holdout, consent), then the versioned hash split of ``tailor_contract.assignment``, pinned by
the golden files ``tests/golden/assignment_cases.json`` (hashing) and
``tests/golden/decision_cases.json`` (whole decisions), which server and SDK both pass.

Differences from a server decision, by construction:

- targeting sees only the attributes the caller passes (the request context): the unit's
  profile lives in the server's Redis. Pass what targeting reads, or keep such placements remote;
- a profile-level opt-out (``PUT /v1/units/{id}/consent``) is not known locally: pass
  ``consent=False`` for such units;
- placements with a learning policy, a send-time experiment or a frequency cap are listed by
  the server as ``remote_placements`` and are always decided by the API.

Every local decision with an experiment becomes an :class:`ExposureReport`, sent in the
background to ``POST /v1/exposures/batch`` (the server logs it like its own exposures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from sdk.wire import new_event_id
from tailor_contract.assignment import (
    HASH_VERSION,
    cumulative_shares,
    in_global_holdout,
    pick_bucket,
    unit_hash,
)
from tailor_contract.placement import ASSIGN, NO_EXPERIMENT, Gate, walk
from tailor_contract.wire import Definition, Definitions, ExposureReport, PlacementDecision

__all__ = ["LocalEvaluator"]


class _Compiled(msgspec.Struct, frozen=True, kw_only=True):
    definition: Definition
    cumulative: list[float]
    default_index: int
    gate: Gate


class LocalEvaluator:
    """Definitions installed from the API, and assignment over them."""

    def __init__(self) -> None:
        self._definitions: Definitions | None = None
        self._by_placement: dict[str, tuple[_Compiled, ...]] = {}
        self._by_key: dict[str, _Compiled] = {}
        self._remote: frozenset[str] = frozenset()
        self.etag: str | None = None

    @property
    def ready(self) -> bool:
        """Definitions are installed and use this SDK's hash version."""
        d = self._definitions
        return d is not None and d.hash_version == HASH_VERSION

    @property
    def version(self) -> int | None:
        """The config version of the installed definitions."""
        return self._definitions.version if self._definitions is not None else None

    def install(self, definitions: Definitions, etag: str | None = None) -> None:
        """Replace the definitions (one reference swap per map: readers never see a mix)."""
        by_placement: dict[str, list[_Compiled]] = {}
        by_key: dict[str, _Compiled] = {}
        for d in definitions.experiments:
            keys = [v.key for v in d.variants]
            compiled = _Compiled(
                definition=d,
                cumulative=cumulative_shares([v.weight for v in d.variants]),
                default_index=keys.index(d.default_variant),
                gate=Gate(
                    paused=d.status == "paused",
                    salt=d.salt,
                    holdout=d.holdout,
                    layer=d.layer,
                    layer_slice=d.layer_slice,
                    targeting=d.targeting,
                ),
            )
            by_key[d.key] = compiled
            by_placement.setdefault(d.placement, []).append(compiled)
        self._by_placement = {
            p: tuple(sorted(cs, key=lambda c: (-c.definition.priority, c.definition.key)))
            for p, cs in by_placement.items()
        }
        self._by_key = by_key
        self._remote = frozenset(definitions.remote_placements)
        self._definitions = definitions
        self.etag = etag

    def can_evaluate(self, placement: str) -> bool:
        """Whether ``placement`` is decided locally (definitions loaded, not a remote one)."""
        return self.ready and placement not in self._remote

    def evaluate(
        self, unit_id: str, placement: str, attributes: Mapping[str, Any], consent: bool
    ) -> PlacementDecision:
        """The decision the server would make for this unit, given only ``attributes``."""
        d = self._definitions
        assert d is not None, "no definitions installed"
        compiled, verdict = walk(
            self._by_placement.get(placement, ()),
            unit_id=unit_id,
            attributes=attributes,
            consent=consent,
            kill_switch=d.kill_switch,
            global_holdout=in_global_holdout(unit_id, d.global_holdout),
        )
        if compiled is None:
            return PlacementDecision(placement=placement, reason=NO_EXPERIMENT)
        if verdict != ASSIGN:  # a default (send-time experiments are never local)
            return _default(placement, compiled, verdict)
        exp = compiled.definition
        index = pick_bucket(unit_hash(exp.salt, unit_id), compiled.cumulative)
        lower = compiled.cumulative[index - 1] if index else 0.0
        variant = exp.variants[index]
        return PlacementDecision(
            placement=placement,
            experiment=exp.key,
            variant=variant.key,
            payload=variant.payload,
            propensity=compiled.cumulative[index] - lower,
            policy="fixed",
            reason="split",
        )

    def experiment_version(self, key: str) -> int | None:
        """The installed version of experiment ``key``."""
        compiled = self._by_key.get(key)
        return compiled.definition.version if compiled is not None else None

    def exposures(
        self,
        answers: Sequence[PlacementDecision],
        *,
        unit_id: str,
        decision_id: str,
        consent: bool,
        context: Mapping[str, Any],
        ts: datetime,
    ) -> list[ExposureReport]:
        """Exposure reports for the local answers that name an experiment."""
        reports = []
        for answer in answers:
            if answer.experiment is None or answer.variant is None:
                continue
            reports.append(
                ExposureReport(
                    event_id=new_event_id(),
                    decision_id=decision_id,
                    unit_id=unit_id,
                    experiment=answer.experiment,
                    experiment_version=self.experiment_version(answer.experiment) or 1,
                    placement=answer.placement,
                    variant=answer.variant,
                    reason=answer.reason,  # type: ignore[arg-type]  # a LocalReason by construction
                    propensity=answer.propensity,
                    ts=ts,
                    consent=consent,
                    context=dict(context) if consent else {},
                )
            )
        return reports


def _default(placement: str, compiled: _Compiled, reason: str) -> PlacementDecision:
    exp = compiled.definition
    variant = exp.variants[compiled.default_index]
    return PlacementDecision(
        placement=placement,
        experiment=exp.key,
        variant=variant.key,
        payload=variant.payload,
        propensity=1.0,
        policy="default",
        reason=reason,
    )
