"""Lua script calls on the hot path, without redis-py's per-call type checks.

``AsyncScript.__call__`` asks whether its client is a ``Pipeline`` and then a
``ClusterPipeline`` on every call; both are checked against protocol-derived classes, which cost
more than packing the command (about 3 and 5 microseconds, a few percent of a worker's samples
under load, where every decision reads its profile through a script). :func:`run_script` sends
the same ``EVALSHA`` to the script's own client (a single server or a cluster client, which
routes it by its keys) and loads the script once when the server does not know it, as redis-py
does. Pipelines keep using redis-py's script objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["run_script"]


async def run_script(script: AsyncScript, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
    """``script(keys=keys, args=args)`` on its registered client (see the module doc)."""
    client = script.registered_client
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        script.sha = await client.script_load(script.script)
        return await client.evalsha(script.sha, len(keys), *keys, *args)
