"""Admin API for experiment definitions and their lifecycle."""

from __future__ import annotations

import time

from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from bandits.vw import check_vw_config
from decision_api.privacy.sensitive import check_experiment, denylist
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from experiments.errors import InvalidDefinition
from tailor_contract.definitions import Experiment, ExperimentSpec
from tailor_contract.policies import VWCBConfig, VWSlatesConfig
from tailor_contract.wire import ExperimentList


def _check(spec: ExperimentSpec, services: NamedDependency[Services]) -> None:
    """Refuse sensitive attributes in targeting, variant features and policy options, and VW
    options that VW itself rejects."""
    check_experiment(spec, denylist(services.settings.decisions.sensitive_features))
    if isinstance(spec.policy, VWCBConfig | VWSlatesConfig):
        try:
            check_vw_config(spec.policy)
        except ValueError as exc:
            raise InvalidDefinition(str(exc), field="$.policy.extra_args") from exc


async def _check_contact_cap(spec: ExperimentSpec, services: Services) -> None:
    """Refuse a ``contact_cap`` that names no defined cap (422 naming the field)."""
    if spec.contact_cap is None:
        return
    if spec.contact_cap not in await services.store.contact_caps():
        raise InvalidDefinition(
            f"no contact cap {spec.contact_cap!r}; define it with "
            f"PUT /v1/contact-caps/{spec.contact_cap}",
            field="$.contact_cap",
        )


class ExperimentController(Controller):
    """Create, read, update (new version), start, pause and stop experiments."""

    path = "/v1/experiments"
    tags = ["experiments"]
    guards = [require("admin")]

    @post("", status_code=201, dto=StructBody[ExperimentSpec], return_dto=None)
    async def create(
        self, data: JSONBody[ExperimentSpec], services: NamedDependency[Services]
    ) -> Experiment:
        """Create a draft experiment (version 1)."""
        _check(data, services)
        await _check_contact_cap(data, services)
        created = await services.store.create(data, time.time())
        await services.refresh_config()
        return created

    @get("")
    async def list_experiments(self, services: NamedDependency[Services]) -> ExperimentList:
        """Every experiment, any status."""
        return ExperimentList(experiments=await services.store.list())

    @get("/{key:str}")
    async def read(self, key: FromPath[str], services: NamedDependency[Services]) -> Experiment:
        """The current definition of one experiment."""
        return await services.store.get(key)

    @get("/{key:str}/history")
    async def history(
        self, key: FromPath[str], services: NamedDependency[Services]
    ) -> ExperimentList:
        """Every version of one experiment, oldest first."""
        return ExperimentList(experiments=await services.store.history(key))

    @put("/{key:str}", dto=StructBody[ExperimentSpec], return_dto=None)
    async def update(
        self,
        key: FromPath[str],
        data: JSONBody[ExperimentSpec],
        services: NamedDependency[Services],
    ) -> Experiment:
        """Replace the definition; the version goes up by one."""
        _check(data, services)
        await _check_contact_cap(data, services)
        updated = await services.store.update(key, data, time.time())
        await services.refresh_config()
        return updated

    @post("/{key:str}/start", status_code=200)
    async def start(self, key: FromPath[str], services: NamedDependency[Services]) -> Experiment:
        """Start (or resume) an experiment."""
        changed = await services.store.transition(key, "start", time.time())
        await services.refresh_config()
        return changed

    @post("/{key:str}/pause", status_code=200)
    async def pause(self, key: FromPath[str], services: NamedDependency[Services]) -> Experiment:
        """Pause: everyone gets the default variant until it is started again."""
        changed = await services.store.transition(key, "pause", time.time())
        await services.refresh_config()
        return changed

    @post("/{key:str}/stop", status_code=200)
    async def stop(self, key: FromPath[str], services: NamedDependency[Services]) -> Experiment:
        """Stop for good: the placement falls back to other experiments or its default."""
        changed = await services.store.transition(key, "stop", time.time())
        await services.refresh_config()
        return changed
