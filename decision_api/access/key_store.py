"""API keys created through the admin API or the CLI, stored hashed in Redis.

Key layout (``{p}`` is ``redis.key_prefix``; both keys carry the hash tag ``{<p>}``, so the
``MULTI`` that changes the hash and the version touches one slot of a Redis Cluster):

========================  =======  ======================================================  ====
key                       type     value                                                   TTL
========================  =======  ======================================================  ====
``{{p}}:keys``            HASH     key id -> JSON ``access.keys.ApiKey``                   none
                                   (``sha256`` digest, scopes, name, own rate limit)
``{{p}}:keys:version``    STRING   incremented by every create and revoke                  none
========================  =======  ======================================================  ====

The secret itself is never stored: it is shown once, in the create response. Revoking deletes
the hash entry. Neither key grows with traffic (one entry per live key). Workers poll
``{{p}}:keys:version`` (one GET) and reload the hash when it moves (:func:`refresh_ring`), so a
revoked key stops working everywhere within one poll interval.

The first key guards the admin API: once any key exists the API stops being open, so a first
key without ``admin`` would leave nobody able to create keys or manage experiments.
:meth:`KeyStore.create` with ``first_needs_admin=True`` refuses such a key (atomically: it
watches the hash, so two concurrent first creates cannot both slip through).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import msgspec
from redis.asyncio import Redis
from redis.exceptions import WatchError

from decision_api.access.keys import SCOPES, ApiKey, KeyRing, digest, key_id_of

SECRET_PREFIX = "tlr_"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ApiKey)


def new_secret() -> str:
    """A fresh high-entropy key secret (256 random bits, URL-safe)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set; raises ValueError naming unknown or missing scopes."""
    wanted = frozenset(scopes)
    unknown = wanted - SCOPES
    if not wanted or unknown:
        raise ValueError(f"unknown scope(s) {sorted(unknown)}; use one or more of {sorted(SCOPES)}")
    return wanted


FIRST_KEY_NEEDS_ADMIN = (
    "the first key must include the admin scope: once a key exists the API requires one, and "
    "without an admin key nobody could create keys or manage experiments any more "
    "(add --scope admin, or create an admin key first)"
)


class FirstKeyNeedsAdmin(ValueError):
    """A first key (no other key exists) was asked for without the ``admin`` scope."""

    def __init__(self) -> None:
        super().__init__(FIRST_KEY_NEEDS_ADMIN)


class KeyStore:
    """Create, list and revoke API keys in Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        shared = "{" + prefix + "}"  # one hash slot: a key and the version move in one MULTI
        self._hash = f"{shared}:keys"
        self._version = f"{shared}:keys:version"

    async def create(
        self,
        scopes: Iterable[str],
        name: str = "",
        *,
        rate_per_s: float | None = None,
        burst: int | None = None,
        first_needs_admin: bool = False,
    ) -> tuple[ApiKey, str]:
        """Store a new key; returns it and its secret (which is not kept anywhere).

        Args:
            first_needs_admin: refuse a key without ``admin`` while no key is stored (pass it
                when no key is configured elsewhere either, e.g. ``TAILOR_AUTH_API_KEYS``).

        Raises:
            ValueError: unknown or missing scopes.
            FirstKeyNeedsAdmin: ``first_needs_admin`` and this would be a first, non-admin key.
        """
        wanted = check_scopes(scopes)
        secret = new_secret()
        key_digest = digest(secret)
        key = ApiKey(
            key_id=key_id_of(key_digest),
            digest=key_digest,
            scopes=wanted,
            name=name,
            created_at=time.time(),
            rate_per_s=rate_per_s,
            burst=burst,
            source="redis",
        )
        guarded = first_needs_admin and "admin" not in wanted
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    if guarded:
                        await pipe.watch(self._hash)
                        if not await pipe.hlen(self._hash):
                            raise FirstKeyNeedsAdmin
                        pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self._hash, key.key_id, _encoder.encode(key))
                    pipe.incr(self._version)
                    await pipe.execute()
                    return key, secret
                except WatchError:
                    continue  # the key set changed meanwhile: look again

    async def list(self) -> list[ApiKey]:
        """Every stored key, oldest first."""
        raw: dict[str, str] = await self._redis.hgetall(self._hash)  # type: ignore[assignment]
        keys = [_decoder.decode(v) for v in raw.values()]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def revoke(self, key_id: str) -> bool:
        """Delete a key; returns False when no stored key has this id."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._hash, key_id)
            pipe.incr(self._version)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def count(self) -> int:
        """How many keys are stored."""
        return int(await self._redis.hlen(self._hash))

    async def version(self) -> int:
        """The key-set version (0 before any change)."""
        raw = await self._redis.get(self._version)
        return int(raw) if raw is not None else 0


async def refresh_ring(store: KeyStore, ring: KeyRing, force: bool = False) -> bool:
    """Reload the ring's stored keys when the key-set version moved; True when it changed."""
    version = await store.version()
    if version == ring.version and not force:
        return False
    ring.replace_stored(await store.list(), version)
    return True
