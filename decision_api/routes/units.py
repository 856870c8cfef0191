"""Unit profiles: typed features and behavioural events."""

from __future__ import annotations

import time

from litestar import Controller, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from decision_api.feature_store import Timestamp, UnitEvent
from decision_api.routes.guards import require
from decision_api.schemas import (
    EventAccepted,
    EventRequest,
    FeaturesRequest,
    FeaturesStored,
    TimestampValue,
    UnitId,
)
from decision_api.services import Services


class UnitController(Controller):
    """Write what Tailor knows about a unit."""

    path = "/v1/units"
    tags = ["units"]

    @put("/{unit_id:str}/features", guards=[require("ingest")])
    async def upsert_features(
        self, unit_id: UnitId, data: JSONBody[FeaturesRequest], services: NamedDependency[Services]
    ) -> FeaturesStored:
        """Upsert typed features (numbers, strings, string lists, ``{"ts": ...}`` timestamps)."""
        features = {
            name: Timestamp(ts=value.ts.timestamp()) if isinstance(value, TimestampValue) else value
            for name, value in data.features.items()
        }
        await services.features.upsert_features(unit_id, features)
        return FeaturesStored(unit_id=unit_id, stored=sorted(features))


class EventController(Controller):
    """Behavioural events that keep derived features (counts, recency, monetary value)."""

    path = "/v1/events"
    tags = ["units"]

    @post("", guards=[require("decide")], status_code=202)
    async def record(
        self, data: JSONBody[EventRequest], services: NamedDependency[Services]
    ) -> EventAccepted:
        """Apply one event to the unit's derived features, atomically."""
        now = time.time()
        ts = data.ts.timestamp() if data.ts is not None else now
        event = UnitEvent(
            type=data.type, ts=ts, value=data.value, category=data.properties.get("category", "")
        )
        await services.features.record_events(data.unit_id, [event], now)
        services.metrics.unit_events.inc()
        return EventAccepted(unit_id=data.unit_id, type=data.type)
