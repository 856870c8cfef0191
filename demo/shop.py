"""The demo shop's experiments, as a marketer would define them (``POST /v1/experiments``).

Five experiments on five placements:

- ``hero-banner`` (``home_hero``): A/B test, fixed split, 10% holdout, primary metric
  ``purchase``;
- ``carousel-order`` (``product_carousel``): a ``vw_cb`` contextual bandit (SquareCB) over
  eight sort orders with per-action features, learning from clicks within a 3-second reward
  window (short, because the demo compresses days into seconds);
- ``discount-offer`` (``offer``): 10% off for half the shoppers, at most 3 times per 7 days
  (then the default: no offer);
- ``newsletter-subject`` (``newsletter_subject``): three subject lines, Thompson sampling on
  opens;
- ``newsletter-send-time`` (``newsletter_send_time``): the local hour to send at,
  ``send_time_thompson``, 10% holdout sent at the default 10h local.
"""

from __future__ import annotations

from typing import Final

import msgspec

from demo.world import HERO_VARIANTS, SORTS, SUBJECTS
from tailor_contract.definitions import ExperimentSpec

__all__ = [
    "CAROUSEL",
    "CAROUSEL_DEFAULT",
    "EMAIL_PLACEMENTS",
    "HERO",
    "OFFER",
    "OFFER_CAP",
    "SEND_TIME",
    "SUBJECT",
    "SUBJECT_DEFAULT",
    "WEB_PLACEMENTS",
    "email_window_s",
    "experiments",
]

HERO: Final = "hero-banner"
CAROUSEL: Final = "carousel-order"
OFFER: Final = "discount-offer"
SUBJECT: Final = "newsletter-subject"
SEND_TIME: Final = "newsletter-send-time"
WEB_PLACEMENTS: Final = ("home_hero", "product_carousel", "offer")
EMAIL_PLACEMENTS: Final = ("newsletter_subject", "newsletter_send_time")
OFFER_CAP: Final = 3
CAROUSEL_DEFAULT: Final = "bestsellers"
SUBJECT_DEFAULT: Final = "plain"
DEFAULT_SEND_HOUR: Final = 10
CAROUSEL_WINDOW_S: Final = 3
EMAIL_WINDOW_S: Final = 5 * 86400
"""The email experiments' reward (and attribution) window: day d's newsletter is sent during
the (d+1)-th UTC day after its decisions, so a run of ``days`` days needs ``days + 1`` days and
the readers' delay (`email_window_s`); the default run's three days fit five."""


def email_window_s(days: int) -> int:
    """The email reward window for a run of ``days`` simulated days: every newsletter's opens
    within it. A shorter one left the later newsletters' opens out of the reports (their
    off-policy values came out at a third to a half of the truth, and the per-recipient uplift
    counted only the first newsletter's opens)."""
    return max(EMAIL_WINDOW_S, (days + 2) * 86400)


_HERO_PAYLOADS: Final = {
    "control": {"img": "hero-classic.jpg", "headline": "Welcome back"},
    "spring": {"img": "hero-spring.jpg", "headline": "Spring is here: new colours"},
}
_SORT_FEATURES: Final = {
    "bestsellers": {"price_band": "mid", "freshness": "any", "audience": "all"},
    "new_in": {"price_band": "high", "freshness": "new", "audience": "all"},
    "deals": {"price_band": "low", "freshness": "any", "audience": "all"},
    "premium": {"price_band": "high", "freshness": "any", "audience": "adults"},
    "kids": {"price_band": "mid", "freshness": "any", "audience": "kids"},
    "outdoor": {"price_band": "mid", "freshness": "season", "audience": "all"},
    "staff_picks": {"price_band": "mid", "freshness": "new", "audience": "adults"},
    "recently_viewed": {"price_band": "any", "freshness": "any", "audience": "self"},
}
_SUBJECT_LINES: Final = {
    "plain": "This week at the shop",
    "emoji": "🌷 New in this week",
    "question": "Ready for spring?",
}


def experiments(email_window: int = EMAIL_WINDOW_S) -> list[ExperimentSpec]:
    """The five definitions, validated locally as the server will validate them
    (``email_window``: the email experiments' reward window, see `email_window_s`)."""
    specs = [
        {
            "key": HERO,
            "name": "Home-page hero banner",
            "hypothesis": "A seasonal hero image makes more visitors buy.",
            "placement": "home_hero",
            "variants": [
                {"key": v, "weight": 1, "payload": _HERO_PAYLOADS[v]} for v in HERO_VARIANTS
            ],
            "default_variant": "control",
            "policy": {"kind": "fixed"},
            "holdout": 0.1,
            "primary_metric": "purchase",
            "reward_window_s": 3600,
        },
        {
            "key": CAROUSEL,
            "name": "Product carousel order",
            "hypothesis": "The best order depends on who is looking and on what device.",
            "placement": "product_carousel",
            "variants": [
                {"key": s, "payload": {"sort": s}, "features": {"sort": s, **_SORT_FEATURES[s]}}
                for s in SORTS
            ],
            "default_variant": CAROUSEL_DEFAULT,
            "policy": {
                "kind": "vw_cb",
                "exploration": "squarecb",
                "gamma_scale": 100.0,
                "interactions": ["UA"],
                "extra_args": ["-l", "0.5"],
            },
            "primary_metric": "click",
            "reward_window_s": CAROUSEL_WINDOW_S,
            # "sum": every decision reaches the learner when its window closes, clicks and
            # non-clicks alike (under "first" a click would arrive a whole window before the
            # non-clicks, and a model updated every second would chase its own recent picks).
            "reward": {
                "rules": [{"type": "click", "reward": 1.0}],
                "aggregation": "sum",
                "max_reward": 1.0,
            },
        },
        {
            "key": OFFER,
            "name": "10% off, at most 3 times a week",
            "hypothesis": "A discount lifts purchases; showing it too often trains people to wait.",
            "placement": "offer",
            "variants": [
                {"key": "none", "weight": 1, "payload": {}},
                {"key": "ten_off", "weight": 1, "payload": {"code": "TEN", "percent": 10}},
            ],
            "default_variant": "none",
            "policy": {"kind": "fixed"},
            "frequency_cap": {
                "max_exposures": OFFER_CAP,
                "window_s": 7 * 86400,
                "scope": "variant",
            },
            "primary_metric": "purchase",
            "reward_window_s": 3600,
        },
        {
            "key": SUBJECT,
            "name": "Newsletter subject line",
            "placement": "newsletter_subject",
            "variants": [{"key": k, "payload": {"subject": _SUBJECT_LINES[k]}} for k in SUBJECTS],
            "default_variant": SUBJECT_DEFAULT,
            "policy": {"kind": "thompson", "min_share": 0.05},
            "primary_metric": "email_open",
            "reward_window_s": email_window,
        },
        {
            "key": SEND_TIME,
            "name": "Newsletter send time",
            "hypothesis": "Sending when each reader reads email lifts opens.",
            "placement": "newsletter_send_time",
            "kind": "send_time",
            "send_time": {
                "hours": "hour_of_day",
                "default": {"kind": "local_hour", "hour": DEFAULT_SEND_HOUR},
            },
            "policy": {"kind": "send_time_thompson", "n_hours": 24, "min_share": 0.1},
            "holdout": 0.1,
            "primary_metric": "email_open",
            "reward_window_s": email_window,
        },
    ]
    return [msgspec.convert(spec, ExperimentSpec) for spec in specs]
