"""Dependency providers for handlers."""

from __future__ import annotations

from litestar.datastructures import State

from decision_api.services import Services


def provide_services(state: State) -> Services:
    """The worker's :class:`Services` (opened in the lifespan)."""
    services: Services = state.services
    return services
