"""Admin API for API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from decision_api.access.key_store import FirstKeyNeedsAdmin, refresh_ring
from decision_api.access.keys import ApiKey
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from tailor_contract.errors import Conflict, InvalidInput, NotFound
from tailor_contract.wire import KEY_ID_PATTERN, KeyCreate, KeyCreated, KeyInfo, KeyList

# Path parameters are validated by Litestar's Parameter (msgspec Meta applies to bodies).
PathKeyId = Annotated[str, Parameter(pattern=KEY_ID_PATTERN)]


def key_info(key: ApiKey) -> KeyInfo:
    """The listable view of a key (never its secret or digest)."""
    return KeyInfo(
        key_id=key.key_id,
        scopes=sorted(key.scopes),
        source=key.source,
        name=key.name,
        created_at=key.created_at or None,
        rate_per_s=key.rate_per_s,
        burst=key.burst,
    )


class KeyController(Controller):
    """Create, list and revoke API keys (admin scope)."""

    path = "/v1/keys"
    tags = ["keys"]
    guards = [require("admin")]

    @post("", status_code=201, dto=StructBody[KeyCreate], return_dto=None)
    async def create(
        self, data: JSONBody[KeyCreate], services: NamedDependency[Services]
    ) -> KeyCreated:
        """Create a key; the response carries its secret, which is not stored anywhere.

        The first key (none stored, none configured) must include ``admin``: a 422 naming
        ``$.scopes`` otherwise, since the API would stop being open and nobody could manage it.
        """
        try:
            key, secret = await services.key_store.create(
                data.scopes,
                data.name,
                rate_per_s=data.rate_per_s,
                burst=data.burst,
                first_needs_admin=not services.keys.bootstrap_keys(),
            )
        except FirstKeyNeedsAdmin as exc:
            raise InvalidInput(str(exc), field="$.scopes") from exc
        await refresh_ring(services.key_store, services.keys)
        info = key_info(key)
        services.audit("create", "api_key", key.key_id, 0, msgspec.json.encode(info).decode())
        return KeyCreated(**msgspec.structs.asdict(info), secret=secret)

    @get("")
    async def list_keys(self, services: NamedDependency[Services]) -> KeyList:
        """Every key: configured ones (``source: env``) and created ones; ids only."""
        stored = await services.key_store.list()
        keys = services.keys.bootstrap_keys() + stored
        return KeyList(keys=[key_info(k) for k in keys])

    @delete("/{key_id:str}", status_code=204)
    async def revoke(self, key_id: PathKeyId, services: NamedDependency[Services]) -> None:
        """Revoke a created key at once on this worker, within a poll interval everywhere."""
        if any(k.key_id == key_id for k in services.keys.bootstrap_keys()):
            raise Conflict(
                f"{key_id} is configured in TAILOR_AUTH_API_KEYS; remove it there",
                field="key_id",
            )
        if not await services.key_store.revoke(key_id):
            raise NotFound(f"no API key {key_id}", field="key_id")
        await refresh_ring(services.key_store, services.keys)
        services.audit("revoke", "api_key", key_id, 0, "")
