"""Report sections wire the statistics to the right sums, checked on per-unit data in scipy."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from experiments.reports.breakdowns import MAX_SEGMENTS, daily_series, segment_report, uplift
from experiments.reports.build import (
    correct_for_multiplicity,
    metric_reports,
    report_from_data,
    report_query,
    sample_ratio,
)
from experiments.reports.data import ArmGroup, ReportData, ReportQuery, RewardQuery, TypeSums
from experiments.reports.plan import default_horizon_units, planned_comparisons
from experiments.reports.results import ReportOptions
from experiments.statistics.multiple_testing import holm
from experiments.statistics.power import (
    proportion_sample_size,
    sequential_proportion_power,
    sequential_units_needed,
)
from tailor_contract.definitions import Experiment, RewardRule, RewardSpec, Variant

EXPERIMENT = Experiment(
    key="hero",
    placement="home",
    variants=[Variant(key="a"), Variant(key="b")],
    default_variant="a",
    primary_metric="purchase",
    guardrail_metrics=["unsubscribe"],
    reward=RewardSpec(rules=[RewardRule(type="purchase", reward=2.0, per_value=True)]),
)
QUERY = ReportQuery(
    experiment="hero",
    variants=("a", "b"),
    start_ms=0,
    end_ms=10,
    window_ms=1,
    pre_ms=1,
    types=("purchase", "unsubscribe"),
    reward=RewardQuery(
        types=(), rewards=(), per_value=(), window_ms=1, aggregation="first", default=0, lo=0, hi=1
    ),
)


class Units:
    """Per-unit values of one arm: purchase value y, its pre-period x, unsubscribed u."""

    def __init__(self, rng: np.random.Generator, n: int, rate: float, unsub: float) -> None:
        x = rng.gamma(2.0, 15.0, n) * (rng.random(n) < 0.5)
        converted = rng.random(n) < rate * (0.4 + 1.2 * (x > 0))
        self.y: NDArray[np.float64] = converted * (20 + 1.5 * x + rng.normal(0, 3, n))
        self.x: NDArray[np.float64] = x
        self.u: NDArray[np.float64] = (rng.random(n) < unsub).astype(float)

    def group(self, arm: str, segment: str = "", day: int = 0) -> ArmGroup:
        """The sums the report SQL would return for these units."""
        y, x, u = self.y, self.x, self.u
        conv, pre = (y > 0).astype(float), (x > 0).astype(float)
        return ArmGroup(
            arm=arm,
            segment=segment,
            day=day,
            units=y.size,
            by_type={
                "purchase": TypeSums(
                    converters=int(conv.sum()),
                    events=int(conv.sum()),
                    value=float(y.sum()),
                    value_sq=float(y @ y),
                    pre_converters=int(pre.sum()),
                    both_converters=int(conv @ pre),
                    pre_value=float(x.sum()),
                    pre_value_sq=float(x @ x),
                    cross_value=float(x @ y),
                ),
                "unsubscribe": TypeSums(converters=int(u.sum()), events=int(u.sum())),
            },
        )


def _data(groups: list[ArmGroup]) -> ReportData:
    return ReportData(
        query=QUERY,
        groups=groups,
        exposures={g.arm: 2 * g.units for g in groups},
        earlier_units=0,
        unconfigured=[],
        orphan_outcomes=0,
        logged_decisions=0,
        ope_fraction=1.0,
        ope_cells=[],
        ope_unknown_variants=0,
    )


@pytest.fixture(scope="module")
def arms() -> dict[str, Units]:
    """Control, treatment (higher conversion, more unsubscribes) and a holdout."""
    rng = np.random.default_rng(21)
    return {
        "a": Units(rng, 3000, 0.10, 0.01),
        "b": Units(rng, 3100, 0.14, 0.03),
        "~holdout": Units(rng, 700, 0.08, 0.01),
    }


def _reports(arms: dict[str, Units], options: ReportOptions | None = None) -> list:  # type: ignore[type-arg]
    data = _data([u.group(arm) for arm, u in arms.items()])
    raw = metric_reports(
        data,
        EXPERIMENT,
        options or ReportOptions(),
        horizon_units=10_000,
        rng=np.random.default_rng(0),
    )
    return correct_for_multiplicity(raw, options or ReportOptions())[0]


def test_lifts_match_scipy_on_the_units(arms: dict[str, Units]) -> None:
    """Rate lift is the Agresti–Caffo two-proportion z, value lift Welch's t (scipy), CUPED the
    regression-adjusted difference with the pooled within-group slope."""
    purchase = _reports(arms)[0]
    rate = next(c for c in purchase.comparisons if c.measure == "conversion_rate")
    a, b = arms["a"], arms["b"]
    pa, pb = (a.y > 0).mean(), (b.y > 0).mean()
    qa, qb = ((a.y > 0).sum() + 1) / (a.y.size + 2), ((b.y > 0).sum() + 1) / (b.y.size + 2)
    se = math.sqrt(qa * (1 - qa) / (a.y.size + 2) + qb * (1 - qb) / (b.y.size + 2))
    assert rate.lift.absolute.estimate == pytest.approx(pb - pa, rel=1e-12)
    assert rate.lift.p_value == pytest.approx(2 * stats.norm.sf(abs(qb - qa) / se), rel=1e-9)
    value = next(c for c in purchase.comparisons if c.measure == "value_per_unit")
    welch = stats.ttest_ind(b.y, a.y, equal_var=False)
    assert value.lift.p_value == pytest.approx(welch.pvalue, rel=1e-6)
    assert value.lift.absolute.estimate == pytest.approx(b.y.mean() - a.y.mean(), rel=1e-12)
    xa, xb = a.x - a.x.mean(), b.x - b.x.mean()
    theta = (xa @ (a.y - a.y.mean()) + xb @ (b.y - b.y.mean())) / (xa @ xa + xb @ xb)
    x_bar = np.concatenate([a.x, b.x]).mean()
    adjusted = (b.y.mean() - theta * (b.x.mean() - x_bar)) - (
        a.y.mean() - theta * (a.x.mean() - x_bar)
    )
    assert value.cuped is not None
    assert value.cuped.theta == pytest.approx(theta, rel=1e-9)
    assert value.cuped.adjusted.absolute.estimate == pytest.approx(adjusted, rel=1e-9)
    assert value.cuped.variance_reduction > 0.05
    assert rate.cuped is not None  # the pre-period conversion is the rate's covariate


def test_correction_and_guardrail_direction(arms: dict[str, Units]) -> None:
    """Holm adjusts the always-valid p-values of every comparison together; a significant rise
    of a guard-rail metric reads as worse."""
    reports = _reports(arms)
    flat = [c for r in reports for c in r.comparisons]
    expected = holm([c.sequential.p_value for c in flat], alpha=0.05)
    assert [c.p_adjusted for c in flat] == list(expected.adjusted)
    unsub = reports[1].comparisons[0]
    assert reports[1].role == "guardrail" and unsub.significant and unsub.direction == "worse"
    assert reports[0].comparisons[0].direction == "better"


def test_sample_ratio_excludes_holdouts_and_follows_weights(arms: dict[str, Units]) -> None:
    """The SRM check is Pearson's chi-square of variant units against the configured weights."""
    weighted = Experiment(
        key="hero",
        placement="home",
        variants=[Variant(key="a", weight=1), Variant(key="b", weight=3)],
        default_variant="a",
    )
    srm = sample_ratio(_data([u.group(arm) for arm, u in arms.items()]), weighted)
    assert srm is not None
    ref = stats.chisquare([3000, 3100], f_exp=[6100 / 4, 6100 * 3 / 4])
    assert srm.p_value == pytest.approx(ref.pvalue, rel=1e-9) and srm.mismatch


def test_verdict_names_the_winner_and_the_harm(arms: dict[str, Units]) -> None:
    """The headline reads "b beats a on purchase: +x pp, 95% CI [l, u], chance to beat p";
    the guard-rail rise makes the status guardrail_harm."""
    options = ReportOptions(horizon_units=6100)
    report = report_from_data(
        _data([u.group(arm) for arm, u in arms.items()]), EXPERIMENT, options, now_ms=0
    )
    rate = report.metrics[0].comparisons[0]
    cs = rate.sequential.absolute
    head = (
        f"b beats a on purchase: {cs.estimate * 100:+.1f} pp, 95% CI "
        f"[{cs.lower * 100:.1f}, {cs.upper * 100:.1f}], chance to beat >99.9%; "
    )
    assert report.verdict.headline.startswith(head)
    assert report.verdict.status == "guardrail_harm"
    assert any(d.startswith("Guard-rail unsubscribe: b raises it") for d in report.verdict.details)


@pytest.mark.parametrize(
    ("a_units", "b_units", "status", "start"),
    [
        (0, 0, "no_data", "No units have entered hero"),
        (5000, 4000, "sample_ratio_mismatch", "No clear difference"),
        (5000, 5010, "no_difference", "No clear difference between b and a on purchase yet"),
    ],
)
def test_verdict_statuses(a_units: int, b_units: int, status: str, start: str) -> None:
    """No units, a broken split and no effect each get their own verdict."""
    rng = np.random.default_rng(4)
    groups = []
    for arm, n in (("a", a_units), ("b", b_units)):
        if n:
            groups.append(Units(rng, n, 0.1, 0.0).group(arm))
    report = report_from_data(_data(groups), EXPERIMENT, ReportOptions(), now_ms=0)
    assert report.verdict.status == status
    assert report.verdict.headline.startswith(start)
    if status == "sample_ratio_mismatch":
        assert "SAMPLE-RATIO MISMATCH" in report.verdict.headline


def test_daily_series_is_cumulative() -> None:
    """Each day adds the units first exposed that day and their conversions to the totals."""
    rng = np.random.default_rng(8)
    days = {19000: Units(rng, 100, 0.2, 0), 19002: Units(rng, 50, 0.4, 0)}
    groups = [u.group("a", day=d) for d, u in days.items()]
    series = daily_series(_data(groups), EXPERIMENT, "purchase")
    a = series[0]
    assert [p.day for p in a.points] == ["2022-01-08", "2022-01-09", "2022-01-10"]
    conv = [int((u.y > 0).sum()) for u in days.values()]
    assert [p.units for p in a.points] == [100, 100, 150]
    assert [p.converters for p in a.points] == [conv[0], conv[0], conv[0] + conv[1]]
    assert len(series) == 1  # "b" has no units yet


def test_uplift_scales_the_per_unit_lift(arms: dict[str, Units]) -> None:
    """Personalised traffic (all variants) against the holdout: per-unit rate lift, and the
    incremental conversions are that lift times the personalised units."""
    section = uplift(
        _data([u.group(arm) for arm, u in arms.items()]),
        EXPERIMENT,
        ["purchase"],
        0.95,
        by_segment=False,
    )
    est = section.overall[0]
    treated = np.concatenate([arms["a"].y, arms["b"].y]) > 0
    held = arms["~holdout"].y > 0
    assert est.rate_lift.estimate == pytest.approx(treated.mean() - held.mean(), rel=1e-12)
    n = treated.size
    assert est.incremental_conversions.lower == pytest.approx(est.rate_lift.lower * n)
    assert est.value_lift is not None and est.incremental_value is not None


def test_segments_pool_the_long_tail() -> None:
    """Beyond the largest MAX_SEGMENTS values, segments pool into '(other)' with their units."""
    rng = np.random.default_rng(2)
    groups = []
    for s in range(MAX_SEGMENTS + 5):
        for arm in ("a", "b"):
            groups.append(Units(rng, 40 + s, 0.2, 0).group(arm, segment=f"s{s:02d}"))
    report = segment_report(_data(groups), EXPERIMENT, "country", 0.95)
    assert report is not None
    names = [r.segment for r in report.rows]
    assert len(names) == MAX_SEGMENTS + 1 and "(other)" in names
    other = next(r for r in report.rows if r.segment == "(other)")
    assert other.units == sum(2 * (40 + s) for s in range(5))
    p = [c.p_value for r in report.rows for c in r.comparisons]
    assert all(c.p_adjusted >= c.p_value for r in report.rows for c in r.comparisons)
    assert len(p) == MAX_SEGMENTS + 1


def test_query_and_horizon_come_from_the_experiment() -> None:
    """The report query carries the reward rules and windows; the default horizon is the fixed
    power calculation (5% baseline, +10% relative, 80% power) times the arms."""
    q = report_query(EXPERIMENT, ReportOptions(metrics=("click",)), now_ms=123)
    assert q.types == ("purchase", "unsubscribe", "click")
    assert (q.reward.types, q.reward.rewards, q.reward.per_value) == (
        ("purchase",),
        (2.0,),
        (True,),
    )
    assert q.end_ms == 123 and q.window_ms == EXPERIMENT.reward_window_s * 1000


def test_default_horizon_gives_the_verdicts_test_its_power() -> None:
    """Regression: the default horizon was the fixed test's sample size (31,231 per arm), where
    the always-valid test the verdict uses had 41% power read once. Now at the default horizon
    the always-valid test has 80% power (±0.5 pt) for +10% on 5%, at α split over the planned
    comparisons (2 here: purchase and the unsubscribe guard-rail)."""
    horizon = default_horizon_units(2, planned_comparisons(EXPERIMENT))
    assert planned_comparisons(EXPERIMENT) == 2
    per_arm = horizon / 2
    assert sequential_proportion_power(
        0.05, 0.055, per_arm, horizon_units=horizon, alpha=0.025
    ) == pytest.approx(0.8, abs=0.005)
    old = 2 * proportion_sample_size(0.05, 0.055)
    assert sequential_proportion_power(0.05, 0.055, old / 2, horizon_units=old) < 0.45
    assert default_horizon_units(3) > default_horizon_units(2) > old
    report = report_from_data(_data([]), EXPERIMENT, ReportOptions(), now_ms=0)
    assert report.horizon_units == horizon


def _rates(arm: str, n: int, purchases: int, unsubscribes: int) -> ArmGroup:
    return ArmGroup(
        arm=arm,
        units=n,
        by_type={
            "purchase": TypeSums(converters=purchases, events=purchases),
            "unsubscribe": TypeSums(converters=unsubscribes, events=unsubscribes),
        },
    )


def test_probable_guardrail_harm_is_not_read_as_no_harm() -> None:
    """Regression: unsubscribes 0.92% -> 3.17% (chance of an increase > 99.9%) read "Guard-rails:
    no significant harm." with the defaults. Now the detail says b probably raises it and how
    many more units would confirm it."""
    data = _data([_rates("a", 1_200, 60, 11), _rates("b", 1_200, 61, 38)])
    report = report_from_data(data, EXPERIMENT, ReportOptions(), now_ms=0)
    unsub = report.metrics[1].comparisons[0]
    assert unsub.bayesian.chance_to_beat_control > 0.999 and not unsub.significant
    assert "Guard-rails: no significant harm." not in report.verdict.details
    lean = [d for d in report.verdict.details if d.startswith("Guard-rail unsubscribe")]
    assert len(lean) == 1
    assert "b probably raises it" in lean[0] and "chance of an increase >99.9%" in lean[0]
    assert re.search(r"about [\d,]+ more units to confirm", lean[0])


def test_probable_winner_is_not_read_as_no_clear_difference() -> None:
    """Regression: a variant with chance to beat 99.4% read "No clear difference". Now the
    headline says it leads, is not significant yet, and how many more units would settle it."""
    data = _data([_rates("a", 3_000, 150, 30), _rates("b", 3_000, 197, 30)])
    report = report_from_data(data, EXPERIMENT, ReportOptions(), now_ms=0)
    rate = report.metrics[0].comparisons[0]
    assert rate.bayesian.chance_to_beat_control > 0.99 and not rate.significant
    assert report.verdict.status == "no_difference"
    head = report.verdict.headline
    assert head.startswith("b leads a on purchase: +1.6 pp")
    assert "not significant yet" in head and "No clear difference" not in head
    assert re.search(r"about [\d,]+ more units to confirm a difference this size", head)


def test_four_units_make_no_winner() -> None:
    """Regression: 0/2 vs 2/2 purchases read "b beats a: +100.0 pp, 95% CI [100.0, 100.0]"."""
    data = _data([_rates("a", 2, 0, 0), _rates("b", 2, 2, 0)])
    report = report_from_data(data, EXPERIMENT, ReportOptions(horizon_units=4), now_ms=0)
    rate = report.metrics[0].comparisons[0]
    assert not rate.significant and not rate.enough_outcomes
    assert report.verdict.status == "no_difference"
    assert "beats" not in report.verdict.headline
    assert "[100.0, 100.0]" not in report.verdict.headline


def test_plan_section_says_how_many_more_units() -> None:
    """The plan is for the always-valid test at the report's horizon and α / family: units per
    arm from sequential_units_needed on the control's (smoothed) rate, more units for all arms;
    with enough units it says so."""
    data = _data([_rates("a", 3_000, 150, 30), _rates("b", 3_000, 160, 30)])
    report = report_from_data(data, EXPERIMENT, ReportOptions(mde=0.2, power=0.9), now_ms=0)
    plan = report.plan
    assert plan is not None and plan.test == "always_valid"
    assert plan.comparisons == 2 and plan.alpha == pytest.approx(0.025)
    baseline = 151 / 3_002
    assert plan.baseline_rate == pytest.approx(baseline)
    assert plan.relative_effect == pytest.approx(0.2)
    needed = sequential_units_needed(
        baseline, baseline * 1.2, horizon_units=report.horizon_units, alpha=0.025, power=0.9
    )
    assert plan.units_per_arm_needed == needed
    assert plan.more_units == 2 * (needed - 3_000)
    assert plan.power_now < 0.9
    assert plan.sentence.startswith(f"About {plan.more_units:,} more units to detect +1.01 pp")
    done = report_from_data(
        _data([_rates("a", 90_000, 4_500, 900), _rates("b", 90_000, 4_600, 900)]),
        EXPERIMENT,
        ReportOptions(mde=0.2),
        now_ms=0,
    ).plan
    assert done is not None and done.more_units == 0 and done.power_now > 0.8
    assert done.sentence.startswith("Enough units to detect")
