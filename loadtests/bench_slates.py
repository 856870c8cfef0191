"""Ranked slates benchmark: does ``vw_slates`` learn a ranking, and what does a decide cost?

Run: ``.venv/bin/python loadtests/bench_slates.py [--seeds 3] [--decisions 50000]
[--items 50] [--slots 10] [--batch 1000]``

A simulated shop: 50 items, each with a category (5) and a style (3); visitors with a segment
(4) and a device (3), uniformly. The position-based click model: the item in slot ``j`` is
clicked with probability ``examine(j) * attract(item, visitor)``, with
``examine(j) = 1 / (1 + j) ** 0.7`` and

    attract = sigmoid(base[item] + affinity[segment, category] + fit[device, style])

(base ~ N(-2.2, 0.5), affinity ~ N(0, 0.8), fit ~ N(0, 0.6), drawn from the seed). So every
visitor type has its own best order, and a click's chance also falls with the position.

The policy (``VWSlatesConfig`` defaults unless flags say otherwise) decides 10-slot slates over
the 50 items for ``--decisions`` visitors; every slot's click is drawn and the slates are learned
in batches of ``--batch`` decisions (the model serving a batch has learned the ones before it,
as with the learner publishing snapshots). Printed per seed, as expected clicks per slate
(computed from the world, so without sampling noise):

- ``random``: the average over random orders; ``oracle``: items sorted by ``attract`` for the
  visitor (the best order under this click model);
- ``served``: the slates the policy served over the last fifth of the decisions (exploration
  included) and their share of the oracle's gain over random order;
- ``greedy``: the learned ranking without exploration on 2,000 fresh visitors, and its share.

Then the CPU of one decide (``time.process_time`` over many decides, one thread): the policy
alone — a 10-slot slate over 50 candidates from the trained model, with the experiment's
candidate tuple and with candidates passed in the request (new objects each time) — and, with
``--api``, the server's whole decision path in-process: a real app (``create_app``, a private
``redis-server``, embedded chdb) serving a ``vw_slates`` experiment whose published model is the
last seed's trained one; each decide decodes a ``POST /v1/decide`` body with the 50 candidates
and their features, runs the decision engine (profile read from Redis, the slate, ten exposure
rows for the event log, the reward-join record) and encodes the answer. The event writer's
flushes into chdb run in the same process and are counted too; the HTTP server's framing
(granian, in Rust) and Redis's own CPU are not.
Target: the served share >= 0.70 within 50,000 decisions (median of the seeds); <= 2 ms per
decide.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bandits.base import Candidate
from bandits.slates import SlateExample
from bandits.vw_slates import VWSlatesPolicy
from tailor_contract.policies import VWSlatesConfig

SEGMENTS = ("s0", "s1", "s2", "s3")
DEVICES = ("mobile", "desktop", "tablet")
N_CATEGORIES = 5
N_STYLES = 3


class World:
    """The position-based click model over ``items`` items (see the module docstring)."""

    def __init__(self, seed: int, items: int, slots: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = items
        self.slots = slots
        self.base = rng.normal(-2.2, 0.5, size=items)
        self.affinity = rng.normal(0.0, 0.8, size=(len(SEGMENTS), N_CATEGORIES))
        self.fit = rng.normal(0.0, 0.6, size=(len(DEVICES), N_STYLES))
        self.category = np.arange(items) % N_CATEGORIES
        self.style = (np.arange(items) // N_CATEGORIES) % N_STYLES
        self.examine = 1.0 / (1.0 + np.arange(slots)) ** 0.7
        self.candidates = tuple(
            Candidate(
                key=f"item{i}",
                features={"category": f"c{self.category[i]}", "style": f"t{self.style[i]}"},
            )
            for i in range(items)
        )
        # attract[segment, device, item]
        logits = (
            self.base[None, None, :]
            + self.affinity[:, None, self.category]
            + self.fit[None, :, self.style]
        )
        self.attract = 1.0 / (1.0 + np.exp(-logits))

    def context(self, rng: np.random.Generator) -> tuple[int, int]:
        """A random visitor: (segment index, device index)."""
        return int(rng.integers(len(SEGMENTS))), int(rng.integers(len(DEVICES)))

    @staticmethod
    def features(visitor: tuple[int, int]) -> dict[str, str | float | bool | list[str]]:
        """The visitor as the policy sees it."""
        return {"segment": SEGMENTS[visitor[0]], "device": DEVICES[visitor[1]]}

    def click_probs(self, visitor: tuple[int, int], items: list[int]) -> npt.NDArray[np.float64]:
        """Each slot's click probability for a slate."""
        out: npt.NDArray[np.float64] = (
            self.examine[: len(items)] * self.attract[visitor[0], visitor[1], items]
        )
        return out

    def oracle(self, visitor: tuple[int, int]) -> float:
        """Expected clicks of the best order: items by attraction, best first."""
        best = np.sort(self.attract[visitor[0], visitor[1]])[::-1][: self.slots]
        return float(self.examine @ best)

    def random(self, visitor: tuple[int, int]) -> float:
        """Expected clicks of a uniformly random order."""
        return float(self.examine.sum() * self.attract[visitor[0], visitor[1]].mean())


def run_seed(
    seed: int, args: argparse.Namespace
) -> tuple[dict[str, float], tuple[VWSlatesPolicy, World]]:
    """Learn one world from scratch; returns the figures of the module docstring and the
    trained policy with its world."""
    world = World(seed, args.items, args.slots)
    config = VWSlatesConfig(
        slots=args.slots,
        exploration=args.exploration,
        epsilon=args.epsilon,
        learning_rate=args.learning_rate,
        interactions=tuple(args.interactions.split(",")),
    )
    policy = VWSlatesPolicy(config)
    rng = np.random.default_rng(seed + 1000)
    last = args.decisions - args.decisions // 5
    served = oracle = random = 0.0
    batch: list[SlateExample] = []
    started = time.perf_counter()
    for n in range(args.decisions):
        visitor = world.context(rng)
        context = world.features(visitor)
        slate = policy.choose_slate(context, world.candidates, args.slots, rng)
        items = [s.index for s in slate.slots]
        probs = world.click_probs(visitor, items)
        clicks = rng.random(len(items)) < probs
        if n >= last:
            served += float(probs.sum())
            oracle += world.oracle(visitor)
            random += world.random(visitor)
        batch.append(
            SlateExample(
                context=context,
                candidates=world.candidates,
                chosen=tuple(items),
                propensities=tuple(s.propensity for s in slate.slots),
                rewards=tuple(float(c) for c in clicks),
            )
        )
        if len(batch) >= args.batch:
            policy.learn_slates(batch)
            batch = []
    elapsed = time.perf_counter() - started
    greedy = g_oracle = g_random = 0.0
    for _ in range(2000):
        visitor = world.context(rng)
        items = policy.ranking(world.features(visitor), world.candidates, args.slots)
        greedy += float(world.click_probs(visitor, items).sum())
        g_oracle += world.oracle(visitor)
        g_random += world.random(visitor)
    return {
        "random": random / (args.decisions - last),
        "oracle": oracle / (args.decisions - last),
        "served": served / (args.decisions - last),
        "share": (served - random) / (oracle - random),
        "greedy": greedy / 2000,
        "greedy_share": (greedy - g_random) / (g_oracle - g_random),
        "seconds": elapsed,
        "cpu_ms": decide_cpu(policy, world, args.slots, fresh=False),
        "cpu_ms_request": decide_cpu(policy, world, args.slots, fresh=True),
    }, (policy, world)


def decide_cpu(policy: VWSlatesPolicy, world: World, slots: int, *, fresh: bool) -> float:
    """CPU milliseconds of one 10-slot decide (median of 3 rounds of 1,000 decides)."""
    rng = np.random.default_rng(7)
    visitors = [world.features(world.context(rng)) for _ in range(1000)]
    rounds = []
    for _ in range(3):
        started = time.process_time()
        for context in visitors:
            candidates = (
                tuple(Candidate(key=c.key, features=dict(c.features)) for c in world.candidates)
                if fresh
                else world.candidates
            )
            policy.choose_slate(context, candidates, slots, rng)
        rounds.append((time.process_time() - started) / len(visitors) * 1000)
    return statistics.median(rounds)


async def api_cpu(policy: VWSlatesPolicy, world: World, slots: int, decides: int) -> float:
    """CPU milliseconds per decide through the server's decision path (see the docstring)."""
    import msgspec
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

    from bandits.snapshots import Snapshot, SnapshotStore
    from decision_api.app import create_app
    from decision_api.redis_server import RedisServer
    from decision_api.settings import EventLogSettings, RedisSettings, Settings
    from tailor_contract.wire import DecideRequest

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", persist=False).start()
        try:
            settings = Settings(
                redis=RedisSettings(url=server.url, key_prefix="bench"),
                event_log=EventLogSettings(
                    url=f"chdb://{tmp}/chdb?database=bench", spool_dir=f"{tmp}/spool"
                ),
                log_format="console",
                log_level="warning",
                data_dir=tmp,
            )
            async with AsyncTestClient(app=create_app(settings)) as client:
                spec = {
                    "key": "carousel", "placement": "carousel", "default_variant": "list",
                    "variants": [{"key": "list"}], "primary_metric": "click",
                    "policy": {"kind": "vw_slates", "slots": slots,
                               "learning_rate": policy._config.learning_rate},
                }  # fmt: skip
                assert (await client.post("/v1/experiments", json=spec)).status_code == 201
                await client.post("/v1/experiments/carousel/start")
                binary = Redis.from_url(server.url, decode_responses=False)
                async with binary.pipeline(transaction=True) as pipe:
                    SnapshotStore(binary, "bench").stage_publish(
                        pipe,
                        Snapshot(experiment="carousel", version=1, gen=0, kind="vw_slates",
                                 data=policy.snapshot(), examples=50_000, updated_ms=0),
                    )  # fmt: skip
                    await pipe.execute()
                await binary.aclose()
                services = client.app.state.services
                await asyncio.sleep(3.0)  # the worker's model poll loads the published model
                rng = np.random.default_rng(11)
                candidates = [{"id": c.key, "features": dict(c.features)} for c in world.candidates]
                bodies = [
                    msgspec.json.encode({
                        "unit_id": f"u{i}", "placements": ["carousel"],
                        "context": world.features(world.context(rng)),
                        "slates": {"carousel": {"slots": slots, "candidates": candidates}},
                    })
                    for i in range(decides)
                ]  # fmt: skip
                decoder = msgspec.json.Decoder(DecideRequest)
                encoder = msgspec.json.Encoder()
                engine = services.engine

                async def decide_all() -> Any:
                    # On the app's own event loop (where its Redis connections live).
                    answer = None
                    for body in bodies:
                        request = decoder.decode(body)
                        answer = await engine.decide(
                            request.unit_id,
                            request.placements,
                            request.context,
                            request.consent,
                            int(time.time() * 1000),
                            slates=request.slates,
                        )
                        encoder.encode(answer)
                    return answer

                started = time.process_time()
                answer = await asyncio.to_thread(client.blocking_portal.call, decide_all)
                cpu = (time.process_time() - started) / decides * 1000
                assert answer is not None and answer.decisions[0].reason == "policy", answer
                assert answer.decisions[0].model_version == "1", "the trained model did not load"
                return cpu
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1_000)
    defaults = VWSlatesConfig()
    parser.add_argument("--exploration", default=defaults.exploration)
    parser.add_argument("--epsilon", type=float, default=defaults.epsilon)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--interactions", default=",".join(defaults.interactions))
    parser.add_argument("--api", action="store_true", help="also measure the server's path")
    parser.add_argument("--api-decides", type=int, default=2_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    results = []
    trained: tuple[VWSlatesPolicy, World] | None = None
    for seed in range(1, args.seeds + 1):
        r, trained = run_seed(seed, args)
        results.append(r)
        print(
            f"seed {seed}: clicks/slate random {r['random']:.4f} oracle {r['oracle']:.4f} "
            f"served {r['served']:.4f} (share {r['share']:.3f}) greedy {r['greedy']:.4f} "
            f"(share {r['greedy_share']:.3f}); {r['seconds']:.0f} s; CPU/decide "
            f"{r['cpu_ms']:.3f} ms (request candidates {r['cpu_ms_request']:.3f} ms)",
            flush=True,
        )
    print(
        f"median of {len(results)} seeds: served share "
        f"{statistics.median(r['share'] for r in results):.3f}, greedy share "
        f"{statistics.median(r['greedy_share'] for r in results):.3f}, CPU/decide "
        f"{statistics.median(r['cpu_ms'] for r in results):.3f} ms (request candidates "
        f"{statistics.median(r['cpu_ms_request'] for r in results):.3f} ms)"
    )
    if args.api and trained is not None:
        rounds = [
            asyncio.run(api_cpu(trained[0], trained[1], args.slots, args.api_decides))
            for _ in range(3)
        ]
        print(
            f"server decision path, CPU per {args.slots}-slot decide over {args.items} request "
            f"candidates: median {statistics.median(rounds):.3f} ms (rounds "
            f"{', '.join(f'{c:.3f}' for c in rounds)})"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
