"""Traffic through the HTTP API: shoppers visit, newsletters go out, outcomes come back.

The demo talks to Tailor the way a shop would: the Python SDK (:class:`sdk.AsyncTailorClient`)
for profiles, behavioural events, decisions, batch decisions and outcomes, and plain HTTP for
the admin calls (experiments, models). The SDK fails open — it answers with the caller's
defaults when the API does not — so every answer's ``fallback`` flag is checked and counted:
a demo that quietly measured defaults would prove nothing.

A simulated **day** is a round of visits followed by one newsletter campaign:

1. ``visits_per_day`` visits by shoppers drawn by activity, each asking ``/v1/decide`` for the
   hero banner, the product carousel and the offer, then reporting a purchase and/or a carousel
   click drawn from the world's known rates (outcomes carry the real time);
2. every subscriber gets the newsletter: ``/v1/decide/batch`` picks the subject line and the
   local send hour within the next simulated day's window; opens are drawn from the hour and
   subject, reported as ``email_open`` outcomes and as behavioural events (the open-hour
   history send-time optimisation reads);
3. the day ends: the demo moves the reward clock forward — every reward window opened that day
   closes now, which is what the server's sweeper does when the windows really end (five days
   later for email) — and waits until the learner has learned the day's emails.

Within a day time is real: the carousel's 3-second reward windows close by themselves and
``vw_cb`` learns continuously from its one-second snapshots.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import numpy as np
from redis.asyncio import Redis

from bandits.join import RewardJoin
from decision_api.settings import RedisSettings
from demo.progress import Progress
from demo.records import EmailRecord, Observations, Plan, VisitRecord
from demo.shop import (
    DEFAULT_SEND_HOUR,
    EMAIL_PLACEMENTS,
    SEND_TIME,
    SUBJECT,
    WEB_PLACEMENTS,
    email_window_s,
    experiments,
)
from demo.world import (
    DEVICES,
    SEGMENTS,
    SORTS,
    ZONES,
    Population,
    carousel_ctr,
    open_probability,
    purchase_probability,
)
from sdk import AsyncTailorClient, ClientOptions, DefaultVariant, RetryPolicy
from tailor_contract.send_window import SendWindow

__all__ = ["simulate"]

USUAL_DEVICE = 0.85
MIN_GAP_S = 0.25
LEARN_TIMEOUT_S = 60.0
MODEL_POLL_S = 0.5  # TAILOR_LEARNER_MODEL_POLL_INTERVAL_S of the demo's server
DEFAULTS = {
    "home_hero": DefaultVariant(variant="control"),
    "product_carousel": DefaultVariant(variant="bestsellers"),
    "offer": DefaultVariant(variant="none"),
    "newsletter_subject": DefaultVariant(variant="plain"),
    "newsletter_send_time": DefaultVariant(variant="default"),
}


async def simulate(
    population: Population,
    plan: Plan,
    api_url: str,
    redis_url: str,
    progress: Progress,
) -> Observations:
    """Define the shop's experiments, then run ``plan.days`` simulated days against the API."""
    rng = np.random.default_rng(plan.seed)
    obs = Observations()
    options = ClientOptions(
        decide_timeout_s=15.0,
        timeout_s=15.0,
        batch_timeout_s=120.0,
        retry=RetryPolicy(attempts=5, base_s=0.1, cap_s=2.0),
        flush_interval_s=0.25,
        close_timeout_s=10.0,
        # httpx checks every pooled connection on each request: keep the pool small.
        max_connections=plan.concurrency,
        max_keepalive_connections=plan.concurrency,
    )
    redis = Redis.from_url(redis_url, decode_responses=True)  # what RewardJoin expects
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=120.0) as admin,
        AsyncTailorClient(
            api_url,
            options=options,
            rng=random.Random(plan.seed + 1),
            close_at_exit=False,
        ) as client,
    ):
        try:
            progress.set_stage("defining the shop's experiments")
            await define_experiments(admin, email_window_s(plan.days))
            progress.set_stage(f"writing {population.size:,} shopper profiles")
            await write_profiles(client, population, plan.concurrency, rng, obs, progress)
            join = RewardJoin(redis, RedisSettings().key_prefix)
            for day in range(1, plan.days + 1):
                progress.set_stage(f"day {day}/{plan.days}: visitors")
                await visit_day(client, population, plan, day, rng, obs, progress)
                progress.set_stage(f"day {day}/{plan.days}: newsletter")
                await newsletter_day(client, population, plan, day, rng, obs, progress)
                progress.set_stage(f"day {day}/{plan.days}: learning")
                if not await client.flush():
                    obs.fail("outcomes could not be delivered")
                await end_of_day(join, admin, obs)
        finally:
            await redis.aclose()
        obs.dropped_outcomes = client.stats.dropped
    return obs


async def define_experiments(admin: httpx.AsyncClient, email_window: int) -> None:
    """Create and start the five experiments; return once the server serves them."""
    for spec in experiments(email_window):
        created = await admin.post(
            "/v1/experiments",
            content=msgspec.json.encode(spec),
            headers={"content-type": "application/json"},
        )
        created.raise_for_status()
        (await admin.post(f"/v1/experiments/{spec.key}/start")).raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # consent=false: probes never count in a report
        answer = await admin.post(
            "/v1/decide",
            json={"unit_id": "demo-probe", "placements": list(WEB_PLACEMENTS), "consent": False},
        )
        answer.raise_for_status()
        if all(d.get("experiment") for d in answer.json()["decisions"]):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the experiments were not served within 30 s")


async def write_profiles(
    client: AsyncTailorClient,
    population: Population,
    concurrency: int,
    rng: np.random.Generator,
    obs: Observations,
    progress: Progress,
) -> None:
    """Store every shopper's features, and the past email opens of those who have some."""
    now = datetime.now(UTC)
    history: list[tuple[str, datetime]] = []
    for i in np.flatnonzero(population.history_opens):
        zone = ZoneInfo(ZONES[population.zone[i]])
        for _ in range(int(population.history_opens[i])):
            day = (now - timedelta(days=int(rng.integers(3, 60)))).astimezone(zone)
            hour = (int(population.peak_hour[i]) + int(rng.integers(-1, 2))) % 24
            opened = day.replace(hour=hour, minute=int(rng.integers(0, 60)))
            history.append((population.unit_ids[i], opened.astimezone(UTC)))
    progress.total += len(history)

    async def profile(i: int) -> None:
        await client.upsert_features(
            population.unit_ids[i],
            {
                "segment": SEGMENTS[population.segment[i]],
                "timezone": ZONES[population.zone[i]],
                "newsletter": bool(population.subscribed[i]),
            },
        )
        obs.profiles += 1

    async def past_open(unit_id: str, at: datetime) -> None:
        await client.track_event(unit_id, "email_open", ts=at)
        obs.history_events += 1

    await bounded([profile(i) for i in range(population.size)], concurrency, progress)
    await bounded([past_open(u, at) for u, at in history], concurrency, progress)


async def bounded(
    jobs: Sequence[Coroutine[Any, Any, object]], limit: int, progress: Progress | None = None
) -> None:
    """Run coroutines with at most ``limit`` in flight; the first error propagates."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Coroutine[Any, Any, object]) -> None:
        async with semaphore:
            await job
        if progress is not None:
            progress.advance()

    await asyncio.gather(*(one(job) for job in jobs))


async def visit_day(
    client: AsyncTailorClient,
    population: Population,
    plan: Plan,
    day: int,
    rng: np.random.Generator,
    obs: Observations,
    progress: Progress,
) -> None:
    """One day of visits: decide three placements per visit, report purchases and clicks.

    Random draws are made up front, so what a visit does depends only on the seed and on what
    Tailor shows. Visits of one shopper go through one task, one at a time and at least
    ``MIN_GAP_S`` apart (a person does not load two pages in the same millisecond; the frequency
    cap's counters are written a few milliseconds after a decision).
    """
    n = plan.visits_per_day
    units = rng.choice(population.size, size=n, p=population.activity)
    usual = population.device[units]
    devices = np.where(rng.random(n) < USUAL_DEVICE, usual, 1 - usual)
    buy_draw, click_draw = rng.random(n), rng.random(n)
    order_value = np.round(rng.lognormal(np.log(45.0), 0.5, size=n), 2)
    ctr = carousel_ctr()
    queues: list[list[int]] = [[] for _ in range(plan.concurrency)]
    for i, unit in enumerate(units.tolist()):
        queues[unit % plan.concurrency].append(i)

    async def shopper_task(queue: list[int]) -> None:
        last_visit: dict[int, float] = {}
        for i in queue:
            unit, device = int(units[i]), int(devices[i])
            unit_id = population.unit_ids[unit]
            wait = last_visit.get(unit, -MIN_GAP_S) + MIN_GAP_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            result = await client.decide(
                unit_id,
                WEB_PLACEMENTS,
                {"device": DEVICES[device], "page": "/"},
                defaults=DEFAULTS,
            )
            last_visit[unit] = time.monotonic()
            progress.advance()
            if result.fallback or result.decision_id is None:
                obs.fail(result.error)
                continue
            obs.degraded += int(result.degraded)
            hero, carousel, offer = (result[p] for p in WEB_PLACEMENTS)
            shown = [
                d.variant or DEFAULTS[d.placement].variant or "" for d in (hero, carousel, offer)
            ]
            bought = bool(buy_draw[i] < purchase_probability(shown[0], shown[2]))
            clicked = bool(
                click_draw[i] < ctr[population.segment[unit], device, SORTS.index(shown[1])]
            )
            now = datetime.now(UTC)
            if bought:
                client.track_outcome(
                    "purchase",
                    decision_id=result.decision_id,
                    unit_id=unit_id,
                    value=float(order_value[i]),
                    ts=now,
                )
            if clicked:
                client.track_outcome(
                    "click", decision_id=result.decision_id, unit_id=unit_id, ts=now
                )
            obs.visits.append(
                VisitRecord(
                    unit=unit,
                    day=day,
                    device=device,
                    hero=shown[0],
                    hero_reason=hero.reason,
                    sort=shown[1],
                    sort_reason=carousel.reason,
                    offer=shown[2],
                    offer_reason=offer.reason,
                    purchased=bought,
                    clicked=clicked,
                )
            )

    await asyncio.gather(*(shopper_task(q) for q in queues))


async def newsletter_day(
    client: AsyncTailorClient,
    population: Population,
    plan: Plan,
    day: int,
    rng: np.random.Generator,
    obs: Observations,
    progress: Progress,
) -> None:
    """Send day ``day``'s newsletter to every subscriber and report who opens it.

    The send window is the 24 hours of UTC day ``today + day``, so every local hour occurs
    once in every zone. An open happens ``Exp(40 min)`` after the send time: that instant goes
    to the recipient's open-hour history (``/v1/events``); the ``email_open`` outcome itself
    carries the real time, like every outcome in the demo.
    """
    recipients = np.flatnonzero(population.subscribed)
    start = (datetime.now(UTC) + timedelta(days=day)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    window = SendWindow(start=start, end=start + timedelta(days=1))
    open_draw = rng.random(len(recipients))
    delay = rng.exponential(40.0, size=len(recipients))
    history: list[tuple[str, datetime]] = []
    stream = client.decide_batch(
        f"newsletter-day-{day}",
        [{"unit_id": population.unit_ids[i]} for i in recipients],
        EMAIL_PLACEMENTS,
        send_window=window,
        defaults=DEFAULTS,
    )
    async for answer in stream:
        progress.advance()
        unit = int(recipients[answer.index])
        send = answer["newsletter_send_time"]
        if answer.fallback or answer.decision_id is None or send.send_at is None:
            obs.fail(answer.error or "a recipient was not decided")
            continue
        obs.degraded += int(answer.degraded)
        subject = answer["newsletter_subject"]
        subject_key = subject.variant or "plain"
        local_hour = send.send_at.astimezone(ZoneInfo(ZONES[population.zone[unit]])).hour
        peak = int(population.peak_hour[unit])
        p_open = open_probability(local_hour, peak, subject_key)
        opened = bool(open_draw[answer.index] < p_open)
        if opened:
            at = send.send_at + timedelta(minutes=float(delay[answer.index]))
            # Dated when the email is opened: an open dated before send_at is not learned.
            client.track_outcome(
                "email_open", decision_id=answer.decision_id, unit_id=answer.unit_id, ts=at
            )
            history.append((answer.unit_id, at))
        obs.emails.append(
            EmailRecord(
                unit=unit,
                day=day,
                subject=subject_key,
                subject_reason=subject.reason,
                local_hour=local_hour,
                send_reason=send.reason,
                p_open=p_open,
                p_default_hour=open_probability(DEFAULT_SEND_HOUR, peak, subject_key),
                opened=opened,
            )
        )
    await bounded(
        [client.track_event(u, "email_open", ts=at) for u, at in history], plan.concurrency
    )


async def end_of_day(join: RewardJoin, admin: httpx.AsyncClient, obs: Observations) -> None:
    """Close every reward window opened so far and wait until the email models learned them.

    The reward clock jumps 60 days ahead: each open decision is finalised (default reward 0
    unless an outcome came), as the server's sweeper would once its window really ended.
    Finalising again while waiting catches records the server wrote to Redis a moment late.
    Then it waits until each email model counts every decision its policy made and the server
    serves it (one model poll later); experiments that did not get there in time are noted.
    """
    targets = {
        SUBJECT: sum(e.subject_reason == "policy" for e in obs.emails),
        SEND_TIME: sum(e.send_reason == "policy" for e in obs.emails),
    }
    deadline = time.monotonic() + LEARN_TIMEOUT_S
    for key, target in targets.items():
        while True:
            await join.finalize_due(int((time.time() + 60 * 86400) * 1000))
            got = await admin.get(f"/v1/experiments/{key}/model")
            if got.status_code == 200 and int(got.json()["examples"]) >= target:
                break
            if time.monotonic() > deadline:
                obs.learn_timeouts.append(key)
                break
            await asyncio.sleep(0.2)
    await asyncio.sleep(MODEL_POLL_S * 2)
