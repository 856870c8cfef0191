"""Experiment reports over HTTP: JSON (or text) for programs, an HTML page for people.

``GET /v1/experiments/{key}/report`` (scope ``report``) returns the report JSON
(:class:`experiments.reports.results.ExperimentReport`); ``?format=text`` returns the table
``tailor report`` prints. Query parameters, all optional: ``from`` and ``to`` (ISO date or
date-time, UTC; ``to`` exclusive, a bare date includes that day), ``segment`` (a context
attribute captured at exposure), ``metric`` (extra outcome types, repeatable), ``level``,
``correction`` (``holm`` | ``bh``), ``horizon_units``, ``window_s``, ``pre_period_s``,
``off_policy`` (``true``/``false``; default: only for learning policies), ``mde`` and ``power``
(what the report's ``plan`` section plans for: +10% relative at 80% by default),
``cap_percentile`` (in [0.5, 1): winsorise each metric's per-unit value at that percentile of
its positive values), ``target`` (repeatable, a target policy as JSON, e.g.
``{"kind": "current_greedy"}``: its off-policy estimate is added to the off-policy section, as
``POST /v1/experiments/{key}/off-policy`` computes it; implies ``off_policy=true``).

``GET /v1/experiments/{key}/plan?mde=0.05&power=0.9`` (scope ``report``) returns just that
section (:class:`experiments.reports.results.PowerPlan`): about how many more units the
verdict's always-valid test needs to detect the effect, from the control's observed rate.

``GET /reports/{key}`` is the HTML page, with the same parameters. A browser cannot attach an
``Authorization`` header to a link, so the page also accepts its key once in the URL:
``/reports/{key}?key=<API key>`` checks the key (it needs the ``report`` scope), stores it in an
``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/reports`` and redirects (303) to the same
URL without it — the key leaves the address bar and the history at once. Later visits send the
cookie; ``Authorization: Bearer`` and ``X-API-Key`` work too. Without a valid key the page is a
small form asking for one (401; 403 for a key without the scope).
``GET /reports/static/{report.js,report.css}`` serves the page's assets under the same guard (the
cookie is scoped to ``/reports``), so the page works offline, without a CDN.

Reports run in a worker thread: the event-log client is synchronous.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import msgspec
import structlog
from litestar import Controller, MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect
from redis.exceptions import RedisError

from bandits.apprentice import ApprenticeEstimate, estimate_of
from bandits.base import SnapshotError
from bandits.vw_slates import VWSlatesPolicy
from decision_api.access.keys import current_actor
from decision_api.routes.guards import ScopeGuard, connection_key, require
from decision_api.routes.off_policy import parse_targets, with_targets
from decision_api.services import Services
from experiments.reports.apprentice import apprentice_status
from experiments.reports.build import build_report
from experiments.reports.html import ASSETS, asset, render_report_page
from experiments.reports.options import ReportOptionsError, report_options
from experiments.reports.results import ExperimentReport, ReportOptions
from experiments.reports.slate_verdict import slate_verdict
from experiments.reports.slates import slate_report
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment
from tailor_contract.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    TailorError,
    Unauthorized,
)
from tailor_contract.policies import VWSlatesConfig

__all__ = ["COOKIE", "ReportController", "page_guard", "report_asset", "report_page"]

log = structlog.get_logger("tailor.reports")

COOKIE = "tailor_report_key"
URL_KEY_ADMITTED = "report_url_key_admitted"
"""Scope state set by the page's guard: the key it admitted came from ``?key=``."""
COOKIE_MAX_AGE_S = 8 * 3600
STATIC_PATH = "/reports/static"


def _options(
    start: str | None,
    end: str | None,
    segment: str | None,
    metric: list[str] | None,
    level: float | None,
    correction: str | None,
    horizon_units: int | None,
    window_s: int | None,
    pre_period_s: int | None,
    off_policy: bool | None,
    mde: float | None = None,
    power: float | None = None,
    cap_percentile: float | None = None,
) -> ReportOptions:
    try:
        return report_options(
            mde=mde,
            power=power,
            cap_percentile=cap_percentile,
            start=start,
            end=end,
            segment=segment,
            metrics=metric or (),
            level=level,
            correction=correction,
            horizon_units=horizon_units,
            window_s=window_s,
            pre_period_s=pre_period_s,
            off_policy=off_policy,
        )
    except ReportOptionsError as exc:
        raise InvalidInput(str(exc), field=exc.field) from exc


async def _build(
    services: Services, key: str, options: ReportOptions, targets: Sequence[str] = ()
) -> ExperimentReport:
    experiment = await services.store.get(key)
    specs = parse_targets(targets, experiment)
    if specs:
        await services.writer.flush()
        if options.off_policy is None:
            options = msgspec.structs.replace(options, off_policy=True)
    report = await asyncio.to_thread(build_report, services.event_log, experiment, options)
    report = await _with_apprentice(services, experiment, report)
    report = await _with_slates(services, experiment, report, options.level)
    return await with_targets(services, experiment, report, specs, options.level)


def _window_ms(report: ExperimentReport) -> tuple[int, int]:
    """The report's period as epoch milliseconds."""

    def ms(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

    return ms(report.window.start), ms(report.window.end) + 1


async def _with_slates(
    services: Services, experiment: Experiment, report: ExperimentReport, level: float
) -> ExperimentReport:
    """The report with its slates section (a ``vw_slates`` experiment): click rates per slot
    and item, off-policy per slot with the published model as the learned ranking (left out,
    with a note, when there is none or the model store cannot be read)."""
    if not isinstance(experiment.policy, VWSlatesConfig):
        return report
    model: VWSlatesPolicy | None = None
    try:
        snap = await services.learning.snapshots.get(experiment.key)
    except RedisError as exc:
        log.warning("report_model_unavailable", error=str(exc))
        snap = None
    if snap is not None and snap.data:
        try:
            model = VWSlatesPolicy.restore(experiment.policy, snap.data, version=str(snap.version))
        except SnapshotError:
            model = None  # a model of another policy before the definition changed
    start_ms, end_ms = _window_ms(report)
    section = await asyncio.to_thread(
        slate_report,
        services.event_log,
        experiment,
        start_ms=start_ms,
        end_ms=end_ms,
        model=model,
        level=level,
    )
    if section is None:
        return report
    # The adaptive per-arm reading would take each slot's item for an arm: a slate's verdict
    # compares whole slates instead (experiments.reports.slate_verdict).
    return msgspec.structs.replace(
        report, slates=section, verdict=slate_verdict(section, level), adaptive=None
    )


async def _with_apprentice(
    services: Services, experiment: Experiment, report: ExperimentReport
) -> ExperimentReport:
    """The report with its apprentice section: the published model's estimate (Redis) and the
    takeover read from the log. An unreadable model store leaves the estimate out, flagged."""
    if getattr(experiment.policy, "apprentice", None) is None:
        return report
    estimate: ApprenticeEstimate | None = None
    unavailable = False
    try:
        snap = await services.learning.snapshots.get(experiment.key)
    except RedisError as exc:
        log.warning("report_model_unavailable", error=str(exc))
        snap, unavailable = None, True
    if snap is not None and snap.data:
        try:
            estimate = estimate_of(snap.data)
        except SnapshotError:
            estimate = None  # a model of the policy before apprentice mode was set
    end_ms = int(
        datetime.fromisoformat(report.window.end.replace("Z", "+00:00")).timestamp() * 1000
    )
    status = await asyncio.to_thread(
        apprentice_status,
        services.event_log,
        experiment,
        estimate,
        end_ms=end_ms,
        model_unavailable=unavailable,
    )
    return msgspec.structs.replace(report, apprentice=status)


class ReportController(Controller):
    """The report of one experiment as JSON (or text)."""

    path = "/v1/experiments"
    tags = ["reports"]
    guards = [require("report")]

    @get("/{key:str}/report")
    async def report(
        self,
        key: FromPath[str],
        services: NamedDependency[Services],
        start: Annotated[str | None, QueryParameter(name="from")] = None,
        end: Annotated[str | None, QueryParameter(name="to")] = None,
        segment: FromQuery[str | None] = None,
        metric: FromQuery[list[str] | None] = None,
        level: FromQuery[float | None] = None,
        correction: FromQuery[str | None] = None,
        horizon_units: FromQuery[int | None] = None,
        window_s: FromQuery[int | None] = None,
        pre_period_s: FromQuery[int | None] = None,
        off_policy: FromQuery[bool | None] = None,
        cap_percentile: FromQuery[float | None] = None,
        target: FromQuery[list[str] | None] = None,
        format: FromQuery[Literal["json", "text"]] = "json",
    ) -> Response[Any]:
        """Statistics, uplift and off-policy estimates of one experiment."""
        options = _options(
            start,
            end,
            segment,
            metric,
            level,
            correction,
            horizon_units,
            window_s,
            pre_period_s,
            off_policy,
            cap_percentile=cap_percentile,
        )
        report = await _build(services, key, options, target or ())
        if format == "text":
            return Response(render_report_text(report), media_type=MediaType.TEXT)
        return Response(report, media_type=MediaType.JSON)

    @get("/{key:str}/plan")
    async def plan(
        self,
        key: FromPath[str],
        services: NamedDependency[Services],
        mde: FromQuery[float | None] = None,
        power: FromQuery[float | None] = None,
        level: FromQuery[float | None] = None,
        horizon_units: FromQuery[int | None] = None,
        start: Annotated[str | None, QueryParameter(name="from")] = None,
        end: Annotated[str | None, QueryParameter(name="to")] = None,
    ) -> Response[Any]:
        """How many more units the verdict's (always-valid) test needs to detect a relative
        effect ``mde`` on the primary metric at ``power``: the report's ``plan`` section."""
        options = _options(
            start, end, None, None, level, None, horizon_units, None, None, False, mde, power
        )
        report = await _build(services, key, options)
        if report.plan is None:
            raise InvalidInput(
                "the experiment has no variant to compare with control", field="$.key"
            )
        return Response(report.plan, media_type=MediaType.JSON)


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Tailor report</title><link rel="stylesheet" href="{static}/report.css"></head>
<body><main><h1>Tailor report</h1><p class="note">{message}</p>
<form method="get"><label>API key with the <code>report</code> scope
<input name="key" type="password" autocomplete="off"></label>
<button type="submit">Open</button></form></main></body></html>"""


def _page_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a page request carries: a header, the one-time ``?key=``, or the cookie."""
    return (
        connection_key(connection)
        or connection.query_params.get("key")
        or connection.cookies.get(COOKIE)
    )


async def _admit_page(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admit keys with the ``report`` scope from a header, ``?key=`` or the page's cookie.

    401 without a (known, unrevoked) key, 403 for a key without the scope, 429 over its rate
    limit; on the page these render as a small form asking for a key (see `_login`).
    """
    services: Services = connection.app.state.services
    ring = services.keys
    if ring.open:
        return
    if not ring.ready:
        raise ServiceUnavailable("API keys are not loaded yet (Redis unavailable); retry")
    presented = _page_key(connection)
    if not presented:
        raise Unauthorized("This page needs an API key with the report scope.")
    key = ring.lookup(presented)
    if key is None or key.revoked:
        raise Unauthorized("Unknown or revoked API key.")
    if not key.allows_any(("report",)):
        raise Forbidden("This API key lacks the report scope.")
    connection.scope["state"]["api_key_id"] = key.key_id
    url_key = connection.query_params.get("key")
    from_url = connection_key(connection) is None and presented == url_key
    connection.scope["state"][URL_KEY_ADMITTED] = from_url
    current_actor.set(key.key_id)
    wait = await services.rate_limiter.acquire(key.key_id, key.rate_per_s, key.burst)
    if wait is not None:
        services.metrics.rate_limited.inc()
        raise RateLimited(f"API key {key.key_id} is over its rate limit", retry_after_s=wait)


page_guard = ScopeGuard(("report",), _admit_page, url_key=True, cookie=COOKIE)
"""The report page's guard: a ``report`` key from a header, ``?key=`` or the page's cookie."""


def _login(_: Request[Any, Any, Any], exc: TailorError) -> Response[str]:
    """The page's answer to a missing or refused key: a form asking for one."""
    body = _LOGIN.format(static=STATIC_PATH, message=html.escape(exc.detail))
    return Response(body, status_code=exc.status_code, media_type=MediaType.HTML)


_FORM = ResponseSpec(
    data_container=str,
    description="A page asking for an API key with the report scope",
    media_type=MediaType.HTML,
    generate_examples=False,
)


@get(
    "/reports/{key:str}",
    tags=["reports"],
    media_type=MediaType.HTML,
    guards=[page_guard],
    exception_handlers={Unauthorized: _login, Forbidden: _login},
    responses={401: _FORM, 403: _FORM},
)
async def report_page(
    request: Request[Any, Any, Any],
    key: FromPath[str],
    services: NamedDependency[Services],
    start: Annotated[str | None, QueryParameter(name="from")] = None,
    end: Annotated[str | None, QueryParameter(name="to")] = None,
    segment: FromQuery[str | None] = None,
    metric: FromQuery[list[str] | None] = None,
    level: FromQuery[float | None] = None,
    correction: FromQuery[str | None] = None,
    horizon_units: FromQuery[int | None] = None,
    window_s: FromQuery[int | None] = None,
    pre_period_s: FromQuery[int | None] = None,
    off_policy: FromQuery[bool | None] = None,
    targets: Annotated[list[str] | None, QueryParameter(name="target")] = None,
) -> Response[Any]:
    """The report page (key: header, cookie, or once as ``?key=``; see the module docstring)."""
    url_key = request.query_params.get("key")
    if url_key and request.scope["state"].get(URL_KEY_ADMITTED):
        # The key the guard checked came from the URL: keep it in a cookie, out of the address
        # bar. Never an unchecked one (a header key was checked, or no key is configured).
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
        target = request.url.path + ("?" + urlencode(rest) if rest else "")
        cookie = Cookie(
            key=COOKIE,
            value=url_key,
            path="/reports",
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return Redirect(path=target, status_code=303, cookies=[cookie])
    options = _options(
        start,
        end,
        segment,
        metric,
        level,
        correction,
        horizon_units,
        window_s,
        pre_period_s,
        off_policy,
    )
    report = await _build(services, key, options, targets or ())
    page = render_report_page(report, static_base=STATIC_PATH)
    return Response(page, media_type=MediaType.HTML, headers={"Cache-Control": "no-store"})


@get(STATIC_PATH + "/{name:str}", tags=["reports"], include_in_schema=False, guards=[page_guard])
async def report_asset(name: FromPath[str]) -> Response[bytes]:
    """The report page's script and style sheet (the page's cookie travels with them)."""
    if name not in ASSETS:
        raise NotFound(f"no report asset {name!r}")
    return Response(
        asset(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=300"}
    )
