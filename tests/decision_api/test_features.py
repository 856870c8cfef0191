"""Unit features in Redis: typed upserts and the derived features that behavioural events keep."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.profiles.store import RedisFeatureStore, unit_key
from decision_api.services import Services

pytestmark = pytest.mark.redis_cluster

Client = AsyncTestClient[Litestar]
DAY = 86400


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app; every test uses unit ids of its own."""
    return shared_client


@pytest.fixture
def unit() -> str:
    """A unit id no other test uses."""
    return f"u-{uuid.uuid4().hex[:10]}"


def services_of(client: Client) -> Services:
    """The app's open services."""
    services: Services = client.app.state.services
    return services


@pytest.fixture
def store(client: Client, redis: Redis) -> RedisFeatureStore:
    """A feature store on the app's key prefix, on this test's own Redis connection."""
    settings = services_of(client).settings
    return RedisFeatureStore(redis, settings.redis.key_prefix, settings.redis.profile_ttl_s)


async def profile(store: RedisFeatureStore, unit: str) -> dict[str, Any]:
    """The unit's decoded attributes and hour histograms, as the decision path reads them."""
    (p,) = await store.get_profiles([unit], time.time())
    return {"attributes": p.attributes, "hours": p.hours}


def iso(ts: float) -> str:
    """An RFC 3339 UTC timestamp."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def noon_days_ago(k: int) -> float:
    """12:00 UTC on the day ``k`` days before today (day-bucket arithmetic is then exact)."""
    return (int(time.time() // DAY) - k) * DAY + DAY / 2


async def post_event(client: Client, unit: str, typ: str, ts: float, **extra: Any) -> None:
    """Send one behavioural event with an explicit timestamp."""
    response = await client.post(
        "/v1/events", json={"unit_id": unit, "type": typ, "ts": iso(ts), **extra}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"unit_id": unit, "type": typ}


async def test_typed_features_round_trip(
    client: Client, redis: Redis, unit: str, store: RedisFeatureStore
) -> None:
    """Numbers, strings, booleans, string lists and timestamps are stored typed, with a TTL."""
    features = {"ltv": 120.5, "orders": 7, "tier": "gold", "vip": True, "tags": ["a", "b"],
                "signup": {"ts": "2026-01-02T03:04:05+00:00"}}  # fmt: skip
    put = await client.put(f"/v1/units/{unit}/features", json={"features": features})
    assert put.status_code == 200
    assert put.json()["stored"] == ["ltv", "orders", "signup", "tags", "tier", "vip"]
    attrs = (await profile(store, unit))["attributes"]
    signup = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert {k: attrs[k] for k in features} == {
        "ltv": 120.5, "orders": 7, "tier": "gold", "vip": True, "tags": ["a", "b"],
        "signup": signup,
    }  # fmt: skip
    assert isinstance(attrs["orders"], int) and isinstance(attrs["vip"], bool)
    assert attrs["signup_age_days"] == pytest.approx((time.time() - signup) / DAY, abs=0.01)
    key = unit_key(services_of(client).settings.redis.key_prefix, unit)
    ttl = await redis.ttl(key)
    assert 0 < ttl <= services_of(client).settings.redis.profile_ttl_s


async def test_upsert_overwrites_only_the_named_features(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """A second PUT replaces the features it names and keeps the others."""
    await client.put(f"/v1/units/{unit}/features", json={"features": {"a": 1, "b": "x"}})
    await client.put(f"/v1/units/{unit}/features", json={"features": {"b": "y", "c": False}})
    attrs = (await profile(store, unit))["attributes"]
    assert (attrs["a"], attrs["b"], attrs["c"]) == (1, "y", False)


async def test_events_maintain_counts_value_recency_and_categories(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """Purchases and page views become 7/30/90-day counts, value, AOV, recency and categories."""
    # Oldest first, as a site would send them; the 120-day-old purchase is outside every window.
    await post_event(client, unit, "purchase", noon_days_ago(120), value=1000)
    await post_event(client, unit, "purchase", noon_days_ago(60), value=40)
    await post_event(client, unit, "purchase", noon_days_ago(20), value=20,
                     properties={"category": "shoes"})  # fmt: skip
    await post_event(client, unit, "page_view", noon_days_ago(8))
    await post_event(client, unit, "page_view", noon_days_ago(8))
    await post_event(client, unit, "purchase", noon_days_ago(3), value=30,
                     properties={"category": "bags"})  # fmt: skip
    await post_event(client, unit, "page_view", noon_days_ago(2))
    await post_event(client, unit, "purchase", noon_days_ago(1), value=10,
                     properties={"category": "shoes"})  # fmt: skip
    attrs = (await profile(store, unit))["attributes"]
    now = time.time()
    assert (attrs["purchase_7d"], attrs["purchase_30d"], attrs["purchase_90d"]) == (2, 3, 4)
    assert (attrs["page_view_7d"], attrs["page_view_30d"], attrs["page_view_90d"]) == (1, 3, 3)
    assert attrs["purchase_value_90d"] == pytest.approx(100.0)
    assert attrs["aov_90d"] == pytest.approx(25.0)
    assert attrs["purchase_days_since"] == pytest.approx((now - noon_days_ago(1)) / DAY, abs=0.01)
    assert attrs["page_view_days_since"] == pytest.approx((now - noon_days_ago(2)) / DAY, abs=0.01)
    assert attrs["last_categories"] == ["shoes", "bags"]


async def test_late_event_does_not_move_recency_back(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """An event that arrives late counts in its day but does not make the unit look less recent."""
    await post_event(client, unit, "add_to_cart", noon_days_ago(1))
    await post_event(client, unit, "add_to_cart", noon_days_ago(10))
    attrs = (await profile(store, unit))["attributes"]
    assert attrs["add_to_cart_30d"] == 2
    assert attrs["add_to_cart_days_since"] == pytest.approx(
        (time.time() - noon_days_ago(1)) / DAY, abs=0.01
    )


async def test_last_categories_keeps_the_five_most_recent_distinct(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """``last_categories`` is most recent first, without repeats, and at most five long."""
    for category in ["a", "b", "c", "a", "d", "e", "f", "g"]:
        await post_event(client, unit, "product_view", noon_days_ago(1),
                         properties={"category": category})  # fmt: skip
    attrs = (await profile(store, unit))["attributes"]
    assert attrs["last_categories"] == ["g", "f", "e", "d", "a"]
    assert attrs["product_view_7d"] == 8


async def test_email_opens_build_an_hour_of_week_histogram(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """email_open/email_click events count per UTC hour of week (Monday 00h = bin 0)."""
    today = int(time.time() // DAY)
    monday = (today - (today + 3) % 7 - 7) * DAY  # Monday 00:00 UTC of last week
    opens = [monday + 9 * 3600, monday + 9 * 3600 + 1800, monday + DAY + 18 * 3600]
    for ts in opens:
        await post_event(client, unit, "email_open", ts)
    await post_event(client, unit, "email_click", monday + 6 * DAY + 23 * 3600)
    hours = (await profile(store, unit))["hours"]
    assert datetime.fromtimestamp(monday, UTC).weekday() == 0
    open_bins = {h: n for h, n in enumerate(hours["email_open"]) if n}
    assert open_bins == {9: 2, 24 + 18: 1}
    assert {h: n for h, n in enumerate(hours["email_click"]) if n} == {167: 1}
    assert len(hours["email_open"]) == 168


async def test_event_without_timestamp_counts_now(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """An event without ``ts`` is stamped with the server's clock."""
    response = await client.post("/v1/events", json={"unit_id": unit, "type": "page_view"})
    assert response.status_code == 202
    attrs = (await profile(store, unit))["attributes"]
    assert attrs["page_view_7d"] == 1
    assert attrs["page_view_days_since"] == pytest.approx(0.0, abs=0.001)


async def test_concurrent_events_are_all_counted(
    client: Client, unit: str, store: RedisFeatureStore
) -> None:
    """Fifty concurrent events for one unit are applied atomically: none is lost."""
    ts = iso(noon_days_ago(1))
    responses = await asyncio.gather(
        *[client.post("/v1/events", json={"unit_id": unit, "type": "purchase", "ts": ts,
                                           "value": 2})
          for _ in range(50)]
    )  # fmt: skip
    assert {r.status_code for r in responses} == {202}
    attrs = (await profile(store, unit))["attributes"]
    assert (attrs["purchase_7d"], attrs["purchase_value_90d"]) == (50, 100.0)


async def test_derived_features_drive_targeting(client: Client, unit: str) -> None:
    """A rule on derived features (purchases in 30 days, AOV) matches once the events arrive."""
    tag = uuid.uuid4().hex[:8]
    key, placement = f"loyal-{tag}", f"p-{tag}"
    targeting = {"all": [{"attribute": "purchase_30d", "op": "gte", "value": 2},
                         {"attribute": "aov_90d", "op": "gt", "value": 20}]}  # fmt: skip
    spec = {"key": key, "placement": placement, "variants": [{"key": "a"}, {"key": "b"}],
            "default_variant": "a", "targeting": targeting}  # fmt: skip
    assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    assert (await client.post(f"/v1/experiments/{key}/start")).status_code == 200
    body = {"unit_id": unit, "placements": [placement]}
    await post_event(client, unit, "purchase", noon_days_ago(5), value=30)
    first = (await client.post("/v1/decide", json=body)).json()["decisions"][0]
    assert first["reason"] == "not_targeted"
    await post_event(client, unit, "purchase", noon_days_ago(4), value=20)
    second = (await client.post("/v1/decide", json=body)).json()["decisions"][0]
    assert second["reason"] == "split"
