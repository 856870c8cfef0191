"""``POST /v1/experiments/{key}/imports``: load logged decisions through the running server.

The body is the file itself (CSV, Parquet or JSON lines; ``?format=`` names which), the schema
that of :mod:`event_log.importer`. This is what ``tailor import`` calls when
``TAILOR_API_URL`` is set — the robust path with the embedded chdb event log, which only the
server process may open. Scope ``admin``. ``?create=true`` creates a missing experiment from
the file (variants inferred; ``default_variant``, ``primary_metric`` and ``placement`` may be
given). A file with invalid rows is refused whole: 422 with one ``errors`` entry per row
(``$.rows[<n>]``, n counted from 1) — and with ``create=true`` the experiment is not created
either (the file is validated against the draft first), so a corrected retry starts afresh.
``?zero_outcome=<type>`` (repeatable) keeps the zeros of a 0/1 ``outcome.<type>`` column as
outcomes of value 0; by default a 0 there means no outcome. The body limit is the server's
(``TAILOR_DECISIONS_MAX_BODY_BYTES``); bigger files load faster directly (``tailor import``
without ``TAILOR_API_URL``, the server stopped or on a ClickHouse server).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Literal

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from decision_api.problems import PROBLEM_TYPE, FieldError, Problem
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.importer import (
    ImportRejected,
    ImportSummary,
    draft_experiment,
    import_decisions,
    infer_spec,
    read_rows,
    validate_file,
)
from experiments.errors import ExperimentNotFound
from tailor_contract.definitions import Experiment
from tailor_contract.errors import InvalidInput

__all__ = ["ImportController"]

_ROW = re.compile(r"^row (\d+): (.*)$", re.DOTALL)


def _rejected(exc: ImportRejected, request: Request[Any, Any, Any]) -> Response[Problem]:
    errors = []
    for line in exc.errors:
        match = _ROW.match(line)
        field = f"$.rows[{match.group(1)}]" if match else "$"
        errors.append(FieldError(field=field, message=match.group(2) if match else line))
    rid = request.scope.get("state", {}).get("request_id")
    return Response(
        Problem(
            type=PROBLEM_TYPE + "invalid_rows",
            title="Invalid rows",
            status=422,
            detail=f"{exc.total} invalid row(s), nothing imported",
            code="invalid_rows",
            errors=errors,
            request_id=rid if isinstance(rid, str) else None,
        ),
        status_code=422,
        media_type="application/problem+json",
    )


class ImportController(Controller):
    """Import history from another system into an experiment's event log."""

    path = "/v1/experiments"
    tags = ["imports"]
    guards = [require("admin")]

    @post("/{key:str}/imports", status_code=201)
    async def import_file(
        self,
        request: Request[Any, Any, Any],
        key: FromPath[str],
        services: NamedDependency[Services],
        format: FromQuery[Literal["csv", "parquet", "jsonl"]],
        policy: FromQuery[str] = "imported",
        create: FromQuery[bool] = False,
        default_variant: FromQuery[str | None] = None,
        primary_metric: FromQuery[str | None] = None,
        placement: FromQuery[str | None] = None,
        zero_outcome: FromQuery[list[str] | None] = None,
    ) -> Response[Any]:
        """Validate every row, then write them all (or none); create the experiment only for a
        file that validates."""
        data = await request.body()
        zeros = tuple(zero_outcome or ())
        experiment: Experiment
        try:
            experiment = await services.store.get(key)
        except ExperimentNotFound:
            if not create:
                raise
            try:
                rows = await asyncio.to_thread(read_rows, data, format)
                spec = infer_spec(
                    rows,
                    key,
                    placement=placement,
                    default_variant=default_variant,
                    primary_metric=primary_metric,
                )
                await asyncio.to_thread(
                    validate_file, draft_experiment(spec), data, format, zero_outcomes=zeros
                )
            except ImportRejected as exc:
                return _rejected(exc, request)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="$") from exc
            experiment = await services.store.create(spec, time.time())
            await services.cache.refresh()
        try:
            summary: ImportSummary = await asyncio.to_thread(
                import_decisions,
                services.event_log,
                experiment,
                data,
                format,
                policy=policy,
                zero_outcomes=zeros,
            )
        except ImportRejected as exc:
            return _rejected(exc, request)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="$") from exc
        return Response(summary, status_code=200 if summary.already_imported else 201)
