"""``GET /v1/definitions``: live ``fixed`` experiments for the SDK's local evaluator.

Only what assignment reads leaves the server (no hypothesis, metrics or reward rules); a
``decide`` key may read it, since ``POST /v1/decide`` hands out the same payloads anyway. The
answer carries an ``ETag`` built from the config version, the kill switch and the global
holdout, so a polling SDK gets ``304 Not Modified`` until something changes.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from decision_api.routes.guards import require
from decision_api.services import Services
from tailor_contract.assignment import HASH_VERSION
from tailor_contract.definitions import Experiment
from tailor_contract.policies import FixedConfig
from tailor_contract.wire import Definition, Definitions, DefinitionVariant


def locally_evaluable(experiment: Experiment) -> bool:
    """Whether an SDK can assign this experiment without the server's state.

    Learning policies need the model, send-time experiments the bulk path, frequency and
    contact caps the unit's exposure counters in Redis, and per-variant ``eligible``
    conditions the unit's profile: those placements stay remote.
    """
    return (
        experiment.kind == "content"
        and isinstance(experiment.policy, FixedConfig)
        and experiment.frequency_cap is None
        and experiment.contact_cap is None
        and all(v.eligible is None for v in experiment.variants)
    )


def definition_of(experiment: Experiment) -> Definition:
    """The assignment-relevant part of an experiment."""
    return Definition(
        key=experiment.key,
        placement=experiment.placement,
        salt=experiment.hash_salt,
        variants=[
            DefinitionVariant(key=v.key, weight=v.weight, payload=v.payload)
            for v in experiment.variants
        ],
        default_variant=experiment.default_variant,
        status=str(experiment.status),
        version=experiment.version,
        priority=experiment.priority,
        holdout=experiment.holdout,
        layer=experiment.layer,
        layer_slice=experiment.layer_slice,
        targeting=experiment.targeting,
    )


def current_definitions(services: Services) -> Definitions:
    """The worker's live view, split into local definitions and remote placements."""
    local: list[Definition] = []
    remote: set[str] = set()
    for experiment in services.cache.experiments():
        if locally_evaluable(experiment):
            local.append(definition_of(experiment))
        else:
            remote.add(experiment.placement)
    local.sort(key=lambda d: (d.placement, -d.priority, d.key))
    return Definitions(
        version=services.cache.version,
        hash_version=HASH_VERSION,
        global_holdout=services.engine.global_holdout,
        kill_switch=services.engine.kill_switch,
        experiments=[d for d in local if d.placement not in remote],
        remote_placements=sorted(remote),
    )


def definitions_etag(services: Services) -> str:
    """A strong validator for the current definitions."""
    engine = services.engine
    return (
        f'"{services.cache.version}-{int(engine.kill_switch)}-{engine.global_holdout!r}'
        f'-{HASH_VERSION}"'
    )


@get("/v1/definitions", guards=[require("decide")], tags=["sdk"])
async def definitions(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[Definitions | bytes]:
    """Live ``fixed`` experiments for local evaluation; ``304`` when ``If-None-Match`` matches."""
    etag = definitions_etag(services)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(current_definitions(services), headers=headers)
