"""The change detectors: the CUSUM, silent on a steady world (even a biased model) and quick on a
drop; the cell-level test, calibrated on a steady world and quick when each cell's best arm
moves."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.drift import (
    SHIFT_MIN_TRIALS,
    SHIFT_WARMUP,
    SHIFT_WINDOW,
    SHIFT_Z,
    SLACK,
    WARMUP,
    CellShift,
    Cusum,
    slack_for,
)


def _residuals(n: int, rate: float, predicted: float, rng: np.random.Generator) -> np.ndarray:
    """Standardised residuals of Bernoulli rewards at ``rate`` against a model predicting
    ``predicted``."""
    sd = np.sqrt(predicted * (1 - predicted))
    return ((rng.random(n) < rate) - predicted) / sd


def test_no_alarm_on_a_steady_world_even_with_an_optimistic_model() -> None:
    """200,000 examples of a steady 6% click rate against a model predicting 6.5% (the
    optimism of picking the arms it over-rates): no alarm."""
    detector = Cusum()
    rng = np.random.default_rng(0)
    alarms = sum(detector.update(float(r)) for r in _residuals(200_000, 0.06, 0.065, rng))
    assert alarms == 0 and detector.alarms == 0


def test_alarm_soon_after_a_drop_then_silence_while_warming_up() -> None:
    """After 30,000 steady examples the rate drops from 6% to 2%: the alarm comes within 2,000
    examples; the detector then restarts and stays silent for its warm-up."""
    detector = Cusum()
    rng = np.random.default_rng(1)
    for r in _residuals(30_000, 0.06, 0.06, rng):
        assert not detector.update(float(r))
    after = _residuals(20_000, 0.02, 0.06, rng)
    when = next(i for i, r in enumerate(after) if detector.update(float(r)))
    assert when < 2_000
    assert detector.alarms == 1 and detector.stat == 0.0
    assert not any(detector.update(float(r)) for r in after[when + 1 : when + 1 + WARMUP])


def test_more_arms_more_slack() -> None:
    """Up to 8 arms the slack is SLACK; beyond, it grows like sqrt(ln arms) (0.11 for 50)."""
    assert slack_for(2) == slack_for(8) == SLACK
    assert slack_for(50) == pytest.approx(SLACK * np.sqrt(np.log(50) / np.log(8)))
    assert 0.109 < slack_for(50) < 0.11


def test_with_fifty_arms_a_moving_optimism_is_rarely_an_alarm_but_a_drop_is() -> None:
    """After 20,000 steady examples the model's optimism about the arm it plays grows by 0.095
    standard deviations (a new crossing of more cells): over ten seeds, eight arms' slack
    takes that for a fall nearly always, fifty arms' slack seldom; a drop from 6% to 2% is an
    alarm with either slack within 2,000 examples."""
    alarms = {8: 0, 50: 0}
    for arms in alarms:
        slack = slack_for(arms)
        for seed in range(10):
            detector = Cusum()
            rng = np.random.default_rng(seed)
            for r in _residuals(20_000, 0.06, 0.06, rng):
                assert not detector.update(float(r), slack)
            shifted = _residuals(5_000, 0.06, 0.06, rng) - 0.095
            alarms[arms] += any([detector.update(float(r), slack) for r in shifted])
        detector = Cusum()
        rng = np.random.default_rng(11)
        for r in _residuals(20_000, 0.06, 0.06, rng):
            detector.update(float(r), slack)
        assert any(detector.update(float(r), slack) for r in _residuals(2_000, 0.02, 0.06, rng))
    assert alarms[8] >= 9 and alarms[50] <= 3


def _feed(
    detector: CellShift,
    n: int,
    rates: np.ndarray,
    predicted: np.ndarray,
    rng: np.random.Generator,
    posterior_var: float = 1e-5,
) -> list[int]:
    """Feed ``n`` examples of a policy playing each cell's predicted best arm (``rates`` and
    ``predicted``: shape (cells, arms)); returns the indices of the alarms."""
    alarms = []
    cells = rng.integers(len(rates), size=n)
    u = rng.random(n)
    for i, (c, x) in enumerate(zip(cells.tolist(), u.tolist(), strict=True)):
        arm = int(np.argmax(predicted[c]))
        p = float(predicted[c, arm])
        reward = float(x < rates[c, arm])
        if detector.update(f"{c}\x1fv{arm}", reward, p, p * (1 - p), posterior_var):
            alarms.append(i)
    return alarms


def _cells_world(cells: int, rng: np.random.Generator) -> np.ndarray:
    rates = np.full((cells, 8), 0.05)
    rates[np.arange(cells), rng.integers(8, size=cells)] = 0.09
    return rates


def test_cell_shift_is_calibrated_and_silent_on_a_steady_world() -> None:
    """A model right about every cell: over 50 windows the statistic looks standard normal
    (mean near 0, no window above the threshold) and nothing alarms."""
    rng = np.random.default_rng(2)
    rates = _cells_world(15, rng)
    detector = CellShift()
    zs = []
    for _ in range(50):
        assert _feed(detector, SHIFT_WINDOW, rates, rates, rng) == []
        zs.append(detector.last_z)
    assert abs(float(np.mean(zs))) < 0.6 and max(zs) < SHIFT_Z
    assert detector.alarms == 0


def test_cell_shift_alarms_within_two_windows_when_each_cells_best_arm_moves() -> None:
    """Every cell's best arm moves (the one played falls from 9% to 5%): an alarm within two
    windows, where the overall mean residual moves by about a sixth of a standard deviation."""
    rng = np.random.default_rng(3)
    before = _cells_world(15, rng)
    detector = CellShift()
    assert _feed(detector, 3 * SHIFT_WINDOW, before, before, rng) == []
    after = _cells_world(15, rng)
    alarms = _feed(detector, 2 * SHIFT_WINDOW, after, before, rng)
    assert alarms and alarms[0] < 2 * SHIFT_WINDOW
    assert detector.alarms == len(alarms) and detector.seen < SHIFT_WINDOW


def test_cell_shift_adds_up_an_arm_over_cells_too_thin_to_test() -> None:
    """With 400 cells no (cell, arm) reaches SHIFT_MIN_TRIALS in a window; the arm-level sum
    still sees the drop of the arms played."""
    rng = np.random.default_rng(4)
    predicted = np.full((400, 8), 0.05)
    predicted[:, 0] = 0.09  # the model plays v0 everywhere
    assert SHIFT_WINDOW / 400 < SHIFT_MIN_TRIALS
    detector = CellShift()
    assert _feed(detector, SHIFT_WARMUP * SHIFT_WINDOW, predicted, predicted, rng) == []
    worse = predicted.copy()
    worse[:, 0] = 0.06
    assert len(_feed(detector, SHIFT_WINDOW, worse, predicted, rng)) == 1


def test_cell_shift_counts_the_posterior_uncertainty() -> None:
    """A cell whose posterior is wide (little data behind the prediction) does not alarm on a
    deviation its own uncertainty explains."""
    rng = np.random.default_rng(5)
    rates = _cells_world(15, rng)
    off = rates + 0.04  # every prediction 4 points too high
    n = (SHIFT_WARMUP + 2) * SHIFT_WINDOW
    assert _feed(CellShift(), n, rates, off, rng, posterior_var=0.04**2 * 4) == []
    assert _feed(CellShift(), n, rates, off, rng, posterior_var=1e-6) != []


def test_cell_shift_is_silent_while_warming_up_after_the_start_and_a_reset() -> None:
    """A model wrong everywhere raises nothing in the first SHIFT_WARMUP windows, then alarms;
    after the alarm (and after a reset) the warm-up starts again."""
    rng = np.random.default_rng(6)
    rates = _cells_world(15, rng)
    wrong = rates + 0.05
    detector = CellShift()
    warm = SHIFT_WARMUP * SHIFT_WINDOW
    assert _feed(detector, warm, rates, wrong, rng) == []
    assert detector.last_z > SHIFT_Z
    assert _feed(detector, SHIFT_WINDOW, rates, wrong, rng) == [SHIFT_WINDOW - 1]
    assert _feed(detector, warm, rates, wrong, rng) == []
    detector.reset()
    assert _feed(detector, warm, rates, wrong, rng) == []
