"""Admin API for contact caps: named limits on how often a unit is contacted across experiments.

An experiment joins a cap with ``contact_cap: "<name>"``; the decision engine counts every
non-default exposure of every member experiment against the unit's cap (see
:meth:`decision_api.decisions.engine.DecisionEngine.decision_order` for priorities).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from tailor_contract.definitions import KEY_PATTERN, ContactCap
from tailor_contract.wire import ContactCapInfo, ContactCapList

CapName = Annotated[str, Parameter(pattern=KEY_PATTERN, max_length=64)]


def _json(info: ContactCapInfo) -> str:
    return msgspec.json.encode(info).decode()


def _info(name: str, cap: ContactCap) -> ContactCapInfo:
    return ContactCapInfo(name=name, max_exposures=cap.max_exposures, window_s=cap.window_s)


class ContactCapController(Controller):
    """Create, read, replace and delete contact caps."""

    path = "/v1/contact-caps"
    tags = ["experiments"]
    guards = [require("admin")]

    @get("")
    async def list_caps(self, services: NamedDependency[Services]) -> ContactCapList:
        """Every contact cap, by name."""
        caps = await services.store.contact_caps()
        return ContactCapList(contact_caps=[_info(n, c) for n, c in caps.items()])

    @get("/{name:str}")
    async def read(self, name: CapName, services: NamedDependency[Services]) -> ContactCapInfo:
        """One contact cap."""
        return _info(name, await services.store.contact_cap(name))

    @put("/{name:str}", dto=StructBody[ContactCap], return_dto=None)
    async def put_cap(
        self,
        name: CapName,
        data: JSONBody[ContactCap],
        services: NamedDependency[Services],
    ) -> ContactCapInfo:
        """Create or replace a contact cap; every worker applies it within a config poll."""
        await services.store.put_contact_cap(name, data)
        info = _info(name, data)
        services.audit("put", "contact_cap", name, 0, _json(info))
        await services.refresh_config()
        return info

    @delete("/{name:str}", status_code=204)
    async def delete_cap(self, name: CapName, services: NamedDependency[Services]) -> None:
        """Delete a contact cap that no draft or live experiment names (409 otherwise)."""
        await services.store.delete_contact_cap(name)
        services.audit("delete", "contact_cap", name, 0, "")
        await services.refresh_config()
