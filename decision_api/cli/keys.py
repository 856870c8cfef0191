"""``tailor keys create|list|revoke``: manage API keys in Redis directly (``TAILOR_REDIS_URL``).

The CLI needs no running server: it writes the same Redis hash the admin API writes (see
:mod:`decision_api.access.key_store`), and every worker picks the change up within a poll interval.
Changes made here are not in the audit table (that lives in the event log, which the server
owns); the admin API records them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from decision_api.access.key_store import KeyStore
from decision_api.access.keys import SCOPES, ApiKey
from decision_api.settings import Settings


def add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tailor keys ...`` on the top-level subcommand parser."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys (in TAILOR_REDIS_URL)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print its secret once")
    create.add_argument(
        "--scope", action="append", required=True, choices=sorted(SCOPES), dest="scopes",
        help="a scope the key holds (repeat for several)",
    )  # fmt: skip
    create.add_argument("--name", default="", help="a label, e.g. the site or system using it")
    create.add_argument("--rate", type=float, help="own rate limit, requests per second")
    create.add_argument("--burst", type=int, help="own burst size")
    actions.add_parser("list", help="list key ids, scopes and names (never secrets)")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """Run one ``tailor keys`` action against the configured Redis."""
    try:
        settings = Settings.from_env(os.environ)
    except msgspec.ValidationError as exc:
        print(f"tailor: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not settings.redis.url:
        print("tailor keys: set TAILOR_REDIS_URL to the Redis the servers use", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, settings))
    except RedisError as exc:
        print(f"tailor keys: Redis at {settings.redis.url} failed: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    redis = Redis.from_url(settings.redis.url, decode_responses=True, socket_timeout=5)
    try:
        store = KeyStore(redis, settings.redis.key_prefix)
        if args.action == "create":
            key, secret = await store.create(
                args.scopes, args.name, rate_per_s=args.rate, burst=args.burst
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
