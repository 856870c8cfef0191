"""The ``tailor`` command: ``serve``, ``learn``, ``keys``, ``report``, ``import`` (and ``demo``,
registered by the demo package through the ``tailor.commands`` entry point).

Each subcommand has a user-facing ``description`` (``tailor <command> --help``); docstrings here
are for developers. ``tailor --version`` prints the installed ``tailor-decision-api`` version.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import msgspec

from decision_api.cli.campaign import add_campaign_commands
from decision_api.cli.keys import add_key_commands
from decision_api.cli.models import add_model_commands
from decision_api.cli.reports import add_report_commands
from decision_api.cli.supervise import SupervisedProcess, learner_command
from decision_api.cli.what_if import add_off_policy_command, add_what_if_command
from decision_api.settings import Settings

Command = Callable[[argparse.Namespace], int]


def _settings_or_exit() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except msgspec.ValidationError as exc:
        print(f"tailor: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def ensure_redis(settings: Settings) -> tuple[Settings, object | None]:
    """With no ``TAILOR_REDIS_URL``, start the private redis-server of ``<data_dir>/redis``.

    One per data directory: a server an earlier (killed) run left behind is shut down first,
    and a directory another live ``tailor serve`` owns is refused (see
    :class:`decision_api.redis_server.PrivateRedisServer`). Returns the settings pointing at it
    and the server handle (to stop on exit).

    Raises:
        RedisDirectoryInUse: another live process owns the data directory's Redis.
    """
    if settings.redis.url:
        return settings, None
    import structlog

    from decision_api.redis_server import PrivateRedisServer

    server = PrivateRedisServer(Path(settings.data_dir) / "redis").start()
    os.environ["TAILOR_REDIS_URL"] = server.url
    structlog.get_logger().info(f"started a private redis-server at {server.url}", url=server.url)
    redis = msgspec.structs.replace(settings.redis, url=server.url)
    return msgspec.structs.replace(settings, redis=redis), server


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API with granian (uvloop); embedded Redis and chdb unless configured."""
    import structlog
    from granian import Granian

    from decision_api.logging import configure_logging, granian_log_config

    settings = _settings_or_exit()
    configure_logging(settings.log_format, settings.log_level)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    from decision_api.redis_server import RedisDirectoryInUse

    try:
        settings, redis_server = ensure_redis(settings)
    except RedisDirectoryInUse as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        return 2
    metrics_dir = None
    if workers > 1:
        metrics_dir = share_metrics(settings.data_dir)
    owner = None
    if workers > 1 and settings.event_log.url.startswith("chdb:"):
        # One process may hold chdb: an owner process does, and the workers reach it through
        # Redis (event_log.relay).
        owner = start_event_log_owner(settings.event_log.url)
        os.environ["TAILOR_EVENT_LOG_URL"] = "relay://"
    learner = start_learner(settings)
    url = f"http://{host}:{port}"
    structlog.get_logger().info(f"serving on {url}", url=url, workers=workers)
    try:
        Granian(
            "decision_api.asgi:build",
            factory=True,
            address=host,
            port=port,
            interface="asgi",  # type: ignore[arg-type]
            workers=workers,
            loop="uvloop",  # type: ignore[arg-type]
            log_access=False,
            log_dictconfig=granian_log_config(settings.log_format),
            backlog=2048,
            # A worker that dies (OOM kill, a crash in native code) is replaced; the event-log
            # owner and the private Redis belong to this process and live on. A worker dying
            # again within ~5 s of its respawn stops the server (granian's crash-loop guard).
            respawn_failed_workers=True,
            # A worker that ignores SIGTERM (one signalled before it could handle it) is killed
            # rather than waited for forever; a normal drain and flush takes far less.
            workers_kill_timeout=30,
        ).serve()
    finally:
        if learner is not None:
            learner.stop()  # publishes its last snapshots (the workers have flushed their joins)
        if owner is not None:
            owner.terminate()  # the owner drains what the workers flushed on their way out
            try:
                owner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                owner.kill()
        if redis_server is not None:
            redis_server.stop()  # type: ignore[attr-defined]
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def share_metrics(data_dir: str) -> Path:
    """Point every process started next at one fresh Prometheus multiprocess directory.

    Set before the workers (and the learner) start and before they import prometheus_client,
    which reads ``PROMETHEUS_MULTIPROC_DIR`` once, at import: each process then records into
    its own files there, and any worker's ``/metrics`` merges them all
    (:mod:`decision_api.metrics`).
    """
    path = fresh_multiprocess_dir(data_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def fresh_multiprocess_dir(data_dir: str) -> Path:
    """A new, empty ``<data_dir>/metrics/<pid>`` for one ``tailor serve``'s processes.

    Directories earlier runs left behind (their pid gone) are removed: their counts belong to
    processes that no longer serve, and would otherwise be added to this run's.
    """
    root = Path(data_dir) / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and not (old.name.isdigit() and _pid_alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def start_event_log_owner(event_log_url: str) -> subprocess.Popen[bytes]:
    """Start ``tailor event-log-owner`` for this chdb directory (workers see it via /readyz)."""
    from decision_api.redis_server import die_with_parent

    env = {**os.environ, "TAILOR_EVENT_LOG_URL": event_log_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "decision_api.cli.main", "event-log-owner"],
        env=env,
        preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads yet): SIGTERM if serve dies
    )
    return proc


def start_learner(settings: Settings) -> SupervisedProcess | None:
    """Run the learner as its own process, restarted if it dies, unless configured otherwise.

    With ``TAILOR_LEARNER_IN_PROCESS`` unset, the API workers started next do not learn (it is set
    to ``false`` for them) and a supervised ``tailor learn`` child does; ``true`` keeps the
    learner inside the workers, ``false`` means a ``tailor learn`` runs elsewhere.
    """
    if settings.learner.in_process is not None:
        return None
    os.environ["TAILOR_LEARNER_IN_PROCESS"] = "false"
    return SupervisedProcess("learner", learner_command(f"serve-{os.getpid()}"), os.environ)


def cmd_event_log_owner(args: argparse.Namespace) -> int:
    """Hold the embedded event log for several API workers (started by ``tailor serve``)."""
    import signal
    import threading

    from decision_api.logging import configure_logging
    from event_log.relay import run_owner

    settings = _settings_or_exit()
    if not settings.redis.url:
        print("tailor event-log-owner: TAILOR_REDIS_URL is required", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from decision_api.redis_client import connect_sync

    run_owner(
        settings.event_log.url,
        settings.redis.url,
        settings.redis.key_prefix,
        stop,
        functools.partial(connect_sync, settings.redis),
    )
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    """Run the learner (and reward sweeper) as its own process until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from bandits.learner import Shard
    from decision_api.learning.runtime import run_learner_process
    from decision_api.logging import configure_logging

    try:
        shard = Shard.parse(args.shard) if args.shard else Shard()
    except ValueError as exc:
        print(f"tailor learn: --shard: {exc}", file=sys.stderr)
        return 2
    settings = _settings_or_exit()
    if not settings.redis.url:
        print("tailor learn: set TAILOR_REDIS_URL to the Redis the API uses", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if settings.learner.nice:
        os.nice(settings.learner.nice)  # serving first: training takes the CPU left over

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_learner_process(
            settings.redis.url,
            settings.redis.key_prefix,
            snapshot_interval_s=settings.learner.snapshot_interval_s,
            sweep_interval_s=settings.learner.reward_sweep_interval_s,
            stop=stop,
            holder=args.name or f"learn-{os.getpid()}",
            shard=shard,
            cluster=settings.redis.cluster,
        )

    asyncio.run(main())
    return 0


COMMANDS_GROUP = "tailor.commands"
"""Entry-point group of commands that live above the server (``tailor demo``): each names a
function that adds its sub-parser, so the server never imports them."""


DESCRIPTION = """\
Tailor: an experimentation and personalization decision API.

Run `tailor serve` to start the API (a private Redis and the embedded chdb event log under
./data unless configured), then `tailor keys create --scope admin` for the first key, and
`tailor report <experiment>` to read a report. Every setting is a TAILOR_* environment
variable (docs/configuration.md)."""


def installed_version() -> str:
    """The version of the installed ``tailor-decision-api`` distribution."""
    try:
        return version("tailor-decision-api")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tailor",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"tailor-decision-api {installed_version()}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    serve = sub.add_parser(
        "serve",
        help="run the decision API",
        description=(
            "Run the decision API with granian. Without TAILOR_REDIS_URL it starts a private "
            "redis-server under TAILOR_DATA_DIR (default ./data); without TAILOR_EVENT_LOG_URL "
            "the event log is the embedded chdb there. Stop it with Ctrl-C (or SIGTERM)."
        ),
    )
    serve.add_argument("--host", help="bind address (default TAILOR_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default TAILOR_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default TAILOR_WORKERS or 1)")
    serve.set_defaults(func=cmd_serve)
    learn = sub.add_parser(
        "learn",
        help="run the online learner on its own",
        description=(
            "Run the online learner and reward sweeper as their own process, against the Redis "
            "in TAILOR_REDIS_URL. Set TAILOR_LEARNER_IN_PROCESS=false on the API servers."
        ),
    )
    learn.add_argument("--name", help="lease holder name (default learn-<pid>)")
    learn.add_argument(
        "--shard",
        metavar="I/N",
        help=(
            "learn only shard I of N (0-based): the experiments whose crc32(key) mod N == I, "
            "with a consumer group and a lease of its own; run one `tailor learn --shard i/N` "
            "for every i (default: one learner for every experiment)"
        ),
    )
    learn.set_defaults(func=cmd_learn)
    owner = sub.add_parser(
        "event-log-owner",
        help="hold the embedded event log for several workers (started by tailor serve)",
        description=(
            "Hold the embedded chdb event log for several API workers, which reach it through "
            "Redis. `tailor serve --workers N` starts it; you do not need to run it yourself."
        ),
    )
    owner.set_defaults(func=cmd_event_log_owner)
    add_key_commands(sub)
    add_report_commands(sub)
    add_campaign_commands(sub)
    add_model_commands(sub)
    add_what_if_command(sub)
    add_off_policy_command(sub)
    # By name: an environment that still holds an older install lists an entry point twice.
    for entry in {e.name: e for e in entry_points(group=COMMANDS_GROUP)}.values():
        add_command: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        add_command = entry.load()
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tailor`` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
