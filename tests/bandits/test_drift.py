"""The CUSUM change detector: silent on a steady world (even a biased model), quick on a drop."""

from __future__ import annotations

import numpy as np

from bandits.drift import WARMUP, Cusum


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
