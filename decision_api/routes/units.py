"""Unit profiles: typed features and behavioural events.

Consent: a unit that withdrew consent (``PUT /v1/units/{id}/consent`` with
``personalization: false``) has no profile written for it. ``PUT .../features`` answers 409
(the caller writes a profile on purpose and should know); ``POST /v1/events`` answers 202 and
drops the event (events are fire-and-forget, and the answer must not tell a public key whether a
unit opted out), counted in ``tailor_unit_events_dropped_total{reason="opted_out"}``. Writes
racing an erasure are dropped the same way (reason ``erased``, 409 for features).

Public keys (``decide`` without ``ingest``, embedded in web pages, see
:attr:`decision_api.access.keys.ApiKey.public`) may send only ``BROWSER_EVENT_TYPES``, without
``value`` or ``ts``: anyone can read such a key and claim to be any unit, so it must not be able
to plant purchases, revenue or email engagement (which targeting and send-time models read) in
someone's profile. Server-side pipelines send those with an ``ingest`` key.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from decision_api.privacy.sensitive import denylist, sensitive_names
from decision_api.profiles.store import Timestamp, UnitEvent
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import is_public, require
from decision_api.services import Services
from event_log.rows import event_time_problem
from tailor_contract.errors import Conflict, Forbidden, InvalidInput
from tailor_contract.wire import (
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

BROWSER_EVENT_TYPES = frozenset({"page_view", "product_view", "add_to_cart"})
"""The event types a public key may send (browsing, no monetary value)."""

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

        A name on the sensitive-feature denylist is refused (422): it is never stored. A unit
        that withdrew consent (or was erased moments ago) is refused with 409: nothing written.
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
        written = await services.features.upsert_features(unit_id, features)
        if written == "opted_out":
            raise Conflict(
                f"unit {unit_id!r} withdrew consent (PUT /v1/units/{{unit_id}}/consent): "
                "no profile is stored for it, its features were not written"
            )
        if written == "erased":
            raise Conflict(
                f"unit {unit_id!r} was erased moments ago: its features were not written"
            )
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
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[EventRequest],
        services: NamedDependency[Services],
    ) -> EventAccepted:
        """Apply one event to the unit's derived features, atomically.

        A public key may send only browser events without ``value`` or ``ts`` (403 naming the
        field). An event for a unit that withdrew consent is accepted and dropped (202).
        """
        if is_public(request):
            check_browser_event(data)
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
        for written in await services.features.record_events(data.unit_id, [event], now):
            if written == "stored":
                services.metrics.unit_events.inc()
            else:
                services.metrics.unit_events_dropped.labels(written).inc()
        return EventAccepted(unit_id=data.unit_id, type=data.type)


def check_browser_event(data: EventRequest) -> None:
    """Refuse (403) what a public key may not send: other types, a value, a time."""
    if data.type not in BROWSER_EVENT_TYPES:
        raise Forbidden(
            f"a public (decide-only) key may send only {sorted(BROWSER_EVENT_TYPES)} events, "
            f"got {data.type!r}; send it from your server with an 'ingest' key",
            field="$.type",
        )
    if data.value != 0:
        raise Forbidden(
            "a public (decide-only) key may not send an event value; send it from your server "
            "with an 'ingest' key",
            field="$.value",
        )
    if data.ts is not None:
        raise Forbidden(
            "a public (decide-only) key may not date an event (the server's time is used); "
            "send dated events with an 'ingest' key",
            field="$.ts",
        )
