"""Unit profiles: typed features and behavioural events."""

from __future__ import annotations

import time
from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from decision_api.errors import InvalidInput
from decision_api.events import event_time_problem
from decision_api.feature_store import Timestamp, UnitEvent
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.schemas import (
    UNIT_ID_PATTERN,
    ConsentRequest,
    ConsentState,
    ErasureReport,
    EventAccepted,
    EventRequest,
    FeaturesRequest,
    FeaturesStored,
    TimestampValue,
    UnitExport,
)
from decision_api.sensitive import denylist, sensitive_names
from decision_api.services import Services

# Litestar does not apply msgspec ``Meta`` constraints to path parameters: restate them.
PathUnitId = Annotated[str, Parameter(min_length=1, max_length=256, pattern=UNIT_ID_PATTERN)]


class UnitController(Controller):
    """Write what Tailor knows about a unit."""

    path = "/v1/units"
    tags = ["units"]

    @put(
        "/{unit_id:str}/features",
        guards=[require("ingest")],
        dto=StructBody[FeaturesRequest],
        return_dto=None,
    )
    async def upsert_features(
        self,
        unit_id: PathUnitId,
        data: JSONBody[FeaturesRequest],
        services: NamedDependency[Services],
    ) -> FeaturesStored:
        """Upsert typed features (numbers, strings, string lists, ``{"ts": ...}`` timestamps).

        A name on the sensitive-feature denylist is refused (422): it is never stored.
        """
        used = sensitive_names(
            data.features, denylist(services.settings.decisions.sensitive_features)
        )
        if used:
            raise InvalidInput(
                f"sensitive features are never stored: {used}", field=f"$.features.{used[0]}"
            )
        features = {
            name: Timestamp(ts=value.ts.timestamp()) if isinstance(value, TimestampValue) else value
            for name, value in data.features.items()
        }
        await services.features.upsert_features(unit_id, features)
        return FeaturesStored(unit_id=unit_id, stored=sorted(features))

    @put(
        "/{unit_id:str}/consent",
        guards=[require("ingest")],
        dto=StructBody[ConsentRequest],
        return_dto=None,
    )
    async def set_consent(
        self,
        unit_id: PathUnitId,
        data: JSONBody[ConsentRequest],
        services: NamedDependency[Services],
    ) -> ConsentState:
        """Store the unit's consent: ``personalization: false`` means the default experience,
        no profile read and a pseudonymised unit id in the event log, until given again."""
        await services.features.set_opt_out(unit_id, not data.personalization)
        action = "consent_given" if data.personalization else "consent_withdrawn"
        services.audit(action, "unit", services.pseudonymise(unit_id), 0, "")
        return ConsentState(unit_id=unit_id, personalization=data.personalization)

    @get("/{unit_id:str}/export", guards=[require("admin")])
    async def export(self, unit_id: PathUnitId, services: NamedDependency[Services]) -> UnitExport:
        """Everything stored about the unit: profile, derived features, consent, Redis records,
        exposures and outcomes (also those logged under its pseudonym)."""
        return await services.data_rights.export(unit_id)

    @delete("/{unit_id:str}", guards=[require("admin")], status_code=200)
    async def erase(
        self, unit_id: PathUnitId, services: NamedDependency[Services]
    ) -> ErasureReport:
        """Erase the unit everywhere (Redis, unwritten events, event log) and audit it under its
        pseudonym; 503 when the event log is down (nothing is lost by retrying)."""
        return await services.data_rights.erase(unit_id)


class EventController(Controller):
    """Behavioural events that keep derived features (counts, recency, monetary value)."""

    path = "/v1/events"
    tags = ["units"]

    @post(
        "",
        guards=[require("decide", "ingest")],
        status_code=202,
        dto=StructBody[EventRequest],
        return_dto=None,
    )
    async def record(
        self, data: JSONBody[EventRequest], services: NamedDependency[Services]
    ) -> EventAccepted:
        """Apply one event to the unit's derived features, atomically."""
        now = time.time()
        ts = data.ts.timestamp() if data.ts is not None else now
        # Behavioural history feeds 90-day features: bounded by the profile's lifetime.
        settings = services.settings
        problem = event_time_problem(
            int(ts * 1000),
            int(now * 1000),
            max_age_s=settings.redis.profile_ttl_s,
            max_lead_s=settings.event_log.max_event_lead_s,
            age_setting="redis.profile_ttl_s",
        )
        if data.ts is not None and problem is not None:
            raise InvalidInput(f"ts {data.ts.isoformat()} {problem}", field="$.ts")
        event = UnitEvent(
            type=data.type, ts=ts, value=data.value, category=data.properties.get("category", "")
        )
        await services.features.record_events(data.unit_id, [event], now)
        services.metrics.unit_events.inc()
        return EventAccepted(unit_id=data.unit_id, type=data.type)
