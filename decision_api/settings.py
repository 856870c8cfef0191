"""Typed settings, read once from ``TAILOR_*`` environment variables.

Every variable, its default and an example are listed in ``docs/configuration.md``. Tests build
``Settings(...)`` directly; only the CLI and ``asgi.py`` call :meth:`Settings.from_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PREFIX = "TAILOR_"
# Read by clients (SDK, CLI, load tests), not by the server.
CLIENT_VARIABLES = frozenset({"TAILOR_API_URL", "TAILOR_API_KEY"})

LogFormat = Literal["auto", "json", "console"]
DEFAULT_DATA_DIR = "./data"


class RedisSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the hot state lives.

    ``url`` empty means "embedded": ``tailor serve`` starts a private ``redis-server`` under
    ``data_dir`` and points the app at it. ``cluster``: ``url`` names any node of a Redis
    Cluster, reached through redis-py's cluster client (see :mod:`decision_api.redis_client`).
    """

    url: str = ""
    cluster: bool = False
    key_prefix: Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.:-]{1,32}\Z")] = "tailor"
    socket_timeout_s: Annotated[float, Meta(gt=0, le=30)] = 0.5
    lean_client: bool = True
    """A single server's hot commands over one pipelined connection of the worker's own
    (:mod:`decision_api.lean_redis`); ``False``: redis-py's pooled client for every command."""
    profile_ttl_s: Annotated[int, Meta(ge=60)] = 400 * 86400

    def __post_init__(self) -> None:
        """A cluster is found through a node's address: it needs a URL, not the embedded Redis."""
        if self.cluster and not self.url:
            raise ValueError("redis.cluster needs redis.url naming a node of the cluster")


class EventLogSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The durable event log: ``chdb:///dir`` (embedded) or ``http(s)://user:pass@host:port/db``.

    ``max_event_age_s`` / ``max_event_lead_s`` bound the ``ts`` a client may give an outcome or
    exposure: at most 30 days in the past and 1 hour in the future by default (clock skew, an
    SDK buffering offline). Older or later times are a 422 naming the field: the tables are
    partitioned by month, and a batch over too many months would fail. Behavioural events
    (``/v1/events``, which feed 90-day features) may be as old as ``redis.profile_ttl_s``.
    """

    url: str = "chdb://./data/chdb"
    batch_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 20_000
    flush_interval_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    max_buffered: Annotated[int, Meta(ge=1000)] = 2_000_000
    spool_dir: str = "./data/spool"
    spool_max_bytes: Annotated[int, Meta(ge=1 << 20)] = 1 << 30
    spool_fsync: Literal["always", "batch", "never"] = "batch"
    max_event_age_s: Annotated[int, Meta(ge=60, le=366 * 86400)] = 30 * 86400
    max_event_lead_s: Annotated[int, Meta(ge=0, le=31 * 86400)] = 3600
    cluster: Annotated[str, Meta(pattern=r"\A([A-Za-z_][A-Za-z0-9_]{0,127})?\Z")] = ""
    """``TAILOR_EVENT_LOG_CLUSTER``: the ClickHouse cluster (``remote_servers``) the tables are
    replicated and sharded over (``ON CLUSTER``, ``Distributed``); empty, a single node."""

    def __post_init__(self) -> None:
        """A cluster is a set of ClickHouse servers: it needs a server URL, not chdb or a relay."""
        if self.cluster and not self.url.startswith(("http://", "https://")):
            raise ValueError("event_log.cluster needs an http(s):// event_log.url (a server)")


class AuthSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bootstrap API keys (``key:scope+scope,...``); more keys are created through the admin API.

    With no key configured anywhere the API is open (development mode) and says so at start-up.
    """

    api_keys: str = ""
    rate_limit_per_s: Annotated[float, Meta(gt=0)] = 5000.0
    rate_limit_burst: Annotated[int, Meta(ge=1)] = 10000
    cors_origins: str = ""


class DecisionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and behaviour of the decision path."""

    max_placements: Annotated[int, Meta(ge=1, le=100)] = 20
    max_batch_recipients: Annotated[int, Meta(ge=1, le=1_000_000)] = 50_000
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 32 << 20
    config_poll_interval_s: Annotated[float, Meta(gt=0, le=10)] = 0.25
    global_holdout: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    kill_switch: bool = False
    # How often one worker reads the reports of running experiments with auto_pause_on_harm.
    guardrail_check_interval_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    sensitive_features: str = "ethnicity,religion,health,sexual_orientation,political_opinion"


class LearnerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Online learning: where the learner runs, and the snapshot cadence.

    ``in_process``: ``None`` (unset, the default) lets the launcher choose — ``tailor serve``
    runs the learner as its own supervised process (``tailor learn``) and its API workers spend
    no CPU on training, while an app built directly with ``create_app`` (tests, embedding in one
    process) runs it in-process; ``True`` runs it inside the API worker(s) under a lease;
    ``False`` runs none here (a ``tailor learn`` process elsewhere learns).
    """

    in_process: bool | None = None
    snapshot_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0
    model_poll_interval_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    reward_sweep_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    nice: Annotated[int, Meta(ge=0, le=19)] = 10
    """Added to a ``tailor learn`` process's niceness: on a machine it shares with API workers,
    the kernel gives them the CPU first, and training takes what they leave."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of Tailor's configuration; nested per concern."""

    redis: RedisSettings = RedisSettings()
    event_log: EventLogSettings = EventLogSettings()
    auth: AuthSettings = AuthSettings()
    decisions: DecisionSettings = DecisionSettings()
    learner: LearnerSettings = LearnerSettings()
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
    log_format: LogFormat = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: str = DEFAULT_DATA_DIR
    pseudonym_secret: str = "change-me"
    worker_id: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``TAILOR_*`` variables.

        ``TAILOR_REDIS_URL`` maps to ``redis.url``; ``TAILOR_EVENT_LOG_BATCH_SIZE`` to
        ``event_log.batch_size``: the first word after the prefix names the nested section when
        one exists. Unknown variables and badly typed values raise ``msgspec.ValidationError``
        naming the setting's path (``$.learner.in_process`` for ``TAILOR_LEARNER_IN_PROCESS``).
        The chdb directory and the spool default to ``<TAILOR_DATA_DIR>/chdb`` and ``/spool``.
        """
        sections = {name for name, field in _struct_fields(cls).items() if field}
        raw: dict[str, Any] = {}
        for name, value in environ.items():
            if not name.startswith(PREFIX) or name in CLIENT_VARIABLES:
                continue
            key = name[len(PREFIX) :].lower()
            section = next((s for s in sections if key.startswith(s + "_")), None)
            if section is None:
                raw[key] = value
            else:
                raw.setdefault(section, {})[key[len(section) + 1 :]] = value
        data_dir = str(raw.get("data_dir", DEFAULT_DATA_DIR)).rstrip("/") or "."
        section = raw.setdefault("event_log", {})
        section.setdefault("url", f"chdb://{data_dir}/chdb")
        section.setdefault("spool_dir", f"{data_dir}/spool")
        return msgspec.convert(raw, cls, strict=False)


def _struct_fields(cls: type[msgspec.Struct]) -> dict[str, bool]:
    """Map field name to whether the field is itself a nested Struct section."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: isinstance(f.type, msgspec.inspect.StructType) for f in info.fields}
