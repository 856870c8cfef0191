"""``POST /v1/exposures/batch``: exposures an SDK decided locally, into the event log.

Each report is checked against the experiment it names (the worker's cache, or the store for an
experiment that has stopped since): an unknown experiment, a placement or variant it does not
have is rejected per item — reported back, not logged — so one stale report cannot block a
batch. Rows look like the server's own: policy ``fixed`` (reason ``split``) or ``default``, the
propensity recomputed from the definition when the versions agree, unit ids pseudonymised and
context dropped without consent. Client event ids make a resubmitted batch idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.rows import Exposure, event_time_problem, stringify
from event_log.writer import now_ms
from experiments.errors import ExperimentNotFound
from tailor_contract.assignment import cumulative_shares
from tailor_contract.definitions import Experiment
from tailor_contract.errors import InvalidInput
from tailor_contract.wire import (
    ExposureBatch,
    ExposureRejection,
    ExposureReport,
    ExposuresAccepted,
)

HOLDOUT_REASONS = frozenset({"holdout", "global_holdout"})


async def _experiments(services: Services, keys: set[str]) -> dict[str, Experiment]:
    found: dict[str, Experiment] = {}
    for key in keys:
        compiled = services.cache.get(key)
        if compiled is not None:
            found[key] = compiled.experiment
            continue
        try:
            found[key] = await services.store.get(key)
        except ExperimentNotFound:
            continue
    return found


def _problem(report: ExposureReport, experiment: Experiment | None) -> tuple[str, str] | None:
    if experiment is None:
        return "experiment", f"no experiment {report.experiment!r}"
    if report.placement != experiment.placement:
        return "placement", (
            f"experiment {experiment.key!r} serves {experiment.placement!r}, "
            f"not {report.placement!r}"
        )
    if all(v.key != report.variant for v in experiment.variants):
        return "variant", f"experiment {experiment.key!r} has no variant {report.variant!r}"
    return None


def _propensity(report: ExposureReport, experiment: Experiment) -> float:
    if report.reason != "split":
        return 1.0
    if report.experiment_version != experiment.version:
        return report.propensity  # decided on an older definition: trust its own split
    keys = [v.key for v in experiment.variants]
    shares = cumulative_shares([v.weight for v in experiment.variants])
    index = keys.index(report.variant)
    return shares[index] - (shares[index - 1] if index else 0.0)


def _check_times(services: Services, reports: Sequence[ExposureReport]) -> None:
    cfg = services.settings.event_log
    now = now_ms()
    for index, report in enumerate(reports):
        problem = event_time_problem(
            int(report.ts.timestamp() * 1000),
            now,
            max_age_s=cfg.max_event_age_s,
            max_lead_s=cfg.max_event_lead_s,
        )
        if problem is not None:
            raise InvalidInput(
                f"ts {report.ts.isoformat()} {problem}", field=f"$.exposures[{index}].ts"
            )


async def accept_exposures(
    services: Services, reports: Sequence[ExposureReport]
) -> ExposuresAccepted:
    """Validate locally decided exposures and hand the good ones to the event writer.

    Raises:
        InvalidInput: naming the first ``ts`` outside the accepted window (nothing is logged).
    """
    _check_times(services, reports)
    experiments = await _experiments(services, {r.experiment for r in reports})
    rejected: list[ExposureRejection] = []
    accepted = 0
    for index, report in enumerate(reports):
        experiment = experiments.get(report.experiment)
        problem = _problem(report, experiment)
        if problem is not None or experiment is None:
            field, message = problem or ("experiment", "unknown experiment")
            rejected.append(
                ExposureRejection(
                    index=index, field=f"$.exposures[{index}].{field}", message=message
                )
            )
            continue
        policy = "fixed" if report.reason == "split" else "default"
        services.writer.submit(
            Exposure(
                event_id=uuid.UUID(report.event_id),
                decision_id=report.decision_id,
                ts_ms=int(report.ts.timestamp() * 1000),
                unit_id=report.unit_id if report.consent else services.pseudonymise(report.unit_id),
                experiment=experiment.key,
                experiment_version=report.experiment_version,
                placement=report.placement,
                variant=report.variant,
                propensity=_propensity(report, experiment),
                policy=policy,
                policy_version="",
                reason=report.reason,
                holdout=report.reason in HOLDOUT_REASONS,
                context=stringify(report.context) if report.consent else {},
            )
        )
        accepted += 1
    return ExposuresAccepted(accepted=accepted, rejected=rejected)


class ExposureController(Controller):
    """Exposures decided outside the server (SDK local evaluation)."""

    path = "/v1/exposures"
    tags = ["sdk"]
    guards = [require("decide", "ingest")]

    @post("/batch", status_code=202, dto=StructBody[ExposureBatch], return_dto=None)
    async def record_batch(
        self, data: JSONBody[ExposureBatch], services: NamedDependency[Services]
    ) -> ExposuresAccepted:
        """Log up to 10,000 locally decided exposures; bad items come back in ``rejected``."""
        return await accept_exposures(services, data.exposures)
