"""The application factory: ``create_app(settings)`` is the only way to build the ASGI app."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from decision_api.logging import configure_logging
from decision_api.openapi import document_security, openapi_config
from decision_api.problems import EXCEPTION_HANDLERS, document_problems
from decision_api.routes.batch import BatchController
from decision_api.routes.contact_caps import ContactCapController
from decision_api.routes.controls import ControlController
from decision_api.routes.decide import DecideController
from decision_api.routes.definitions import definitions
from decision_api.routes.dependencies import provide_services
from decision_api.routes.experiments import ExperimentController
from decision_api.routes.exposures import ExposureController
from decision_api.routes.fast_decide import TRIED, DecideFront
from decision_api.routes.imports import ImportController
from decision_api.routes.keys import KeyController
from decision_api.routes.models import ModelController, TakeoverController
from decision_api.routes.off_policy import OffPolicyController
from decision_api.routes.ops import healthz, metrics, readyz
from decision_api.routes.outcomes import OutcomeController
from decision_api.routes.reports import ReportController, report_asset, report_page
from decision_api.routes.sdk import tailor_js
from decision_api.routes.ui import end_session, root, start_session, ui_asset, ui_page
from decision_api.routes.units import EventController, UnitController
from decision_api.routes.what_if import WhatIfController
from decision_api.services import open_services
from decision_api.settings import Settings

VERSION = "0.1.0"


class RequestIdMiddleware:
    """Give every request an id (the caller's ``X-Request-ID`` or a new one), bind it to logs
    and echo it in the response. One counter is shared by every route (and by the decide front,
    :class:`~decision_api.routes.fast_decide.DecideFront`, whose id a handed-over request keeps)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._prefix = f"{os.getpid():x}-"

    def new_id(self) -> str:
        """A fresh id for a request without ``X-Request-ID``."""
        return self._prefix + str(next(self._counter))

    def __call__(self, app: ASGIApp) -> ASGIApp:
        """Wrap one route's ASGI app."""
        return _with_request_id(app, self.new_id)


def _with_request_id(app: ASGIApp, new_id: Callable[[], str]) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        rid = state.get("request_id") if TRIED in scope else None
        if rid is None:
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    rid = value.decode("latin-1")[:64]
                    break
            if rid is None:
                rid = new_id()
            state["request_id"] = rid
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=rid)
        rid_header = (b"x-request-id", rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


class AllowHeaders:
    """A ``before_send`` hook that makes an ``OPTIONS`` answer's ``Allow`` list every method
    of its path.

    Litestar 2 builds the automatic ``OPTIONS`` handler of a path with its first handler and
    keeps it when more handlers join the path (litestar-org/litestar#4169, fixed only in 3.x):
    ``OPTIONS /v1/experiments`` said ``Allow: OPTIONS, POST`` without ``GET``. The hook
    rewrites an existing ``Allow`` header from the app's final routes (:meth:`learn`); it adds
    none where there was none (a CORS preflight answer), and 405 answers already list every
    method.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, bytes] = {}

    def learn(self, app: Litestar) -> None:
        """Record each path's methods, once every route is registered."""
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                self._by_path[route.path_format] = ", ".join(sorted(route.methods)).encode()

    async def __call__(self, message: Message, scope: Scope) -> None:
        """Rewrite the ``Allow`` header of an ``OPTIONS`` answer."""
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        allow = self._by_path.get(str(scope.get("path_template", "")))
        headers = list(message.get("headers", []))
        if allow is None or not any(name.lower() == b"allow" for name, _ in headers):
            return
        message["headers"] = [(n, v) for n, v in headers if n.lower() != b"allow"] + [
            (b"allow", allow)
        ]


def cors_config(origins_spec: str) -> CORSConfig | None:
    """CORS for the browser snippet's origins (``TAILOR_AUTH_CORS_ORIGINS``, comma-separated;
    ``*`` for any); None (no CORS headers) when unset. Browsers may send the API key headers and
    read ``Retry-After`` and ``X-Request-ID``."""
    origins = [o.strip() for o in origins_spec.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
        expose_headers=["retry-after", "x-request-id"],
        max_age=600,
    )


def create_app(settings: Settings) -> Litestar:
    """Build the Tailor API for these settings; resources open in the lifespan."""
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            yield

    cors = cors_config(settings.auth.cors_origins)
    request_ids = RequestIdMiddleware()
    allow_headers = AllowHeaders()
    handlers: list[Any] = [
        DecideController,
        BatchController,
        ExperimentController,
        ContactCapController,
        ModelController,
        TakeoverController,
        UnitController,
        EventController,
        OutcomeController,
        ExposureController,
        definitions,
        tailor_js,
        KeyController,
        ReportController,
        WhatIfController,
        OffPolicyController,
        ImportController,
        report_page,
        report_asset,
        ControlController,
        root,
        ui_page,
        ui_asset,
        start_session,
        end_session,
        healthz,
        readyz,
        metrics,
    ]
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_ids],
        before_send=[allow_headers],
        openapi_config=openapi_config(
            title="Tailor",
            version=VERSION,
            path="/schema",
            description="Experimentation and real-time personalization decision API.",
        ),
        cors_config=cors,
        request_max_body_size=settings.decisions.max_body_bytes,
        debug=False,
    )
    document_problems(app)
    document_security(app)
    allow_headers.learn(app)
    app.state.new_request_id = request_ids.new_id
    return app


def create_asgi_app(settings: Settings) -> DecideFront:
    """What a server runs: :func:`create_app` behind the ``/v1/decide`` front
    (:class:`~decision_api.routes.fast_decide.DecideFront`), which shares its request ids."""
    app = create_app(settings)
    return DecideFront(app, app.state.new_request_id)
