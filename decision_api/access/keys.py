"""API keys and scopes.

Scopes: ``decide`` (safe to embed in a web page: decide, outcomes, browser events), ``ingest``
(features, consent, events, outcomes), ``report`` (read reports), ``admin`` (everything:
experiments, keys, deletion). A key without ``ingest`` or ``admin`` is *public* (see
:attr:`ApiKey.public`): it is assumed to be readable by anyone who loads the page. Keys travel
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Keys are never stored in clear: the ring holds ``sha256(key)`` and compares digests with
``hmac.compare_digest``. Bootstrap keys come from ``TAILOR_AUTH_API_KEYS``
(``key:scope+scope,...``); keys created through the admin API live in Redis (see
:mod:`decision_api.access.key_store`). With no key configured anywhere the API is open (development
mode), which ``create_app`` logs loudly at start-up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Literal

import msgspec

Scope = Literal["decide", "ingest", "report", "admin"]
SCOPES: frozenset[str] = frozenset({"decide", "ingest", "report", "admin"})
KeySource = Literal["env", "redis"]

current_actor: ContextVar[str] = ContextVar("tailor_actor", default="anonymous")
"""The key id of the request being served (for audit entries)."""


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A known key: its id (safe to show and log), digest, scopes and optional own rate limit.

    ``rate_per_s``/``burst`` override ``auth.rate_limit_per_s``/``auth.rate_limit_burst`` for
    this key; ``source`` says whether it came from the environment or from Redis.
    """

    key_id: str
    digest: str
    scopes: frozenset[str]
    name: str = ""
    revoked: bool = False
    created_at: float = 0.0
    rate_per_s: float | None = None
    burst: int | None = None
    source: KeySource = "env"

    def allows(self, scope: str) -> bool:
        """Whether this key may call an endpoint that needs ``scope``."""
        return not self.revoked and (scope in self.scopes or "admin" in self.scopes)

    @property
    def public(self) -> bool:
        """Whether the key may be embedded in a web page: it holds neither ``ingest`` nor
        ``admin``. A public key sends only browser events (see ``BROWSER_EVENT_TYPES`` in
        :mod:`decision_api.routes.units`) and is never told why a unit got a default variant
        (a stored opt-out, a frequency cap, profile targeting are stored data about the unit)."""
        return not self.allows("ingest")

    def allows_any(self, scopes: Iterable[str]) -> bool:
        """Whether this key holds at least one of ``scopes`` (or ``admin``)."""
        return any(self.allows(scope) for scope in scopes)


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_digest: str) -> str:
    """A short public id derived from a key's digest."""
    return "key_" + key_digest[:12]


def presented_key(authorization: str | bytes | None, x_api_key: str | bytes | None) -> str | None:
    """The API key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``.

    The one parser of request keys (the routes' guards and the decide front call it); raw
    header bytes are read as Latin-1, as ASGI servers deliver them.
    """
    if authorization:
        text = (
            authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
        )
        if text[:7].lower() == "bearer ":
            return text[7:].strip()
    if x_api_key is None:
        return None
    return x_api_key.decode("latin-1") if isinstance(x_api_key, bytes) else x_api_key


def parse_bootstrap_keys(spec: str) -> list[ApiKey]:
    """Parse ``key:scope+scope,key2:scope`` into keys; raises ValueError naming the bad entry."""
    keys = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        secret, sep, scope_text = entry.partition(":")
        if not sep or not secret:
            raise ValueError(f"TAILOR_AUTH_API_KEYS: entry must be key:scope+scope, got {entry!r}")
        scopes = frozenset(s.strip() for s in scope_text.split("+") if s.strip())
        unknown = scopes - SCOPES
        if not scopes or unknown:
            raise ValueError(
                f"TAILOR_AUTH_API_KEYS: unknown scope(s) {sorted(unknown)} for key "
                f"{key_id_of(digest(secret))}; use {sorted(SCOPES)}"
            )
        d = digest(secret)
        keys.append(ApiKey(key_id=key_id_of(d), digest=d, scopes=scopes, name="bootstrap"))
    return keys


class KeyRing:
    """The keys a worker accepts: bootstrap keys plus the ones loaded from Redis."""

    def __init__(self, bootstrap: Iterable[ApiKey]) -> None:
        self._bootstrap = {k.digest: k for k in bootstrap}
        self._by_digest = dict(self._bootstrap)
        self.stored_count = 0
        self.version = -1

    @property
    def loaded(self) -> bool:
        """Whether the Redis-stored keys have been read at least once."""
        return self.version >= 0

    @property
    def open(self) -> bool:
        """True when no key exists at all (development mode: every request allowed).

        Until the stored keys have been read (Redis unreachable at start-up) the ring is not
        open: stored keys might exist, so requests are refused rather than let through.
        """
        return self.loaded and not self._by_digest

    @property
    def ready(self) -> bool:
        """Whether keys can be checked: stored keys loaded, or bootstrap keys configured."""
        return self.loaded or bool(self._bootstrap)

    def replace_stored(self, keys: Iterable[ApiKey], version: int = -1) -> None:
        """Swap in the current set of Redis-stored keys (revoked ones are left out)."""
        merged = dict(self._bootstrap)
        count = 0
        for k in keys:
            if k.revoked:
                continue
            merged.setdefault(k.digest, k)
            count += 1
        self._by_digest = merged
        self.stored_count = count
        self.version = version

    def bootstrap_keys(self) -> list[ApiKey]:
        """The keys configured through ``TAILOR_AUTH_API_KEYS``."""
        return list(self._bootstrap.values())

    def lookup(self, presented: str) -> ApiKey | None:
        """The key matching a presented secret, compared in constant time, or None."""
        d = digest(presented)
        found = self._by_digest.get(d)
        if found is None or not hmac.compare_digest(found.digest, d):
            return None
        return found
