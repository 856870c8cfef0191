"""``tailor keys create|list|revoke``: manage API keys in the servers' Redis directly.

The CLI needs no running server: it writes the same Redis hash the admin API writes (see
:mod:`decision_api.access.key_store`), and every worker picks the change up within a poll interval.
Changes made here are not in the audit table (that lives in the event log, which the server
owns); the admin API records them.

Which Redis: ``TAILOR_REDIS_URL`` when set (the servers use it too), else the private
``redis-server`` that ``tailor serve`` started on its embedded defaults, found through the
state file it writes, ``<TAILOR_DATA_DIR>/redis/state.json`` (``{"url": ...}``).

The first key must include ``admin`` (see
:class:`~decision_api.access.key_store.FirstKeyNeedsAdmin`): the command refuses otherwise and
says why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from redis.exceptions import RedisError

from decision_api.access.key_store import FirstKeyNeedsAdmin, KeyStore
from decision_api.access.keys import SCOPES, ApiKey, parse_bootstrap_keys
from decision_api.redis_client import connect
from decision_api.settings import Settings


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tailor keys ...`` on the top-level subcommand parser."""
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description=(
            "Create, list and revoke API keys in the Redis the servers use: TAILOR_REDIS_URL, "
            "or the private Redis `tailor serve` started under TAILOR_DATA_DIR (default ./data). "
            "The first key must include the admin scope."
        ),
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="create a key and print its secret once",
        description=(
            "Create an API key and print its secret once (only its hash is stored). The "
            "first key must include the admin scope."
        ),
    )
    create.add_argument(
        "--scope", action="append", required=True, choices=sorted(SCOPES), dest="scopes",
        help="a scope the key holds (repeat for several)",
    )  # fmt: skip
    create.add_argument("--name", default="", help="a label, e.g. the site or system using it")
    create.add_argument("--rate", type=float, help="own rate limit, requests per second")
    create.add_argument("--burst", type=int, help="own burst size")
    text = "list key ids, scopes and names (never secrets)"
    actions.add_parser("list", help=text, description=text[0].upper() + text[1:] + ".")
    text = "revoke a key by id; every server stops accepting it within a second"
    revoke = actions.add_parser("revoke", help=text, description=text[0].upper() + text[1:] + ".")
    revoke.add_argument("key_id", help="the key's id (key_...), as `tailor keys list` shows")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """Run one ``tailor keys`` action against the configured Redis."""
    try:
        settings = Settings.from_env(os.environ)
    except msgspec.ValidationError as exc:
        print(f"tailor: bad configuration: {exc}", file=sys.stderr)
        return 2
    url = redis_url(settings)
    if not url:
        state = state_file(settings)
        print(
            f"tailor keys: no Redis to use: TAILOR_REDIS_URL is not set and no `tailor serve` "
            f"is running on {settings.data_dir} ({state} does not exist); start the server, or "
            "set TAILOR_REDIS_URL (and TAILOR_DATA_DIR if the server uses another one)",
            file=sys.stderr,
        )
        return 2
    try:
        configured = parse_bootstrap_keys(settings.auth.api_keys)
    except ValueError as exc:
        print(f"tailor: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, settings, url, first_needs_admin=not configured))
    except FirstKeyNeedsAdmin as exc:
        print(f"tailor keys: refused: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"tailor keys: Redis at {url} failed: {exc}", file=sys.stderr)
        return 1


def state_file(settings: Settings) -> Path:
    """Where ``tailor serve`` records its private Redis: ``<data_dir>/redis/state.json``."""
    return Path(settings.data_dir) / "redis" / "state.json"


def redis_url(settings: Settings) -> str:
    """The Redis the servers use: ``TAILOR_REDIS_URL``, else the running private one, else ""."""
    if settings.redis.url:
        return settings.redis.url
    try:
        state = json.loads(state_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no server running there (or a torn file)
        return ""
    url = state.get("url") if isinstance(state, dict) else None
    return url if isinstance(url, str) else ""


async def _run(
    args: argparse.Namespace, settings: Settings, url: str, *, first_needs_admin: bool
) -> int:
    redis = connect(
        msgspec.structs.replace(settings.redis, url=url), decode_responses=True, socket_timeout=5
    )
    try:
        store = KeyStore(redis, settings.redis.key_prefix)
        if args.action == "create":
            key, secret = await store.create(
                args.scopes,
                args.name,
                rate_per_s=args.rate,
                burst=args.burst,
                first_needs_admin=first_needs_admin,
            )
            print(f"key_id: {key.key_id}\nscopes: {','.join(sorted(key.scopes))}")
            print(f"name: {key.name}\nsecret: {secret}")
            print("(the secret is shown only now; it is stored as a hash)", file=sys.stderr)
        elif args.action == "list":
            for key in await store.list():
                print(_line(key))
        elif not await store.revoke(args.key_id):
            print(f"tailor keys: no stored key {args.key_id}", file=sys.stderr)
            return 1
        return 0
    finally:
        await redis.aclose()


def _line(key: ApiKey) -> str:
    created = datetime.fromtimestamp(key.created_at, UTC).isoformat(timespec="seconds")
    rate = f"  rate={key.rate_per_s}/s" if key.rate_per_s else ""
    return f"{key.key_id}  {','.join(sorted(key.scopes)):<28} {created}  {key.name}{rate}"
