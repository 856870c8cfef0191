"""The online-learning loop end to end: API -> reward join -> learner -> snapshot -> decisions.

Real Redis and chdb throughout; the crash test runs ``tailor learn`` as a real process and
SIGKILLs it mid-stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from scipy import stats
from structlog.testing import capture_logs

from bandits.base import Example
from bandits.join import JOIN_GROUP, RewardJoin, decode_entry
from bandits.registry import build_policy
from bandits.snapshots import SnapshotStore
from bandits.thompson import ThompsonPolicy
from decision_api.app import create_app
from decision_api.learning.runtime import spec_of
from decision_api.services import Services
from decision_api.settings import LearnerSettings, Settings
from experiments.store import ExperimentStore
from tailor_contract.definitions import ExperimentSpec
from tailor_contract.policies import ThompsonConfig
from tests.support.polling import eventually, sample
from tests.support.processes import TailorProcess
from tests.support.training import arm_totals, bernoulli_examples, feed

VARIANTS = ["a", "b", "c"]


def definition(
    key: str,
    policy: dict[str, Any],
    *,
    placement: str = "home",
    variants: list[str] = VARIANTS,
    window_s: int = 3600,
    reward: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An experiment definition as the admin API takes it (payload colour per variant)."""
    return {
        "key": key,
        "placement": placement,
        "default_variant": variants[0],
        "variants": [{"key": v, "payload": {"colour": f"colour-{v}"}} for v in variants],
        "policy": policy,
        "reward_window_s": window_s,
        "reward": reward or {"rules": [{"type": "click"}]},
    }


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast learning cadence: snapshots every 0.2 s, model polls and sweeps every 0.1 s."""
    return msgspec.structs.replace(
        settings,
        learner=LearnerSettings(
            snapshot_interval_s=0.2, model_poll_interval_s=0.1, reward_sweep_interval_s=0.1
        ),
    )


def services_of(client: AsyncTestClient[Litestar]) -> Services:
    """The worker's services behind an in-process client.

    The app runs on the test client's own event loop: only synchronous attributes of these
    services may be touched from a test; Redis goes through the test's own clients.
    """
    services: Services = client.app.state.services
    return services


@pytest.fixture
async def snapshots(redis_url: str, namespace: str) -> AsyncIterator[SnapshotStore]:
    """The model snapshots of this test's namespace, on the test's own Redis client."""
    binary = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield SnapshotStore(binary, namespace)
    finally:
        await binary.aclose()


@pytest.fixture
def store(redis: Redis, namespace: str) -> ExperimentStore:
    """The experiment definitions of this test's namespace."""
    return ExperimentStore(redis, namespace)


async def start(client: AsyncTestClient[Litestar], spec: dict[str, Any]) -> None:
    """Create and start an experiment through the admin API."""
    created = await client.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{spec['key']}/start")
    assert started.status_code == 200, started.text


async def model(client: AsyncTestClient[Litestar], key: str) -> dict[str, Any]:
    """GET the published model's info (empty dict before the first snapshot)."""
    got = await client.get(f"/v1/experiments/{key}/model")
    if got.status_code == 404:
        return {}
    assert got.status_code == 200, got.text
    info: dict[str, Any] = got.json()
    return info


async def metric(client: AsyncTestClient[Litestar], line_start: str) -> float:
    """The value of the first Prometheus sample whose line starts with ``line_start``."""
    return sample((await client.get("/metrics")).text, line_start)


async def decide_and_click(
    client: AsyncTestClient[Litestar], n: int, clicked: set[str], start: int = 0
) -> list[dict[str, Any]]:
    """``n`` decisions for distinct units; a click by decision id when the variant is clicked."""
    answers = []
    for i in range(start, start + n):
        got = await client.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
        body = got.json()
        answers.append(body)
        if body["decisions"][0]["variant"] in clicked:
            outcome = {"decision_id": body["decision_id"], "type": "click"}
            assert (await client.post("/v1/outcomes", json=outcome)).json()["joined"] == 1
    return answers


async def test_outcomes_through_the_api_train_the_model_and_reset_starts_over(
    client: AsyncTestClient[Litestar], snapshots: SnapshotStore, store: ExperimentStore
) -> None:
    """Clicked and unclicked decisions each become one learned example; the served model
    moves on; a reset restarts counting; an outcome after the window is late, not learned."""
    await start(client, definition("hero", {"kind": "thompson"}, window_s=1))
    answers = await decide_and_click(client, 150, clicked={"c"})
    assert {a["decisions"][0]["reason"] for a in answers} == {"policy"}
    # Every decision, clicked or not, is learned when its 1 s window closes.
    await eventually(lambda: _examples_are(client, "hero", 150), what="150 examples learned")
    info = await model(client, "hero")
    assert (info["generation"], info["kind"]) == (0, "thompson")
    snap = await snapshots.get("hero")
    assert snap is not None
    spec = spec_of(await store.get("hero"))
    policy = build_policy(spec.config, spec.arms, snapshot=snap.data)
    assert isinstance(policy, ThompsonPolicy)
    chose = Counter(a["decisions"][0]["variant"] for a in answers)
    assert policy.posterior("c") == (1.0 + chose["c"], 1.0)
    assert policy.posterior("a") == (1.0, 1.0 + chose["a"])

    async def served_version() -> bool:
        loaded = await metric(client, 'tailor_model_version_loaded{experiment="hero"}')
        return loaded >= snap.version

    await eventually(served_version, what="worker serving the published version")
    probe = await client.post("/v1/decide", json={"unit_id": "u0", "placements": ["home"]})
    assert int(probe.json()["decisions"][0]["model_version"]) >= snap.version

    late = await client.post(
        "/v1/outcomes", json={"decision_id": answers[0]["decision_id"], "type": "click"}
    )
    assert late.json()["joined"] == 0
    assert await metric(client, 'tailor_late_outcomes_total{experiment="hero"}') == 1.0

    reset = await client.post("/v1/experiments/hero/model/reset")
    assert reset.status_code == 200
    assert (reset.json()["generation"], reset.json()["examples"]) == (1, 0)
    # The probe decision above joins the 40 new ones once its window closes.
    await decide_and_click(client, 40, clicked={"a", "b", "c"}, start=1000)
    await eventually(lambda: _examples_are(client, "hero", 41), what="41 examples after reset")
    info = await model(client, "hero")
    assert (info["generation"], info["examples"]) == (1, 41)
    assert await metric(client, 'tailor_examples_learned_total{experiment="hero"}') >= 190


async def test_a_click_is_learned_with_the_unclicked_decisions_of_its_time_not_before(
    quiet_client: AsyncTestClient[Litestar], redis: Redis, namespace: str
) -> None:
    """2 s window: a decision never clicked, then one clicked 1 s later; 1.5 s after the first
    decision the sweeper has written nothing; once both windows close both examples are on the
    training stream, in decision order (a click is never learned ahead of its failures)."""
    client = quiet_client
    await start(client, definition("hero", {"kind": "thompson"}, window_s=2))
    join = RewardJoin(redis, namespace)
    began = time.monotonic()
    ids = []
    for unit in ("quiet", "clicked"):
        got = await client.post("/v1/decide", json={"unit_id": unit, "placements": ["home"]})
        ids.append(got.json()["decision_id"])
        await asyncio.sleep(0.05)
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    clicked = await client.post("/v1/outcomes", json={"decision_id": ids[1], "type": "click"})
    assert clicked.json()["joined"] == 1
    await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - began)))
    assert time.monotonic() - began < 1.9, "too slow to observe the open window"
    await join.finalize_due(time.time_ns() // 1_000_000)
    assert await redis.xlen(join.stream_key) == 0
    await asyncio.sleep(max(0.0, 2.3 - (time.monotonic() - began)))

    async def both_written() -> bool:
        await join.finalize_due(time.time_ns() // 1_000_000)
        return bool(await redis.xlen(join.stream_key) == 2)

    await eventually(both_written, what="both windows finalised")
    stream = [decode_entry(i, f) for i, f in await redis.xrange(join.stream_key)]
    assert [(e.record.decision_id, e.reward, e.joined) for e in stream] == [
        (ids[0], 0.0, False),
        (ids[1], 1.0, True),
    ]


async def test_outcome_dated_before_its_decision_is_rejected_and_counted(
    quiet_client: AsyncTestClient[Litestar], redis: Redis, namespace: str
) -> None:
    """An outcome whose ts precedes its decision is logged but not joined: counted in
    tailor_early_outcomes_total, logged without the unit id, and the decision is learned with
    the default reward."""
    client = quiet_client
    await start(client, definition("hero", {"kind": "thompson"}, window_s=1))
    got = await client.post("/v1/decide", json={"unit_id": "secret-unit", "placements": ["home"]})
    decision_id = got.json()["decision_id"]
    before = datetime.now(UTC) - timedelta(minutes=5)
    outcome = {"decision_id": decision_id, "type": "click", "ts": before.isoformat()}
    by_unit = {"unit_id": "secret-unit", "experiment": "hero", "type": "click",
               "ts": before.isoformat()}  # fmt: skip
    with capture_logs() as logs:
        answers = [await client.post("/v1/outcomes", json=o) for o in (outcome, by_unit)]
    assert [(a.status_code, a.json()["joined"]) for a in answers] == [(202, 0), (202, 0)]
    assert await metric(client, 'tailor_early_outcomes_total{experiment="hero"}') == 2.0
    early = [e for e in logs if e["event"] == "outcome_rejected_early"]
    assert [(e["experiment"], e["type"]) for e in early] == [("hero", "click")] * 2
    assert "secret-unit" not in repr(early)
    join = RewardJoin(redis, namespace)

    async def finalised() -> bool:
        await join.finalize_due(time.time_ns() // 1_000_000)
        return bool(await redis.xlen(join.stream_key) == 1)

    await eventually(finalised, what="the decision's window finalised")
    [(stream_id, fields)] = await redis.xrange(join.stream_key)
    example = decode_entry(stream_id, fields)
    assert (example.record.decision_id, example.reward, example.joined) == (decision_id, 0.0, False)


async def _examples_are(client: AsyncTestClient[Litestar], key: str, n: int) -> bool:
    info = await model(client, key)
    if info.get("examples", 0) > n:
        pytest.fail(f"learned {info['examples']} examples, expected {n}")
    return info.get("examples") == n


@pytest.fixture
async def quiet_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client whose worker runs no learner (only the admin API changes models)."""
    quiet = msgspec.structs.replace(
        settings, learner=msgspec.structs.replace(settings.learner, in_process=False)
    )
    async with AsyncTestClient(app=create_app(quiet)) as c:
        yield c


async def test_warm_start_learns_the_logged_history(
    quiet_client: AsyncTestClient[Litestar], snapshots: SnapshotStore, store: ExperimentStore
) -> None:
    """Warm start teaches a fresh model every logged decision with its joined outcome (by
    decision id or unit id), publishes it as a new generation, and the model prefers the
    rewarded variant; a reset then serves a fresh model again."""
    client = quiet_client
    await start(client, definition("hero", {"kind": "thompson"}))
    answers = []
    for i in range(240):
        got = await client.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
        answers.append(got.json())
        if got.json()["decisions"][0]["variant"] == "c":
            by_unit = i % 2 == 0
            outcome = (
                {"unit_id": f"u{i}", "experiment": "hero", "type": "click"}
                if by_unit
                else {"decision_id": got.json()["decision_id"], "type": "click"}
            )
            assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202
    assert await model(client, "hero") == {}  # nothing learned online: no learner here
    warm = await client.post("/v1/experiments/hero/model/warm-start")
    assert warm.status_code == 200, warm.text
    assert (warm.json()["examples"], warm.json()["generation"]) == (240, 1)
    assert (await model(client, "hero"))["examples"] == 240

    services = services_of(client)
    spec = spec_of(await store.get("hero"))
    snap = await snapshots.get("hero")
    assert snap is not None
    policy = build_policy(spec.config, spec.arms, snapshot=snap.data)
    assert isinstance(policy, ThompsonPolicy)
    chose = Counter(a["decisions"][0]["variant"] for a in answers)
    assert policy.posterior("c") == (1.0 + chose["c"], 1.0)
    assert policy.posterior("b") == (1.0, 1.0 + chose["b"])
    pmf = policy.pmf({}, spec.candidates)
    assert isinstance(spec.config, ThompsonConfig)
    floor = spec.config.floor(3)  # the exploration floor every other variant keeps
    assert int(pmf.argmax()) == 2 and pmf[2] > 1 - 2 * floor - 0.01

    async def serving(version: int) -> bool:
        got = await client.post("/v1/decide", json={"unit_id": "p", "placements": ["home"]})
        return got.json()["decisions"][0].get("model_version") == str(version)

    await eventually(lambda: serving(snap.version), what="warm model served")
    reset = await client.post("/v1/experiments/hero/model/reset")
    assert (reset.json()["examples"], reset.json()["bytes"]) == (0, 0)
    await eventually(lambda: serving(reset.json()["version"]), what="fresh model served")
    fresh = services.learning.serving.policy("hero")
    assert fresh is not None
    assert fresh.pmf({}, spec.candidates) == pytest.approx([1 / 3] * 3, abs=0.02)


async def test_fixed_experiments_have_no_model(client: AsyncTestClient[Litestar]) -> None:
    """The model admin API answers 409 for a fixed split and 404 for an unknown experiment."""
    await start(client, definition("ab", {"kind": "fixed"}))
    for path in ("/v1/experiments/ab/model", "/v1/experiments/ab/model/reset"):
        call = client.get if path.endswith("model") else client.post
        assert (await call(path)).status_code == 409
    assert (await client.get("/v1/experiments/nope/model")).status_code == 404


PROPENSITY_POLICIES: dict[str, dict[str, Any]] = {
    "thompson": {"kind": "thompson", "segment_by": "segment", "min_share": 0.04},
    "epsilon_greedy": {"kind": "epsilon_greedy", "epsilon": 0.3},
    "vw_cb": {"kind": "vw_cb", "epsilon": 0.2},
}


async def test_logged_propensities_equal_the_policy_pmf_and_match_frequencies(
    quiet_client: AsyncTestClient[Litestar], snapshots: SnapshotStore, store: ExperimentStore
) -> None:
    """For thompson, epsilon_greedy and vw_cb, every exposure row logs the served model's pmf
    at the chosen variant (pmfs sum to one) and the choice counts fit the pmf (chi-square,
    fixed engine seed, p > 0.001 per policy and segment)."""
    client = quiet_client
    services = services_of(client)
    variants = ["v0", "v1", "v2", "v3"]
    # A trained, context-dependent model per policy: v1 pays in segment s1, v3 in s2.
    pmfs: dict[tuple[str, str], np.ndarray] = {}
    versions: dict[str, str] = {}
    for name, policy_config in PROPENSITY_POLICIES.items():
        await start(
            client, definition(name, policy_config, placement=f"p_{name}", variants=variants)
        )
        spec = spec_of(await store.get(name))
        policy = build_policy(spec.config, spec.arms)
        examples = []
        rng = np.random.default_rng(3)
        for _ in range(1000):
            segment = "s1" if rng.random() < 0.5 else "s2"
            chosen = int(rng.integers(4))
            best = 1 if segment == "s1" else 3
            reward = float(rng.random() < (0.5 if chosen == best else 0.1))
            examples.append(
                Example(
                    context={"segment": segment},
                    candidates=spec.candidates,
                    chosen=chosen,
                    propensity=0.25,
                    reward=reward,
                )
            )
        policy.learn(examples)
        snap = await snapshots.replace(
            name, 1, kind=policy.name, data=policy.snapshot(), examples=1000
        )
        versions[name] = str(snap.version)
        served = build_policy(spec.config, spec.arms, snapshot=policy.snapshot())
        for segment in ("s1", "s2"):
            pmf = served.pmf({"segment": segment}, spec.candidates)
            assert float(pmf.sum()) == pytest.approx(1.0, abs=1e-12)
            pmfs[(name, segment)] = pmf
    # The pmfs are far from uniform and (for the contextual ones) differ by segment.
    assert pmfs[("vw_cb", "s1")].argmax() == 1 and pmfs[("vw_cb", "s2")].argmax() == 3
    assert pmfs[("thompson", "s1")].argmax() == 1 and pmfs[("thompson", "s2")].argmax() == 3

    async def all_loaded() -> bool:
        return all(services.learning.serving.version_of(n) == int(v) for n, v in versions.items())

    await eventually(all_loaded, what="trained models loaded")
    services.engine._rng = np.random.default_rng(20261123)  # fixed seed for the draws
    n = 900
    placements = [f"p_{name}" for name in PROPENSITY_POLICIES]
    for i in range(n):
        segment = "s1" if i % 2 == 0 else "s2"
        got = await client.post(
            "/v1/decide",
            json={"unit_id": f"u{i}", "placements": placements, "context": {"segment": segment}},
        )
        assert {d["reason"] for d in got.json()["decisions"]} == {"policy"}
    rows: list[tuple[Any, ...]] = []

    async def all_logged() -> bool:
        nonlocal rows
        rows = await asyncio.to_thread(
            services.event_log.query,
            "SELECT experiment, variant, propensity, policy, policy_version, "
            "context['segment'] FROM exposures FINAL",
        )
        return len(rows) == n * len(PROPENSITY_POLICIES)

    await eventually(all_logged, what="every exposure in the event log")
    counts: dict[tuple[str, str], Counter[str]] = {}
    for experiment, variant, propensity, policy_name, version, segment in rows:
        pmf = pmfs[(experiment, segment)]
        assert propensity == pytest.approx(float(pmf[variants.index(variant)]), rel=1e-12)
        # vw_cb's ensemble logs "<version>/<serving member>" (e.g. "1/vw", "1/cells:segment").
        assert (policy_name, version.partition("/")[0]) == (experiment, versions[experiment])
        counts.setdefault((experiment, segment), Counter())[variant] += 1
    for (experiment, segment), seen in counts.items():
        pmf = pmfs[(experiment, segment)]
        observed = np.array([seen[v] for v in variants], dtype=float)
        result = stats.chisquare(observed, observed.sum() * pmf)
        assert result.pvalue > 0.001, (experiment, segment, observed, pmf)


@pytest.mark.parametrize(
    ("policy", "field", "match"),
    [
        ({"kind": "thompson", "prior_alpha": 0}, "$.policy.prior_alpha", "> 0"),
        ({"kind": "thompson", "min_share": 0.3}, "$.policy.min_share", "min_share == 0.3"),
        (
            {"kind": "vw_cb", "min_propensity": 0.3},
            "$.policy.min_propensity",
            "min_propensity == 0.3 with 4 arms",
        ),
        ({"kind": "epsilon_greedy", "min_propensity": 1.5}, "$.policy.min_propensity", "<= 1.0"),
        ({"kind": "thompson", "min_propensity": 0.26}, "$.policy.min_propensity", "<= 0.25"),
        ({"kind": "thompson", "mc_samples": 10}, "$.policy.mc_samples", ">= 1000"),
        ({"kind": "epsilon_greedy", "epsilon": 1.2}, "$.policy.epsilon", "<= 1.0"),
        ({"kind": "vw_cb", "epsilon": -0.1}, "$.policy.epsilon", ">= 0.0"),
        ({"kind": "vw_cb", "gamma_scale": 0}, "$.policy.gamma_scale", "> 0.0"),
        ({"kind": "vw_cb", "exploration": "bag"}, "$.policy.exploration", "Invalid enum"),
        ({"kind": "vw_cb", "extra_args": ["--data", "x"]}, "$.policy", "--data' is not allowed"),
        ({"kind": "vw_cb", "extra_args": ["-b", "30"]}, "$.policy", "must be between 1 and 24"),
        ({"kind": "vw_cb", "extra_args": ["--epsilon", "0.3"]}, "$.policy", "config field"),
        ({"kind": "vw_cb", "extra_args": ["--l1", "abc"]}, "$.policy", "needs a number"),
        ({"kind": "vw_cb", "interactions": ["UX"]}, "$.policy", "namespace letters"),
        ({"kind": "vw_cb", "extra_args": ["--cb_type", "x"]}, "$.policy", "must be one of"),
        ({"kind": "bandit"}, "$.policy.kind", "Invalid value"),
    ],
)
async def test_bad_policy_definitions_are_rejected_with_422(
    shared_client: AsyncTestClient[Litestar], policy: dict[str, Any], field: str, match: str
) -> None:
    """Bad hyper-parameters and VW arguments fail at definition time, naming the field (one
    app for every case, each under its own experiment key)."""
    key = "bad-" + uuid.uuid4().hex[:8]
    spec = definition(key, policy, variants=["a", "b", "c", "d"])
    got = await shared_client.post("/v1/experiments", json=spec)
    assert got.status_code == 422, got.text
    [error] = got.json()["errors"]
    assert error["field"] == field
    assert match in error["message"]
    assert (await shared_client.get(f"/v1/experiments/{key}")).status_code == 404


# -- the learner as a real process, killed mid-stream ----------------------------------------

N_STREAM = 20_000


@pytest.mark.slow
async def test_learner_process_killed_mid_stream_loses_and_doubles_nothing(
    redis_url: str, namespace: str, redis: Redis, tmp_path: Path
) -> None:
    """``tailor learn`` SIGKILLed after a publish with examples in flight, then restarted:
    the final snapshot has learned exactly the 20,000 streamed examples, and the Thompson
    posterior counts (alpha + beta minus priors) add up to exactly that."""
    store_ = ExperimentStore(redis, namespace)
    spec = msgspec.convert(definition("hero", {"kind": "thompson"}), ExperimentSpec)
    bandit = spec_of(await store_.create(spec, time.time()))
    examples = bernoulli_examples("hero", N_STREAM, np.random.default_rng(11))
    env = {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_REDIS_KEY_PREFIX": namespace,
        "TAILOR_LEARNER_SNAPSHOT_INTERVAL_S": "0.3",
        "TAILOR_LOG_LEVEL": "info",
    }
    binary = Redis.from_url(redis_url, decode_responses=False)
    store = SnapshotStore(binary, namespace)
    stream = f"{{{namespace}}}:train"
    try:
        await feed(binary, namespace, examples[:1000])
        first = TailorProcess(["learn", "--name", "learner-1"], env, tmp_path / "learn-1.log")
        sent = 1000
        killed_at = None
        deadline = time.monotonic() + 30
        try:
            while killed_at is None:
                assert time.monotonic() < deadline, first.output()[-3000:]
                assert first.alive(), first.output()[-3000:]
                snap = await store.get("hero")
                # The learner creates the consumer group before its first publish.
                pending = await _pending(binary, stream) if snap is not None else 0
                if snap is not None and snap.version >= 1 and pending > 0:
                    first.kill()
                    killed_at = (snap.examples, pending)
                    break
                if snap is not None and sent < N_STREAM - 1000:
                    # A steady trickle once it runs, so some examples are always in flight.
                    await feed(binary, namespace, examples[sent : sent + 100])
                    sent += 100
                await asyncio.sleep(0.01)
        finally:
            first.stop()
        published, in_flight = killed_at
        assert 0 < published < N_STREAM and in_flight > 0
        await feed(binary, namespace, examples[sent:])

        second = TailorProcess(["learn", "--name", "learner-1"], env, tmp_path / "learn-2.log")
        try:

            async def caught_up() -> bool:
                assert second.alive(), second.output()[-3000:]
                snap = await store.get("hero")
                if snap is not None and snap.examples > N_STREAM:
                    pytest.fail(f"learned {snap.examples} > {N_STREAM} examples")
                return (
                    snap is not None
                    and snap.examples == N_STREAM
                    and await _pending(binary, stream) == 0
                )

            await eventually(caught_up, timeout_s=30, what="restarted learner caught up")
        finally:
            assert second.stop() == 0, second.output()[-3000:]
        assert "learner_stopped" in second.output()
        snap = await store.get("hero")
        assert snap is not None and snap.examples == N_STREAM
        policy = build_policy(bandit.config, bandit.arms, snapshot=snap.data)
        assert isinstance(policy, ThompsonPolicy)
        totals = arm_totals(examples)
        learned = 0.0
        for key in VARIANTS:
            alpha, beta = policy.posterior(key)
            assert (alpha - 1.0, beta - 1.0) == pytest.approx(totals[key])
            learned += alpha + beta - 2.0
        assert learned == pytest.approx(N_STREAM)
    finally:
        await binary.aclose()


async def _pending(binary: Redis, stream: str) -> int:
    info = await binary.xpending(stream, JOIN_GROUP)
    return int(info["pending"])
