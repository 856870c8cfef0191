"""What a serving worker loads: heavy libraries only the rare endpoints need stay out of it.

Each module below adds tens of MB to the RSS of every process that imports it (measured
2026-12-08: pyarrow about 57 MB, scipy.optimize about 24 MB, chdb about 307 MB); a server tree
runs several workers, a learner and the event-log owner, and is meant to stay under 1 GB. The
file import (pyarrow) and test planning (scipy.optimize) import them when they run; chdb is opened
only by the process that owns the embedded event log.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pyarrow", "scipy.optimize", "chdb", "pandas")


@pytest.mark.parametrize("module", ["decision_api.app", "decision_api.cli.main"])
def test_importing_the_worker_app_leaves_heavy_libraries_out(module: str) -> None:
    """Importing the app (what each worker does) or the CLI loads none of ``HEAVY``."""
    code = f"import sys, {module}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == []


def test_test_planning_still_solves_with_its_late_import() -> None:
    """``proportion_mde`` imports scipy.optimize itself and finds the detectable increase."""
    from experiments.statistics.power import proportion_mde, proportion_power

    d = proportion_mde(0.1, 5_000, 5_000)
    assert 0.0 < d < 0.05
    assert proportion_power(0.1, 0.1 + d, 5_000, 5_000) == pytest.approx(0.8, abs=1e-6)
