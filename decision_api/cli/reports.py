"""``tailor report KEY`` and ``tailor import FILE --experiment KEY``.

Two ways to reach the data:

* **Through the running server** (the default): the commands call
  ``GET /v1/experiments/{key}/report?format=text`` (a key with the ``report`` scope) and
  ``POST /v1/experiments/{key}/imports`` (``admin``) on the server ``tailor serve`` runs — at
  ``http://TAILOR_HOST:TAILOR_PORT`` (the same defaults, 127.0.0.1:8000), or at
  ``TAILOR_API_URL`` — with the key in ``TAILOR_API_KEY`` (none needed while the server has no
  keys). This is the only way with the embedded chdb event log, which only one process — the
  running server — may open. When nothing answers there the command says so and exits 1.
* **Directly** (``--local``): the event log named by ``TAILOR_EVENT_LOG_URL`` (default
  ``chdb://./data/chdb``; the server must be stopped, or the URL must name a ClickHouse server).
  The experiment's definition comes from Redis when ``TAILOR_REDIS_URL`` is set, else from its
  latest entry in the event log's audit table; ``--create`` needs Redis.

Exit codes: 0 done, 1 the request failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from decision_api.cli.progress import upload_chunks
from decision_api.settings import Settings
from experiments.errors import ExperimentError, ExperimentNotFound
from tailor_contract.definitions import Experiment, ExperimentSpec
from tailor_contract.errors import EventLogUnavailable

if TYPE_CHECKING:  # the commands import their heavy modules (scipy, pyarrow) when they run
    import httpx

    from event_log.importer import ImportFormat
    from event_log.store import ClickHouseEventLog

__all__ = [
    "add_report_commands",
    "cmd_import",
    "cmd_report",
    "experiment_from_audit",
    "server_url",
]

LATEST_DEFINITION = """
SELECT detail FROM audit
WHERE entity = 'experiment' AND entity_key = {key:String}
ORDER BY ts DESC, version DESC LIMIT 1
"""
TIMEOUT_S = 120.0
LOCAL_HELP = (
    "read and write the event log (TAILOR_EVENT_LOG_URL) directly instead of asking the "
    "server; with the embedded chdb, only while the server is stopped"
)


def add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tailor report`` and ``tailor import`` on the top-level subcommand parser."""
    report = sub.add_parser(
        "report",
        help="print an experiment's report",
        description=(
            "Print an experiment's report as a table (or JSON), asked from the running server "
            "(TAILOR_API_URL, else http://TAILOR_HOST:TAILOR_PORT, default 127.0.0.1:8000; key "
            "in TAILOR_API_KEY). With --local, read the event log directly instead."
        ),
    )
    report.add_argument("key", help="experiment key")
    report.add_argument("--from", dest="start", help="ISO date/time: units first exposed from")
    report.add_argument("--to", dest="end", help="ISO date/time: data up to (exclusive)")
    report.add_argument("--segment", help="context attribute to break results down by")
    report.add_argument("--metric", action="append", default=[], help="extra outcome type")
    report.add_argument("--level", type=float, help="interval level (default 0.95)")
    report.add_argument("--correction", choices=["holm", "bh"], help="multiple testing")
    report.add_argument("--horizon-units", type=int, help="planned units (always-valid tests)")
    report.add_argument(
        "--off-policy",
        action=argparse.BooleanOptionalAction,
        help="off-policy estimates (default: only for learning policies)",
    )
    report.add_argument("--json", action="store_true", help="print the JSON report")
    report.add_argument("--local", action="store_true", help=LOCAL_HELP)
    report.set_defaults(func=cmd_report)
    imp = sub.add_parser(
        "import",
        help="load logged decisions (CSV, Parquet, JSON lines)",
        description=(
            "Validate a file of logged decisions and outcomes and load it into an experiment, "
            "through the running server (as `tailor report`) or, with --local, directly."
        ),
    )
    imp.add_argument("file", type=Path, help="the file: .csv, .parquet or .jsonl")
    imp.add_argument("--local", action="store_true", help=LOCAL_HELP)
    imp.add_argument("--experiment", required=True, help="experiment key to import into")
    imp.add_argument("--format", choices=["csv", "parquet", "jsonl"], help="default: extension")
    imp.add_argument("--policy", default="imported", help="policy name on the rows")
    imp.add_argument("--create", action="store_true", help="create a missing experiment")
    imp.add_argument("--default-variant", help="with --create: the control variant")
    imp.add_argument("--primary-metric", help="with --create: the primary outcome type")
    imp.add_argument("--placement", help="with --create: the placement (default: the key)")
    imp.set_defaults(func=cmd_import)


def _fail(message: str, code: int = 1) -> int:
    print(f"tailor: {message}", file=sys.stderr)
    return code


def server_url(environ: Mapping[str, str], settings: Settings) -> str:
    """The server the commands ask: ``TAILOR_API_URL``, else where ``tailor serve`` listens
    with the same settings (``TAILOR_HOST``/``TAILOR_PORT``; a wildcard bind means this host)."""
    url = environ.get("TAILOR_API_URL", "").rstrip("/")
    if url:
        return url
    host = settings.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{settings.port}"


def _api(settings: Settings) -> tuple[str, dict[str, str]]:
    url = server_url(os.environ, settings)
    key = os.environ.get("TAILOR_API_KEY", "")
    return url, ({"Authorization": f"Bearer {key}"} if key else {})


def _unreachable(url: str, exc: Exception) -> str:
    return (
        f"no Tailor server answers at {url} ({type(exc).__name__}: {exc}).\n"
        "  Start it with `tailor serve`, set TAILOR_API_URL (or TAILOR_HOST/TAILOR_PORT) to "
        "the server you run, or add --local to read the event log directly while the server "
        "is stopped."
    )


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    lines = [f"HTTP {response.status_code}: {body.get('detail', body)}"]
    lines += [f"  {e['field']}: {e['message']}" for e in body.get("errors", [])]
    if response.status_code in (401, 403):
        request = response.request
        admin = request.method == "POST" and not request.url.path.endswith("/what-if")
        lines.append(
            f"  set TAILOR_API_KEY to a key with the {'admin' if admin else 'report'} scope"
        )
    return "\n".join(lines)


def experiment_from_audit(event_log: ClickHouseEventLog, key: str) -> Experiment:
    """The experiment's latest definition as the audit table recorded it.

    Raises:
        ExperimentNotFound: when the audit table has no entry for it.
    """
    rows = event_log.query(LATEST_DEFINITION, {"key": key})
    if not rows:
        raise ExperimentNotFound(f"no experiment {key!r} in the event log's audit table")
    return msgspec.json.decode(rows[0][0], type=Experiment)


async def _from_redis(settings: Settings, key: str) -> Experiment:
    from decision_api.redis_client import connect
    from experiments.store import ExperimentStore

    redis = connect(settings.redis, decode_responses=True)
    try:
        return await ExperimentStore(redis, settings.redis.key_prefix).get(key)
    finally:
        await redis.aclose()


def _settings() -> Settings | None:
    try:
        return Settings.from_env(os.environ)
    except msgspec.ValidationError as exc:
        print(f"tailor: bad configuration: {exc}", file=sys.stderr)
        return None


def _direct_experiment(settings: Settings, log: ClickHouseEventLog, key: str) -> Experiment:
    if settings.redis.url:
        return asyncio.run(_from_redis(settings, key))
    return experiment_from_audit(log, key)


def _open_log(settings: Settings) -> ClickHouseEventLog:
    from event_log.store import open_event_log

    try:
        log = open_event_log(settings.event_log.url, settings.event_log.cluster)
        log.migrate()
    except EventLogUnavailable as exc:
        raise EventLogUnavailable(
            f"{exc} — if the server is running on an embedded chdb, drop --local to go through it"
        ) from exc
    return log


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report table (or JSON) of one experiment."""
    import httpx

    from experiments.reports.build import build_report
    from experiments.reports.options import ReportOptionsError, report_options
    from experiments.reports.text import render_report_text

    params: dict[str, Any] = {
        k: v
        for k, v in {
            "from": args.start,
            "to": args.end,
            "segment": args.segment,
            "metric": args.metric or None,
            "level": args.level,
            "correction": args.correction,
            "horizon_units": args.horizon_units,
            "off_policy": None if args.off_policy is None else str(args.off_policy).lower(),
        }.items()
        if v is not None
    }
    settings = _settings()
    if settings is None:
        return 2
    if not args.local:
        url, headers = _api(settings)
        params["format"] = "json" if args.json else "text"
        try:
            response = httpx.get(
                f"{url}/v1/experiments/{args.key}/report",
                params=params,
                headers=headers,
                timeout=TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            return _fail(_unreachable(url, exc))
        if response.status_code != 200:
            return _fail(_problem(response))
        sys.stdout.write(response.text if not args.json else response.text + "\n")
        return 0
    try:
        options = report_options(
            start=args.start,
            end=args.end,
            segment=args.segment,
            metrics=args.metric,
            level=args.level,
            correction=args.correction,
            horizon_units=args.horizon_units,
            off_policy=args.off_policy,
        )
    except ReportOptionsError as exc:
        return _fail(f"{exc.field}: {exc}", 2)
    try:
        log = _open_log(settings)
        try:
            report = build_report(log, _direct_experiment(settings, log, args.key), options)
        finally:
            log.close()
    except (EventLogUnavailable, ExperimentError) as exc:
        return _fail(str(exc))
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        sys.stdout.write(render_report_text(report))
    return 0


def _import_via_api(
    args: argparse.Namespace, settings: Settings, fmt: ImportFormat, data: bytes
) -> int:
    import httpx

    url, headers = _api(settings)
    params = {
        k: v
        for k, v in {
            "format": fmt,
            "policy": args.policy,
            "create": "true" if args.create else None,
            "default_variant": args.default_variant,
            "primary_metric": args.primary_metric,
            "placement": args.placement,
        }.items()
        if v is not None
    }
    try:
        response = httpx.post(
            f"{url}/v1/experiments/{args.experiment}/imports",
            params=params,
            content=upload_chunks(data, f"uploading {args.file.name}"),
            headers={
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
            },
            timeout=TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return _fail(_unreachable(url, exc))
    if response.status_code not in (200, 201):
        return _fail(_problem(response))
    print(response.text)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Validate a file of logged decisions and load it into an experiment's event log."""
    from event_log.importer import (
        ImportRejected,
        detect_format,
        draft_experiment,
        import_decisions,
        infer_spec,
        read_rows,
        validate_file,
    )

    try:
        fmt: ImportFormat = args.format or detect_format(args.file)
        data = args.file.read_bytes()
    except (ValueError, OSError) as exc:
        return _fail(str(exc), 2)
    settings = _settings()
    if settings is None:
        return 2
    if not args.local:
        return _import_via_api(args, settings, fmt, data)
    try:
        log = _open_log(settings)
        try:
            try:
                experiment = _direct_experiment(settings, log, args.experiment)
            except ExperimentNotFound:
                if not args.create:
                    raise
                if not settings.redis.url:
                    return _fail("--local --create needs TAILOR_REDIS_URL (or drop --local)", 2)
                rows = read_rows(data, fmt)
                spec = infer_spec(
                    rows,
                    args.experiment,
                    placement=args.placement,
                    default_variant=args.default_variant,
                    primary_metric=args.primary_metric,
                )
                validate_file(draft_experiment(spec), data, fmt)  # a bad file creates nothing
                experiment = asyncio.run(_create(settings, spec))
            summary = import_decisions(log, experiment, data, fmt, policy=args.policy)
        finally:
            log.close()
    except ImportRejected as exc:
        return _fail(str(exc))
    except (EventLogUnavailable, ExperimentError, ValueError) as exc:
        return _fail(str(exc))
    print(msgspec.json.encode(summary).decode())
    return 0


async def _create(settings: Settings, spec: ExperimentSpec) -> Experiment:
    from decision_api.redis_client import connect
    from experiments.store import ExperimentStore

    redis = connect(settings.redis, decode_responses=True)
    try:
        return await ExperimentStore(redis, settings.redis.key_prefix).create(spec, time.time())
    finally:
        await redis.aclose()
