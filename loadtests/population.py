"""The synthetic world of ``loadgen.py``: six placements, their experiments, 100,000 profiles.

Placements and the policy kind of the experiment serving each (``vw_only`` makes all six
``vw_cb``): two ``fixed`` A/B/n splits with targeting over profile features, two ``thompson``
(per segment) and two ``vw_cb`` (10 variants with per-action features, ``-q UA``). Learning
experiments reward a click or a purchase with 1 within ``reward_window_s``.

Profiles (segment, device, 14 numeric features, a category list, a flag) are written straight
into Redis in the server's key format (:func:`decision_api.profiles.store.unit_key` and
:func:`~decision_api.profiles.store.encode_feature`), pipelined: about 100,000 units in a few
seconds.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import redis

from decision_api.profiles.store import encode_feature, unit_key

ADMIN_KEY = "loadgen-admin-key"
CLIENT_KEY = "loadgen-client-key"
PREFIX = "loadgen"
SEGMENTS = ["new", "regular", "vip", "lapsed"]
DEVICES = ["mobile", "desktop", "tablet"]
CATEGORIES = ["shoes", "bags", "outdoor", "kids", "beauty", "home", "sport", "garden"]
PAGES = ["/", "/sale", "/products/shoes", "/products/bags", "/cart", "/search", "/account"]
GEOS = ["FR", "DE", "GB", "ES", "IT", "NL"]
REFERRERS = ["google", "direct", "email", "facebook", "partner"]

# Placement -> policy kind (the experiment serving it).
PLACEMENTS = {
    "home_hero": "fixed",
    "footer_cta": "fixed",
    "product_recs": "thompson",
    "newsletter_prompt": "thompson",
    "offer_banner": "vw_cb",
    "next_best_action": "vw_cb",
}
REWARD = {
    "rules": [{"type": "click", "reward": 1.0}, {"type": "purchase", "reward": 1.0}],
    "aggregation": "first",
    "default": 0.0,
}


# ---------------------------------------------------------------------------------------------
# Experiments and population


def policy_config(kind: str) -> dict[str, Any]:
    """The policy block for one experiment kind."""
    if kind == "thompson":
        return {"kind": "thompson", "segment_by": "segment", "min_segment_trials": 50}
    if kind == "vw_cb":
        return {"kind": "vw_cb", "exploration": "epsilon", "epsilon": 0.05,
                "interactions": ["UA"], "extra_args": ["-l", "0.05"]}  # fmt: skip
    return {"kind": "fixed"}


def variants(kind: str, placement: str) -> list[dict[str, Any]]:
    """Variants: 3 for fixed, 4 for thompson, 10 with per-action features for vw_cb."""
    if kind == "vw_cb":
        return [
            {
                "key": f"offer-{i}",
                "payload": {"headline": f"{placement} offer {i}", "img": f"o{i}.png"},
                "features": {
                    "category": CATEGORIES[i % len(CATEGORIES)],
                    "discount": round(0.05 * (i % 5), 2),
                    "layout": "grid" if i % 2 else "list",
                    "price_band": ["low", "mid", "high"][i % 3],
                    "free_shipping": bool(i % 3 == 0),
                },
            }
            for i in range(10)
        ]
    n = 4 if kind == "thompson" else 3
    return [
        {"key": f"v{i}", "weight": 1 + (i == n - 1),
         "payload": {"headline": f"{placement} variant {i}", "img": f"{placement}-{i}.png"}}
        for i in range(n)
    ]  # fmt: skip


def experiments(vw_only: bool, window_s: int) -> list[dict[str, Any]]:
    """One running experiment per placement (all ``vw_cb`` with ``vw_only``)."""
    out = []
    for placement, planned in PLACEMENTS.items():
        kind = "vw_cb" if vw_only else planned
        definition: dict[str, Any] = {
            "key": placement.replace("_", "-") + "-exp",
            "placement": placement,
            "variants": variants(kind, placement),
            "default_variant": "offer-0" if kind == "vw_cb" else "v0",
            "policy": policy_config(kind),
            "holdout": 0.05,
            "primary_metric": "purchase",
            "guardrail_metrics": ["unsubscribe"],
            "reward_window_s": window_s,
        }
        if kind != "fixed":
            definition["reward"] = REWARD
        if placement == "home_hero":  # reads profile features, like most real targeting
            definition["targeting"] = {"any": [
                {"attribute": "visits_30d", "op": "gte", "value": 0},
                {"attribute": "segment", "op": "in", "value": SEGMENTS},
            ]}  # fmt: skip
        elif placement == "footer_cta":
            definition["targeting"] = {"all": [{"attribute": "segment", "op": "ne",
                                                "value": "lapsed"}]}  # fmt: skip
        out.append(definition)
    return out


def setup_experiments(url: str, definitions: list[dict[str, Any]]) -> None:
    """Create and start the experiments through the admin API."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for definition in definitions:
            http.post("/v1/experiments", json=definition).raise_for_status()
            http.post(f"/v1/experiments/{definition['key']}/start").raise_for_status()


def profiles(units: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Synthetic profiles: segment, device, 14 numeric features, a category list, a flag."""
    seg = rng.integers(0, len(SEGMENTS), units)
    dev = rng.choice(len(DEVICES), units, p=[0.6, 0.3, 0.1])
    numeric = {
        "ltv": rng.gamma(2.0, 60.0, units).round(2),
        "visits_30d": rng.poisson(4, units),
        "sessions_7d": rng.poisson(2, units),
        "avg_order_value": rng.gamma(3.0, 20.0, units).round(2),
        "orders_90d": rng.poisson(1.2, units),
        "days_since_last_visit": rng.integers(0, 120, units),
        "cart_adds_30d": rng.poisson(1.5, units),
        "email_open_rate": rng.beta(2, 5, units).round(3),
        "email_click_rate": rng.beta(1, 12, units).round(3),
        "churn_risk": rng.beta(2, 3, units).round(3),
        "discount_affinity": rng.beta(2, 2, units).round(3),
        "price_sensitivity": rng.beta(3, 2, units).round(3),
        "pages_per_session": rng.gamma(2.0, 2.5, units).round(2),
        "tenure_days": rng.integers(1, 2000, units),
    }
    cats = rng.integers(0, len(CATEGORIES), (units, 2))
    columns = {name: values.tolist() for name, values in numeric.items()}
    out = []
    for i in range(units):
        features: dict[str, Any] = {"segment": SEGMENTS[seg[i]], "device": DEVICES[dev[i]]}
        for name, values in columns.items():
            features[name] = values[i]
        features["favourite_categories"] = [CATEGORIES[cats[i, 0]], CATEGORIES[cats[i, 1]]]
        features["newsletter"] = bool(i % 3)
        out.append(features)
    return out


def load_population(redis_url: str, units: int, rng: np.random.Generator) -> float:
    """Write every unit's profile hash in the server's key format, pipelined; returns seconds."""
    started = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    population = profiles(units, rng)
    chunk = 5000
    for start in range(0, units, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(units, start + chunk)):
            key = unit_key(PREFIX, f"u-{i}")
            fields = {"f:" + k: encode_feature(v) for k, v in population[i].items()}
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, 30 * 86400)
        pipe.execute()
    client.close()
    return time.perf_counter() - started
