"""The parts of ``GET /v1/experiments/{key}/report`` the demo reads, and how it fetches them.

The report's own Structs (:mod:`experiments.reports.results`) hold floats that encode undefined
numbers as JSON ``null``; these read-only views declare such numbers ``float | None`` and ignore
every field the summary does not use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx
import msgspec

__all__ = [
    "AdaptiveView",
    "ArmView",
    "ComparisonView",
    "IntervalView",
    "MetricView",
    "PolicyValueView",
    "ReportView",
    "UpliftView",
    "fetch_reports",
]


class IntervalView(msgspec.Struct, frozen=True):
    """An estimate with its interval (``None`` when undefined)."""

    estimate: float | None
    lower: float | None
    upper: float | None

    def contains(self, value: float) -> bool:
        """Whether the interval is defined and holds ``value``."""
        return (
            self.lower is not None
            and self.upper is not None
            and (self.lower <= value <= self.upper)
        )


class LiftView(msgspec.Struct, frozen=True):
    """A lift's absolute difference (fixed-horizon or always-valid)."""

    absolute: IntervalView


class BayesView(msgspec.Struct, frozen=True):
    """The Bayesian reading of a comparison."""

    chance_to_beat_control: float | None


class ComparisonView(msgspec.Struct, frozen=True):
    """One variant against control on one measure of one metric."""

    variant: str
    measure: str
    lift: LiftView
    sequential: LiftView
    bayesian: BayesView
    significant: bool
    direction: str


class ArmMetricView(msgspec.Struct, frozen=True):
    """One arm's numbers on one metric."""

    arm: str
    units: int
    converters: int
    conversion_rate: float | None


class MetricView(msgspec.Struct, frozen=True):
    """One outcome type's section."""

    metric: str
    arms: list[ArmMetricView]
    comparisons: list[ComparisonView]


class ArmView(msgspec.Struct, frozen=True):
    """Units and exposures of one arm."""

    arm: str
    kind: str
    units: int
    exposures: int


class UpliftView(msgspec.Struct, frozen=True):
    """Personalised traffic against a holdout."""

    holdout: str
    metric: str
    holdout_units: int
    personalised_units: int
    holdout_rate: float | None
    personalised_rate: float | None
    rate_lift: IntervalView


class UpliftSectionView(msgspec.Struct, frozen=True):
    """The uplift section (overall estimates only)."""

    overall: list[UpliftView]


class EstimateView(msgspec.Struct, frozen=True):
    """An off-policy estimate."""

    n: int
    ips: IntervalView
    snips: IntervalView
    doubly_robust: IntervalView | None
    effective_sample_size: float | None
    low_support: bool


class PolicyValueView(msgspec.Struct, frozen=True):
    """A target policy and its estimated value."""

    policy: str
    estimate: EstimateView


class OffPolicyView(msgspec.Struct, frozen=True):
    """The off-policy section."""

    logged_decisions: int
    policies: list[PolicyValueView]
    warnings: list[str]

    def policy(self, name: str) -> EstimateView | None:
        """The estimate of the policy named ``name`` (``deployed``, ``uniform``,
        ``always:<variant>``)."""
        return next((p.estimate for p in self.policies if p.policy == name), None)


class VerdictView(msgspec.Struct, frozen=True):
    """The report's plain-language verdict."""

    status: str
    headline: str


class AdaptiveView(msgspec.Struct, frozen=True):
    """A learning policy's value against its baseline: the verdict of a bandit experiment."""

    source: str
    baseline: str
    gain: IntervalView | None
    significant: bool


class ReportView(msgspec.Struct, frozen=True):
    """An experiment report, as far as the demo reads it."""

    experiment: str
    verdict: VerdictView
    arms: list[ArmView]
    metrics: list[MetricView]
    uplift: UpliftSectionView
    off_policy: OffPolicyView | None
    warnings: list[str]
    adaptive: AdaptiveView | None = None

    def metric(self, name: str) -> MetricView | None:
        """The section of outcome type ``name``."""
        return next((m for m in self.metrics if m.metric == name), None)

    def comparison(self, metric: str, variant: str) -> ComparisonView | None:
        """The conversion-rate comparison of ``variant`` against control on ``metric``."""
        section = self.metric(metric)
        if section is None:
            return None
        return next(
            (
                c
                for c in section.comparisons
                if c.variant == variant and c.measure == "conversion_rate"
            ),
            None,
        )

    def exposures(self) -> int:
        """Exposures counted in the experiment (every arm, holdouts included)."""
        return sum(a.exposures for a in self.arms)


_decode = msgspec.json.Decoder(ReportView).decode


async def fetch_reports(
    api_url: str,
    requests: Mapping[str, Mapping[str, str | int]],
    expected_exposures: Mapping[str, int],
    timeout_s: float = 60.0,
) -> dict[str, ReportView]:
    """Fetch each experiment's JSON report with its query parameters.

    The event log is written in batches about every second, so a report is fetched again
    until it counts ``expected_exposures[key]`` exposures (or ``timeout_s`` passes).
    """
    out: dict[str, ReportView] = {}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=api_url, timeout=120.0) as http:
        for key, params in requests.items():
            while True:
                got = await http.get(f"/v1/experiments/{key}/report", params=dict(params))
                got.raise_for_status()
                report = _decode(got.content)
                if report.exposures() >= expected_exposures.get(key, 0):
                    break
                if time.monotonic() > deadline:
                    break  # the summary shows the counts; a shortfall is visible there
                await asyncio.sleep(0.5)
            out[key] = report
    return out
