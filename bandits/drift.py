"""Two detectors that tell when the world changed under the model: a one-sided CUSUM of the
residuals (quick on a large drop) and a windowed cell-level test (:class:`CellShift`, for the
change that moves each cell's best arm while the average residual barely moves).

The CUSUM (:class:`Cusum`), fed per learned example the reward minus the model's predicted mean
for the chosen arm, divided by the reward's standard deviation (a *standardised residual*), keeps

- ``bias``: a slow running mean of the residuals (half-life ``BIAS_HALF_LIFE`` examples), so a
  model that is steadily a little optimistic (the arms it picks are the ones it over-rates) does
  not raise alarms by itself;
- ``stat``: ``max(0, stat + (bias - residual) - SLACK)``, which grows while rewards fall short of
  the predictions by more than ``SLACK`` standard deviations on average.

An alarm is raised when ``stat`` exceeds ``THRESHOLD``; the detector then restarts, and is
silent for ``WARMUP`` examples (the model it checks has just been reset). With a drop of
0.17 standard deviations (a click rate falling from 6 % to 2 %) an alarm comes after about
``THRESHOLD / (0.17 - SLACK)`` ~ 600 examples; with no change, residuals of mean ``bias`` give a
Gaussian average run length of about 10^5 examples per false alarm.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

__all__ = ["CellShift", "Cusum", "slack_for"]

SLACK: Final = 0.08
SLACK_ARMS: Final = 8
"""With more arms than this the slack grows like ``sqrt(ln arms)`` (:func:`slack_for`)."""
THRESHOLD: Final = 50.0
WARMUP: Final = 2_000
BIAS_HALF_LIFE: Final = 20_000
_BIAS_DECAY: Final = 0.5 ** (1.0 / BIAS_HALF_LIFE)


def slack_for(arms: int) -> float:
    """The CUSUM's slack for a model choosing among ``arms`` arms: ``SLACK`` up to
    ``SLACK_ARMS`` arms, then ``SLACK * sqrt(ln arms / ln SLACK_ARMS)`` (0.11 for 50 arms).

    The model's prediction for the arm it plays is optimistic (it plays the arms it
    over-rates), by about the largest of the arms' estimation errors, which grows like
    ``sqrt(2 ln arms)`` standard errors; and that optimism moves as the model learns (a new
    crossing of more cells, each played where it looks best). With 50 variants the default
    slack took such a move for a fall of the world (``loadtests/bench_learning.py``, 50
    variants, seed 1: an alarm without a change, the share 0.26 against 0.35 without it).
    """
    if arms <= SLACK_ARMS:
        return SLACK
    return SLACK * math.sqrt(math.log(arms) / math.log(SLACK_ARMS))


class Cusum(msgspec.Struct, array_like=True):
    """The detector's state (a snapshot field as it is)."""

    stat: float = 0.0
    bias_weight: float = 0.0
    bias_total: float = 0.0
    seen: int = 0
    alarms: int = 0

    def update(self, residual: float, slack: float = SLACK) -> bool:
        """Add one standardised residual (``(reward - predicted) / sd``); True on an alarm.
        ``slack``: see :func:`slack_for`."""
        self.seen += 1
        self.bias_weight = self.bias_weight * _BIAS_DECAY + 1.0
        self.bias_total = self.bias_total * _BIAS_DECAY + residual
        if self.seen <= WARMUP:
            return False
        bias = self.bias_total / self.bias_weight
        self.stat = max(0.0, self.stat + (bias - residual) - slack)
        if self.stat <= THRESHOLD:
            return False
        self.alarms += 1
        self.stat = self.bias_weight = self.bias_total = 0.0
        self.seen = 0
        return True


SHIFT_WINDOW: Final = 4_000
"""Examples per window of the cell-level test."""
SHIFT_MIN_TRIALS: Final = 20
"""A (cell, arm) enters the test only with this many trials in the window (the arms a policy
plays; rarely explored ones add degrees of freedom and no power)."""
SHIFT_WARMUP: Final = 2
"""Windows after the start and after every reset that are not tested: a young (or just
discounted) model's predictions move with every batch, which the test would read as a change
(a first window of a steady world reached 5.8)."""
SHIFT_Z: Final = 3.5
"""The alarm threshold, in standard normal units of the statistic's Wilson-Hilferty transform
(a one-sided p of about 3e-7 per window)."""


class CellShift(msgspec.Struct, array_like=True):
    """A windowed test of the model's predictions cell by cell (a snapshot field as it is).

    The aggregate CUSUM sees a change only as the average residual over all decisions; when the
    best variant of each cell moves, the arms a policy plays in each cell lose a few points
    while the average moves by a twentieth of a standard deviation, below any slack a steady
    model allows. This test keeps, per (cell, arm) of the served model, the trials ``n``, the
    sum of rewards ``s``, of predictions ``p``, of the rewards' variances ``v`` and of the
    predictions' posterior variances ``u`` over a window of ``SHIFT_WINDOW`` examples; then

        G = sum over (cell, arm) with n >= SHIFT_MIN_TRIALS of (s - p)^2 / (v + n u),

    chi-square with one degree of freedom per term when the model is right (the deviation of a
    cell's rewards from its posterior mean has the reward noise plus the posterior's own
    uncertainty, which is shared by all ``n`` trials). The same is done per arm with each
    arm's deviations summed over its cells (so a drop spread thinly over many cells still
    counts). An alarm when the larger Wilson-Hilferty normal transform exceeds ``SHIFT_Z``,
    except in the first ``SHIFT_WARMUP`` windows after the start or a reset; the window then
    restarts.

    Measured on ``loadtests/bench_learning.py``'s worlds (vw_cb, 50,000 decisions): on steady
    worlds the per-window statistic stayed below 3.3 after the warm-up (additive, 2-way, 3-way,
    rare); after the change half-way it reached 3.8-5.3 within two windows where the CUSUM had
    not fired.
    """

    terms: dict[str, list[float]] = msgspec.field(default_factory=dict)
    seen: int = 0
    alarms: int = 0
    last_z: float = 0.0
    windows: int = 0

    def update(
        self, key: str, reward: float, predicted: float, noise: float, posterior_var: float
    ) -> bool:
        """Add one example of (cell, arm) ``key``; True on an alarm (at a window's end)."""
        term = self.terms.get(key)
        if term is None:
            term = self.terms[key] = [0.0, 0.0, 0.0, 0.0, 0.0]
        term[0] += 1.0
        term[1] += reward
        term[2] += predicted
        term[3] += noise
        term[4] += posterior_var
        self.seen += 1
        if self.seen < SHIFT_WINDOW:
            return False
        self.last_z = self.z()
        self.terms = {}
        self.seen = 0
        self.windows += 1
        if self.last_z <= SHIFT_Z or self.windows <= SHIFT_WARMUP:
            return False
        self.alarms += 1
        self.windows = 0
        return True

    def z(self) -> float:
        """The window's statistic as a standard normal deviate: the larger of the cell-level
        and the arm-level tests (0 without a term)."""
        by_arm: dict[str, list[float]] = {}
        cells = []
        for key, (n, s, p, v, u) in self.terms.items():
            var = v + n * u
            arm = by_arm.setdefault(key.rpartition("\x1f")[2], [0.0, 0.0, 0.0])
            arm[0] += n
            arm[1] += s - p
            arm[2] += var
            if n >= SHIFT_MIN_TRIALS:
                cells.append((s - p) ** 2 / max(var, 1e-12))
        arms = [d * d / max(var, 1e-12) for n, d, var in by_arm.values() if n >= SHIFT_MIN_TRIALS]
        return max(_wilson_hilferty(cells), _wilson_hilferty(arms))

    def reset(self) -> None:
        """Start a new window and a new warm-up (after the model was reset by any alarm)."""
        self.terms = {}
        self.seen = 0
        self.windows = 0


def _wilson_hilferty(terms: list[float]) -> float:
    """A sum of chi-square(1) terms as a standard normal deviate (0 without a term)."""
    if not terms:
        return 0.0
    df = len(terms)
    c = 2.0 / (9.0 * df)
    return float(((sum(terms) / df) ** (1.0 / 3.0) - (1.0 - c)) / c**0.5)
