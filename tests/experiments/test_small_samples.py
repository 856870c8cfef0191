"""Small samples and power, by simulation: vectorised over experiments with numpy, fixed seeds.

* The always-valid test read after *every* unit of an A/A test keeps its false-positive rate
  at or below α = 5% at base rates 1%, 5%, 30% and 70% (2,000 experiments each). Before the
  Agresti–Caffo moments it was 7.2% at 30% and 70% in this very simulation (the plug-in
  variance of 0 of 2 against 2 of 2 is 0, and Λ was infinite).
* The fixed-horizon 95% interval covers 0 in 94–96% of 10,000 A/A experiments.
* The always-valid test's power at the planned horizon is at least the planned 80%.

With 2,000 experiments the binomial standard error of a 5% rate is 0.49 points; with 10,000 the
standard error of a 95% coverage is 0.22 points.
"""

from __future__ import annotations

import numpy as np
import pytest

from experiments.statistics.frequentist import proportion_lift
from experiments.statistics.power import sequential_horizon_units, sequential_proportion_power
from experiments.statistics.sequential import proportion_p_values
from experiments.statistics.summaries import MetricSummary

RUNS = 2_000
HORIZON = 2_000
UNITS = 4_000  # read after every unit up to twice the horizon
CHUNK = 250


def _aa_false_positive_rate(rate: float, seed: int) -> float:
    """Share of A/A experiments (units split by coin flip, ``rate`` in both arms) in which the
    always-valid p-value drops to 5% at some look, reading after every unit once both arms have
    2 units, as a report does."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for start in range(0, RUNS, CHUNK):
        runs = min(CHUNK, RUNS - start)
        treated = rng.random((runs, UNITS)) < 0.5
        converted = rng.random((runs, UNITS)) < rate
        n_t = np.cumsum(treated, axis=1)
        n_c = np.arange(1, UNITS + 1) - n_t
        c_t = np.cumsum(treated & converted, axis=1)
        c_c = np.cumsum(~treated & converted, axis=1)
        p = proportion_p_values(c_c, n_c, c_t, n_t, horizon_units=HORIZON)
        looked = (n_c >= 2) & (n_t >= 2)
        rejected += int(np.any(looked & (p <= 0.05), axis=1).sum())
    return rejected / RUNS


@pytest.mark.parametrize(("rate", "seed"), [(0.01, 1), (0.05, 2), (0.30, 3), (0.70, 4)])
def test_sequential_aa_false_positive_rate_read_after_every_unit(rate: float, seed: int) -> None:
    """Regression: read after every unit, the A/A false-positive rate was 7.2% at a 30% base
    rate (8.25% in the issue's run). Now it is at most 5% at 1%, 5%, 30% and 70%."""
    assert _aa_false_positive_rate(rate, seed) <= 0.05


@pytest.mark.parametrize(
    ("rate", "n", "seed"),
    [(0.01, 5_000, 11), (0.05, 1_000, 12), (0.30, 1_000, 13), (0.70, 300, 14)],
)
def test_fixed_interval_aa_coverage_is_95_percent(rate: float, n: int, seed: int) -> None:
    """The fixed-horizon 95% interval of the rate difference covers the true 0 in 94–96% of
    10,000 A/A experiments (n units per arm)."""
    rng = np.random.default_rng(seed)
    conversions = rng.binomial(n, rate, size=(10_000, 2)).astype(float)
    covered = [
        proportion_lift(
            MetricSummary(n=n, total=c, total_sq=c), MetricSummary(n=n, total=t, total_sq=t)
        ).absolute.contains(0.0)
        for c, t in conversions
    ]
    assert 0.94 <= float(np.mean(covered)) <= 0.96


def _sequential_power_by_simulation(
    p_c: float, p_t: float, horizon: int, looks: int, seed: int
) -> float:
    """Share of 2,000 experiments with p_c vs p_t (horizon/2 units per arm in the end) in which
    the always-valid test rejects at one of ``looks`` equally spaced looks."""
    rng = np.random.default_rng(seed)
    per_look = horizon // 2 // looks
    c_c = np.cumsum(rng.binomial(per_look, p_c, size=(RUNS, looks)), axis=1)
    c_t = np.cumsum(rng.binomial(per_look, p_t, size=(RUNS, looks)), axis=1)
    n = per_look * np.arange(1, looks + 1)
    p = proportion_p_values(c_c, n, c_t, n, horizon_units=horizon)
    return float(np.mean(np.any(p <= 0.05, axis=1)))


def test_power_at_the_planned_horizon_is_the_planned_power() -> None:
    """Regression: the old default horizon (the fixed test's 2 × 31,231 units) left the
    always-valid test 41% power read once at the horizon (simulated: within 0.03), and about
    50% read at 20 equally spaced looks. At the horizon planned for it the test has 80% power
    read once (±0.03 of the formula) and at least 80% read 20 times."""
    p_c, p_t = 0.05, 0.055
    old = 62_462
    old_once = _sequential_power_by_simulation(p_c, p_t, old, 1, seed=21)
    assert sequential_proportion_power(p_c, p_t, old / 2, horizon_units=old) == pytest.approx(
        old_once, abs=0.03
    )
    assert old_once < 0.45
    assert _sequential_power_by_simulation(p_c, p_t, old, 20, seed=22) < 0.6
    new = sequential_horizon_units(p_c, p_t)
    once = _sequential_power_by_simulation(p_c, p_t, new, 1, seed=23)
    assert once == pytest.approx(0.80, abs=0.03)
    assert _sequential_power_by_simulation(p_c, p_t, new, 20, seed=24) >= 0.80
