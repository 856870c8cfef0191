"""The simulated shop's customers and the truth the demo checks Tailor against.

Everything here is known to the simulation and hidden from Tailor, which only sees decisions
asked for and outcomes reported through the HTTP API:

- **Shoppers** have a ``segment`` (bargain hunter, trend seeker, family, luxury), a usual
  ``device``, an activity level (a few visit often, most rarely: a Gamma(0.7) weight), a time
  zone, whether they take the newsletter, and the local hour they read email (07h, 12h or 20h).
- **Hero banner**: a visit ends in a purchase with probability ``HERO_PURCHASE[variant]``
  (``spring`` lifts it from 3.5% to 7.5%: a large effect, so that a few thousand shoppers are
  enough for the report to find it) times the offer's multiplier (``ten_off`` x1.3).
- **Product carousel**: a click with probability ``carousel_ctr()[segment, device, sort]``:
  3% + the segment's favourite sorts (+12 pp, +8 pp) + the device's (+8 pp), so the best sort
  depends on both (``best_sorts``).
- **Newsletter**: an open with probability ``open_probability(local hour, reading hour,
  subject)``: 2% + 30 pp around the reader's hour (Gaussian, sd 1.5 h, circular) times the
  subject line's multiplier (the emoji subject x1.35).

The ``*_truth`` functions turn what was actually shown into the quantities a report estimates
(per-unit conversion probabilities, policy values), so the summary can print them side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "DEVICES",
    "HERO_PURCHASE",
    "HERO_VARIANTS",
    "OFFER_MULTIPLIER",
    "OFFER_VARIANTS",
    "PEAK_HOURS",
    "SEGMENTS",
    "SORTS",
    "SUBJECTS",
    "ZONES",
    "Population",
    "best_sorts",
    "carousel_ctr",
    "conversion_probability",
    "hero_truth",
    "make_population",
    "open_probability",
    "purchase_probability",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SEGMENTS: Final = ("bargain_hunter", "trend_seeker", "family", "luxury")
SEGMENT_SHARES: Final = (0.3, 0.25, 0.25, 0.2)
DEVICES: Final = ("mobile", "desktop")
MOBILE_SHARE: Final = 0.6
SORTS: Final = (
    "bestsellers",
    "new_in",
    "deals",
    "premium",
    "kids",
    "outdoor",
    "staff_picks",
    "recently_viewed",
)
ZONES: Final = (
    "America/Los_Angeles",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
)
PEAK_HOURS: Final = (7, 12, 20)
PEAK_SHARES: Final = (0.3, 0.3, 0.4)
NEWSLETTER_SHARE: Final = 0.7
HISTORY_SHARE: Final = 0.25  # of subscribers: a few past opens around their reading hour

HERO_VARIANTS: Final = ("control", "spring")
HERO_PURCHASE: Final = {"control": 0.035, "spring": 0.075}
OFFER_VARIANTS: Final = ("none", "ten_off")
OFFER_MULTIPLIER: Final = {"none": 1.0, "ten_off": 1.3}
SUBJECTS: Final = {"plain": 1.0, "emoji": 1.35, "question": 0.85}

CAROUSEL_BASE: Final = 0.03
# Segment -> (favourite sort, +12 pp), (second favourite, +8 pp).
SEGMENT_TASTE: Final = {
    "bargain_hunter": ("deals", "bestsellers"),
    "trend_seeker": ("new_in", "staff_picks"),
    "family": ("kids", "outdoor"),
    "luxury": ("premium", "new_in"),
}
# Device -> sorts that work better on it (+8 pp).
DEVICE_TASTE: Final = {"mobile": ("bestsellers", "outdoor"), "desktop": ("staff_picks",)}
ALL_ROUNDER: Final = ("recently_viewed", 0.03)

OPEN_BASE: Final = 0.02
OPEN_PEAK: Final = 0.30
OPEN_SD_HOURS: Final = 1.5


class Population(msgspec.Struct, frozen=True, kw_only=True):
    """The shoppers, one entry per unit in every array (index = unit number)."""

    unit_ids: list[str]
    segment: IntArray  # index into SEGMENTS
    device: IntArray  # usual device, index into DEVICES
    activity: FloatArray  # visit weight, sums to 1
    zone: IntArray  # index into ZONES
    peak_hour: IntArray  # local hour they read email
    subscribed: BoolArray
    history_opens: IntArray  # past email opens to record before the demo (0 for most)

    @property
    def size(self) -> int:
        """Number of shoppers."""
        return len(self.unit_ids)


def make_population(size: int, rng: np.random.Generator) -> Population:
    """Draw ``size`` shoppers (deterministic given ``rng``'s state)."""
    segment = rng.choice(len(SEGMENTS), size=size, p=SEGMENT_SHARES)
    device = (rng.random(size) >= MOBILE_SHARE).astype(np.int64)
    weight = rng.gamma(0.7, size=size) + 1e-6
    zone = rng.integers(0, len(ZONES), size=size)
    peak = np.asarray(PEAK_HOURS)[rng.choice(len(PEAK_HOURS), size=size, p=PEAK_SHARES)]
    subscribed = rng.random(size) < NEWSLETTER_SHARE
    history = np.where(
        subscribed & (rng.random(size) < HISTORY_SHARE), rng.integers(2, 4, size=size), 0
    )
    return Population(
        unit_ids=[f"shopper-{i:05d}" for i in range(size)],
        segment=segment.astype(np.int64),
        device=device,
        activity=weight / weight.sum(),
        zone=zone.astype(np.int64),
        peak_hour=peak.astype(np.int64),
        subscribed=subscribed,
        history_opens=history.astype(np.int64),
    )


def carousel_ctr() -> FloatArray:
    """Click-through rate of each sort, shape ``(len(SEGMENTS), len(DEVICES), len(SORTS))``."""
    ctr = np.full((len(SEGMENTS), len(DEVICES), len(SORTS)), CAROUSEL_BASE)
    for s, segment in enumerate(SEGMENTS):
        first, second = SEGMENT_TASTE[segment]
        ctr[s, :, SORTS.index(first)] += 0.12
        ctr[s, :, SORTS.index(second)] += 0.08
    for d, device in enumerate(DEVICES):
        for sort in DEVICE_TASTE[device]:
            ctr[:, d, SORTS.index(sort)] += 0.08
    ctr[:, :, SORTS.index(ALL_ROUNDER[0])] += ALL_ROUNDER[1]
    return ctr


def best_sorts() -> IntArray:
    """Index of the best sort per (segment, device), shape ``(len(SEGMENTS), len(DEVICES))``."""
    return np.asarray(carousel_ctr().argmax(axis=2), dtype=np.int64)


def purchase_probability(hero: str, offer: str) -> float:
    """Chance that a visit ends in a purchase, given the hero banner and offer shown."""
    return HERO_PURCHASE[hero] * OFFER_MULTIPLIER[offer]


def conversion_probability(per_visit: Sequence[float]) -> float:
    """Chance that a unit buys at least once over visits with these purchase probabilities."""
    return float(1.0 - np.prod(1.0 - np.asarray(per_visit, dtype=np.float64)))


def hero_truth(offers_by_unit: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean per-unit conversion probability had every unit seen each hero variant.

    ``offers_by_unit`` lists, for each unit in the test, the offer shown at each of its visits
    (what the hero variant is combined with). The difference between two variants' values is
    the lift a report of per-unit conversion estimates over these units.
    """
    if not offers_by_unit:
        return {hero: float("nan") for hero in HERO_VARIANTS}
    return {
        hero: float(
            np.mean(
                [
                    conversion_probability([purchase_probability(hero, o) for o in offers])
                    for offers in offers_by_unit
                ]
            )
        )
        for hero in HERO_VARIANTS
    }


def open_probability(local_hour: int, peak_hour: int, subject: str) -> float:
    """Chance that an email sent at ``local_hour`` (recipient's clock) is opened."""
    gap = abs(local_hour - peak_hour) % 24
    distance = min(gap, 24 - gap)
    bump = OPEN_PEAK * float(np.exp(-(distance**2) / (2 * OPEN_SD_HOURS**2)))
    return (OPEN_BASE + bump) * SUBJECTS[subject]
