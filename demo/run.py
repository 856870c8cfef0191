"""``tailor demo``: start a server, run the simulated shop through it, print truth vs findings.

Exit codes: 0 the demo ran (whatever the statistics say: a finding that misses its truth is
shown, not hidden); 1 Tailor failed to answer (SDK fallbacks, lost outcomes, a server that
died); 2 the demo could not start (port in use, foreign data directory); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.parse
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

import httpx
import msgspec
import numpy as np
from redis.exceptions import RedisError

from demo.driver import simulate
from demo.progress import Progress
from demo.records import Observations, Plan
from demo.reports import ReportView, fetch_reports
from demo.server import DemoServer, DemoSetupError, prepare_data_dir
from demo.shop import CAROUSEL, HERO, OFFER, SEND_TIME, SUBJECT
from demo.summary import findings, render
from demo.world import Population, make_population
from sdk import TailorError

__all__ = ["DemoOptions", "run_demo", "scale"]

T = TypeVar("T")


class DemoOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What ``tailor demo`` was asked for."""

    fast: bool = False
    days: int | None = None
    port: int | None = None
    serve: bool = True
    seed: int = 7
    data_dir: Path = Path("data/demo")


class Scale(msgspec.Struct, frozen=True, kw_only=True):
    """Population size and traffic."""

    shoppers: int
    plan: Plan


def scale(options: DemoOptions) -> Scale:
    """The demo's size: 3,000 shoppers and 3 days of 2,500 visits (``--fast``: 300, 1, 300)."""
    if options.fast:
        shoppers, days, visits = 300, 1, 300
    else:
        shoppers, days, visits = 3000, 3, 2500
    days = options.days if options.days is not None else days
    return Scale(shoppers=shoppers, plan=Plan(days=days, visits_per_day=visits, seed=options.seed))


def run_demo(options: DemoOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the whole demo; see the module docstring for the exit codes."""
    started = time.monotonic()
    size = scale(options)
    try:
        data_dir = prepare_data_dir(options.data_dir)
        port = DemoServer.choose_port(options.port)
    except DemoSetupError as exc:
        print(f"tailor demo: {exc}", file=err)
        return 2
    server = DemoServer(data_dir, port)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(
            f"tailor demo: starting a server on {server.url} (data and log in {data_dir})", file=err
        )
        server.start()
        server.wait_ready()
        assert server.redis_url is not None
        population = make_population(size.shoppers, np.random.default_rng(options.seed))
        subscribers = int(population.subscribed.sum())
        plan = size.plan
        progress = Progress(
            population.size + plan.days * (plan.visits_per_day + subscribers), stream=err
        )
        obs = run_interruptibly(simulate(population, plan, server.url, server.redis_url, progress))
        progress.set_stage("reading the reports")
        reports = run_interruptibly(read_reports(server.url, population, obs))
        progress.finish()
        elapsed = time.monotonic() - started
        out.write(summary_text(population, plan, obs, reports, server.url, elapsed, options.fast))
        out.flush()
        status = 1 if obs.fallbacks or obs.dropped_outcomes else 0
        if not options.serve:
            return status
        print(
            f"tailor demo: still serving on {server.url} — open the reports above; Ctrl-C to stop",
            file=err,
        )
        while server.alive():
            time.sleep(0.5)
        print(f"tailor demo: the server stopped unexpectedly:\n{server.log_tail()}", file=err)
        return 1
    except KeyboardInterrupt:
        print("\ntailor demo: stopping", file=err)
        return 130
    except DemoSetupError as exc:
        print(f"tailor demo: {exc}", file=err)
        return 1
    except (TailorError, httpx.HTTPError, RedisError) as exc:
        print(
            f"\ntailor demo: the API failed: {exc!r}\nserver log ({server.log_path}):\n"
            f"{server.log_tail()}",
            file=err,
        )
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short (it is bounded: about 30 s at most).
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)


def run_interruptibly(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, except that a Ctrl-C always ends it with ``KeyboardInterrupt``.

    asyncio's own SIGINT handling cancels the main task and raises ``KeyboardInterrupt`` only
    if the task then ends cancelled; a cancellation lost inside a library (seen once under CI
    load: the demo ran on and kept serving) would make it ignore the Ctrl-C. Here the signal
    raises at once, and is remembered in case something swallows it anyway.
    """
    interrupted = False

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = asyncio.run(main)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return result


def sized_to_find(plan: Plan, fast: bool) -> bool:
    """Whether the run is big enough for the reports to find the effects (the default size)."""
    return not fast and plan.days >= 3 and plan.visits_per_day >= 2500


def report_params(population: Population) -> dict[str, dict[str, str | int]]:
    """The query parameters of each experiment's report, for the JSON and the HTML page alike.

    The hero and offer tests, and the send-time policy against its holdout, plan for the whole
    population: their always-valid intervals are tightest there (``horizon_units``; the default
    plans for a far larger test, which left the send-time verdict's interval at about ±90 pp
    after 2,000 recipients). The carousel's report is broken down by segment, which its
    off-policy reward model also uses.
    """
    # The newsletters go out on the simulated days ahead and their opens are dated then: the
    # email reports read up to the end of that simulated time, not up to the real now.
    ahead = (datetime.now(UTC) + timedelta(days=40)).date()  # the demo's dates stay within 31
    emails: dict[str, str | int] = {"to": ahead.isoformat()}
    return {
        HERO: {"horizon_units": population.size},
        CAROUSEL: {"segment": "segment"},
        OFFER: {"horizon_units": population.size},
        SUBJECT: dict(emails),
        SEND_TIME: {**emails, "horizon_units": population.size},
    }


async def read_reports(
    api_url: str, population: Population, obs: Observations
) -> dict[str, ReportView]:
    """Every experiment's JSON report, once the event log holds every decision."""
    expected = {HERO: len(obs.visits), SEND_TIME: len(obs.emails)}
    return await fetch_reports(api_url, report_params(population), expected)


def summary_text(
    population: Population,
    plan: Plan,
    obs: Observations,
    reports: dict[str, ReportView],
    url: str,
    elapsed_s: float,
    fast: bool = False,
) -> str:
    """The printed result: scale, truth vs findings, problems, the report pages."""
    opens = sum(e.opened for e in obs.emails)
    purchases = sum(v.purchased for v in obs.visits)
    clicks = sum(v.clicked for v in obs.visits)
    lines = [
        "",
        f"Tailor demo — seed {plan.seed}: {plan.days} simulated day(s), "
        f"{population.size:,} shoppers, {len(obs.visits):,} visits ({purchases:,} purchases, "
        f"{clicks:,} carousel clicks), {len(obs.emails):,} newsletters ({opens:,} opened); "
        f"{elapsed_s:.0f} s",
        "What the simulation knew (truth) next to what Tailor's reports found:",
        *(
            [
                "(A smaller run than the default: too little data for the reports to be sure of\n"
                " every effect; a finding that is not significant yet is no contradiction.)"
            ]
            if not sized_to_find(plan, fast)
            else []
        ),
        "",
        render(findings(population, obs, reports, expect_found=sized_to_find(plan, fast))),
    ]
    problems = []
    if obs.fallbacks:
        problems.append(f"{obs.fallbacks} answers were SDK fallbacks (first: {obs.first_error})")
    if obs.dropped_outcomes:
        problems.append(f"{obs.dropped_outcomes} outcomes were dropped by the SDK")
    if obs.degraded:
        problems.append(f"{obs.degraded} answers were degraded (Redis slow or down)")
    if obs.learn_timeouts:
        problems.append(f"learner did not catch up in time for: {', '.join(obs.learn_timeouts)}")
    for report in reports.values():
        problems.extend(f"{report.experiment}: {w}" for w in report.warnings)
    if problems:
        lines += ["", "Problems:", *(f"  - {p}" for p in problems)]
    lines += ["", "HTML reports:"]
    for key, params in report_params(population).items():
        query = "?" + urllib.parse.urlencode(params) if params else ""
        lines.append(f"  {url}/reports/{key}{query}")
    lines += [
        f"JSON: {url}/v1/experiments/<key>/report  ·  API docs: {url}/schema",
        "",
    ]
    return "\n".join(lines)
