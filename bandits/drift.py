"""A one-sided CUSUM that tells when the world got worse than the model expects.

Fed, per learned example, the reward minus the model's predicted mean for the chosen arm,
divided by the reward's standard deviation (a *standardised residual*), it keeps

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

from typing import Final

import msgspec

__all__ = ["Cusum"]

SLACK: Final = 0.08
THRESHOLD: Final = 50.0
WARMUP: Final = 2_000
BIAS_HALF_LIFE: Final = 20_000
_BIAS_DECAY: Final = 0.5 ** (1.0 / BIAS_HALF_LIFE)


class Cusum(msgspec.Struct, array_like=True):
    """The detector's state (a snapshot field as it is)."""

    stat: float = 0.0
    bias_weight: float = 0.0
    bias_total: float = 0.0
    seen: int = 0
    alarms: int = 0

    def update(self, residual: float) -> bool:
        """Add one standardised residual (``(reward - predicted) / sd``); True on an alarm."""
        self.seen += 1
        self.bias_weight = self.bias_weight * _BIAS_DECAY + 1.0
        self.bias_total = self.bias_total * _BIAS_DECAY + residual
        if self.seen <= WARMUP:
            return False
        bias = self.bias_total / self.bias_weight
        self.stat = max(0.0, self.stat + (bias - residual) - SLACK)
        if self.stat <= THRESHOLD:
            return False
        self.alarms += 1
        self.stat = self.bias_weight = self.bias_total = 0.0
        self.seen = 0
        return True
