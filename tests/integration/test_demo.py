"""``tailor demo``: the simulated shop's truth, and the whole demo as a real process.

The end-to-end tests run ``tailor demo --fast`` (a tiny shop, one simulated day, its own
server and private Redis) in a temporary directory and check what a newcomer sees — the truth
vs findings table and the report addresses — and that nothing is left running afterwards, on a
normal exit and on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from demo.reports import (
    AdaptiveView,
    BayesView,
    ComparisonView,
    IntervalView,
    LiftView,
    ReportView,
    UpliftSectionView,
    VerdictView,
)
from demo.server import MARKER, DemoSetupError, prepare_data_dir
from demo.shop import experiments
from demo.summary import bandit_verdict_finding, lift_finding
from demo.world import (
    DEVICES,
    HERO_PURCHASE,
    SEGMENTS,
    best_sorts,
    carousel_ctr,
    conversion_probability,
    hero_truth,
    make_population,
    open_probability,
    purchase_probability,
)

TAILOR = Path(sys.executable).with_name("tailor")


# --- the world's truth ------------------------------------------------------------------------


def test_hero_truth_matches_a_monte_carlo_of_the_same_visits() -> None:
    """Per-unit conversion truth equals simulated shoppers' purchase frequency (3 SE, seed 1)."""
    offers = [["none"], ["ten_off", "none", "none"], ["ten_off"] * 5, ["none"] * 8]
    truth = hero_truth(offers)
    rng = np.random.default_rng(1)
    draws = 200_000
    for hero in ("control", "spring"):
        bought = np.zeros(draws, dtype=bool)
        unit = rng.integers(0, len(offers), size=draws)
        for u, shown in enumerate(offers):
            rows = unit == u
            for offer in shown:
                bought[rows] |= rng.random(int(rows.sum())) < purchase_probability(hero, offer)
        se = np.sqrt(truth[hero] * (1 - truth[hero]) / draws)
        assert abs(bought.mean() - truth[hero]) < 3 * se
    assert truth["spring"] > truth["control"]


def test_conversion_probability_compounds_visits() -> None:
    """Buying at least once over two 50% visits is 75%; no visits is 0."""
    assert conversion_probability([0.5, 0.5]) == pytest.approx(0.75)
    assert conversion_probability([]) == 0.0
    assert purchase_probability("spring", "ten_off") == pytest.approx(HERO_PURCHASE["spring"] * 1.3)


def test_best_carousel_sort_depends_on_segment_and_device() -> None:
    """Some segment's best sort changes with the device, and each device's with the segment;
    the best is ahead of the runner-up by at least 4 points everywhere."""
    best = best_sorts()
    assert any(best[s, 0] != best[s, 1] for s in range(len(SEGMENTS)))
    assert all(len(set(best[:, d].tolist())) > 1 for d in range(len(DEVICES)))
    ordered = np.sort(carousel_ctr(), axis=2)
    assert (ordered[:, :, -1] - ordered[:, :, -2] >= 0.04 - 1e-12).all()


@pytest.mark.parametrize(
    ("hour", "peak", "expected"),
    [(20, 20, 0.32), (8, 20, 0.02), (23, 1, 0.02 + 0.30 * np.exp(-4 / 4.5))],
)
def test_open_probability_peaks_at_the_reading_hour(hour: int, peak: int, expected: float) -> None:
    """Opens peak at the reader's hour and wrap around midnight (23h is 2 h from 01h)."""
    assert open_probability(hour, peak, "plain") == pytest.approx(expected, abs=1e-3)
    assert open_probability(hour, peak, "emoji") == pytest.approx(1.35 * expected, abs=1e-3)


def test_population_is_deterministic_given_the_seed() -> None:
    """Two populations from the same seed are identical; activity weights sum to one."""
    a, b = (make_population(500, np.random.default_rng(3)) for _ in range(2))
    assert a.unit_ids == b.unit_ids
    assert (a.segment == b.segment).all() and (a.history_opens == b.history_opens).all()
    assert a.activity.sum() == pytest.approx(1.0)


def test_shop_definitions_validate() -> None:
    """The five experiments build as valid definitions on five placements."""
    specs = experiments()
    assert len({s.placement for s in specs}) == 5


def _comparison(estimate: float, lower: float, upper: float, significant: bool) -> ComparisonView:
    interval = IntervalView(estimate, lower, upper)
    return ComparisonView(
        variant="b",
        measure="conversion_rate",
        lift=LiftView(interval),
        sequential=LiftView(interval),
        bayesian=BayesView(0.9),
        significant=significant,
        direction="better" if estimate > 0 else "worse",
    )


@pytest.mark.parametrize(
    ("truth", "found", "must_find", "agrees", "covered"),
    [
        (0.05, (0.04, 0.02, 0.06, True), True, True, True),  # found, interval holds the truth
        (0.05, (0.04, -0.01, 0.09, False), True, False, True),  # sized to be found, was not
        (0.05, (0.04, -0.01, 0.09, False), False, True, True),  # "not yet": no contradiction
        (0.05, (0.09, 0.07, 0.11, True), True, True, False),  # right verdict, interval misses
        (0.0, (0.03, 0.01, 0.05, True), False, False, False),  # significant without an effect
        (-0.05, (0.01, -0.06, 0.08, True), False, False, True),  # significant the wrong way
    ],
)
def test_lift_checks(
    truth: float,
    found: tuple[float, float, float, bool],
    must_find: bool,
    agrees: bool,
    covered: bool,
) -> None:
    """A lift agrees when its verdict does not contradict the truth (and finds what it must);
    it is covered when its 95% interval holds the true lift."""
    row = lift_finding("b vs a", truth, _comparison(*found), must_find=must_find)
    assert (row.agrees, row.covered) == (agrees, covered)


@pytest.mark.parametrize(
    ("truth", "found", "agrees", "covered"),
    [
        (0.05, (0.04, 0.02, 0.06, True), True, True),  # found, the interval holds the truth
        (0.05, (0.04, -0.01, 0.09, False), True, True),  # "not yet": no contradiction
        (-0.03, (0.04, 0.01, 0.07, True), False, False),  # a gain where the policy loses
        (0.05, (0.09, 0.07, 0.11, True), True, False),  # right verdict, interval misses
    ],
)
def test_bandit_verdict_checks(
    truth: float, found: tuple[float, float, float, bool], agrees: bool, covered: bool
) -> None:
    """A bandit's verdict agrees unless it is significant the wrong way; it is covered when its
    interval holds the true difference; without an adaptive section it is not in the report."""
    estimate, lower, upper, significant = found
    gain = IntervalView(estimate, lower, upper)
    report = _report(AdaptiveView("off_policy", "always a", gain, significant))
    row = bandit_verdict_finding(report, truth, points=False)
    assert (row.agrees, row.covered) == (agrees, covered)
    assert row.what.endswith("always a (off-policy)")
    missing = bandit_verdict_finding(_report(None), truth, points=True)
    assert missing.found == "not in the report" and missing.agrees is None


def _report(adaptive: AdaptiveView | None) -> ReportView:
    return ReportView(
        experiment="x",
        verdict=VerdictView("no_data", ""),
        arms=[],
        metrics=[],
        uplift=UpliftSectionView([]),
        off_policy=None,
        warnings=[],
        adaptive=adaptive,
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [("file", "was not made by `tailor demo`"), ("dir", "was not made by `tailor demo`")],
)
def test_foreign_data_dir_is_never_wiped(tmp_path: Path, content: str, match: str) -> None:
    """A directory the demo did not create (a file, or a non-empty folder) is refused, intact."""
    target = tmp_path / "demo"
    if content == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "precious.txt").write_text("precious")
    with pytest.raises(DemoSetupError, match=match):
        prepare_data_dir(target)
    assert "precious" in (
        target.read_text() if target.is_file() else (target / "precious.txt").read_text()
    )


def test_demo_data_dir_is_wiped_at_start(tmp_path: Path) -> None:
    """A directory from a previous demo run is emptied and marked again."""
    target = prepare_data_dir(tmp_path / "demo")
    (target / "old.log").write_text("old")
    again = prepare_data_dir(target)
    assert sorted(p.name for p in again.iterdir()) == [MARKER]


# --- the demo as a process --------------------------------------------------------------------


def processes_under(directory: Path) -> list[str]:
    """Live processes whose working directory or command line is inside ``directory``."""
    found = []
    root = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (root in cmdline or cwd.startswith(root)):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def demo_env() -> dict[str, str]:
    """The test's environment without TAILOR_* (the demo ignores them anyway)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}


@pytest.mark.slow
def test_fast_demo_prints_truth_next_to_findings_and_cleans_up(tmp_path: Path) -> None:
    """``tailor demo --fast --no-serve`` exits 0 within 90 s, prints every experiment's truth
    and findings and the report pages, every key finding agrees with the truth — the three
    bandit experiments' verdicts (their value against the holdout or off-policy) included —,
    and leaves no server or Redis behind."""
    started = time.monotonic()
    done = subprocess.run(
        [str(TAILOR), "demo", "--fast", "--no-serve", "--port", "0"],
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:] + out[-3000:]
    assert elapsed < 90, f"the fast demo took {elapsed:.0f} s"
    for title in (
        "Home-page hero banner",
        "Product carousel",
        "Discount offer",
        "Newsletter subject line",
        "Newsletter send time",
    ):
        assert title in out
    assert out.count("truth:") == out.count("found:") >= 10
    agreeing = re.search(r"Key findings agreeing with the simulated truth: (\d+) of (\d+)", out)
    assert agreeing and agreeing[1] == agreeing[2], out  # bandit verdicts included
    verdicts = re.findall(r"the verdict: the policy's value against ([^\n]+?)  \[agrees\]", out)
    assert sorted(verdicts) == [
        "always bestsellers (off-policy)",
        "always plain (off-policy)",
        "the holdout (from the holdout)",
    ], out
    assert re.search(r"True values inside the reports' 95% intervals: \d+ of \d+", out)
    urls = re.findall(r"http://127\.0\.0\.1:\d+/reports/([a-z-]+)", out)
    assert sorted(urls) == sorted(s.key for s in experiments())
    assert "SDK fallbacks" not in out
    assert "demo:" in done.stderr  # the progress lines
    assert processes_under(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_its_redis(tmp_path: Path) -> None:
    """SIGINT while visitors are simulated ends the demo with 130, and its server and Redis
    with it."""
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [str(TAILOR), "demo", "--fast", "--port", "0"],
            cwd=tmp_path,
            env=demo_env(),
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
        try:
            deadline = time.monotonic() + 120
            while "visitors" not in err_path.read_text():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "the simulation never started"
                time.sleep(0.1)
            assert processes_under(tmp_path)  # the server and its Redis are running
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("the demo did not stop within 60 s of SIGINT:\n" + err_path.read_text())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = err_path.read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "stopping" in err
    assert processes_under(tmp_path) == []
