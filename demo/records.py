"""What the demo simulates (:class:`Plan`) and what it saw happen (:class:`Observations`)."""

from __future__ import annotations

import msgspec

__all__ = ["EmailRecord", "Observations", "Plan", "VisitRecord"]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How much traffic to simulate."""

    days: int
    visits_per_day: int
    seed: int
    concurrency: int = 4  # requests in flight: more only queue up in the server (2 cores)


class VisitRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """One visit: who, what each placement showed (and why), what happened."""

    unit: int
    day: int
    device: int
    hero: str
    hero_reason: str
    sort: str
    sort_reason: str
    offer: str
    offer_reason: str
    purchased: bool
    clicked: bool


class EmailRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """One newsletter sent: subject and local hour chosen (and why), the open chance, the open."""

    unit: int
    day: int
    subject: str
    subject_reason: str
    local_hour: int
    send_reason: str
    p_open: float
    p_default_hour: float
    opened: bool


class Observations(msgspec.Struct, kw_only=True):
    """Everything the simulation saw, in completion order."""

    visits: list[VisitRecord] = msgspec.field(default_factory=list)
    emails: list[EmailRecord] = msgspec.field(default_factory=list)
    fallbacks: int = 0
    degraded: int = 0
    first_error: str = ""
    dropped_outcomes: int = 0
    profiles: int = 0
    history_events: int = 0
    learn_timeouts: list[str] = msgspec.field(default_factory=list)

    def fail(self, error: object) -> None:
        """Count an answer Tailor did not give (a fallback)."""
        self.fallbacks += 1
        self.first_error = self.first_error or str(error)
