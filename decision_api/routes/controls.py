"""Admin API for the global kill switch (shared by every worker through Redis)."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from tailor_contract.wire import KillSwitchRequest, KillSwitchState


def _state(services: Services) -> KillSwitchState:
    return KillSwitchState(engaged=services.controls.engaged, forced=services.controls.forced)


class ControlController(Controller):
    """Engage or release the global kill switch: every placement serves its default."""

    path = "/v1/kill-switch"
    tags = ["controls"]
    guards = [require("admin")]

    @get("")
    async def read(self, services: NamedDependency[Services]) -> KillSwitchState:
        """Whether decisions currently serve defaults only."""
        return _state(services)

    @put("", dto=StructBody[KillSwitchRequest], return_dto=None)
    async def switch(
        self, data: JSONBody[KillSwitchRequest], services: NamedDependency[Services]
    ) -> KillSwitchState:
        """Engage or release; applies here at once and on every worker within a poll interval."""
        await services.controls.set_kill_switch(data.engaged)
        services.audit("engage" if data.engaged else "release", "kill_switch", "global", 0, "")
        return _state(services)
