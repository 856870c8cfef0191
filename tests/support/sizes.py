"""How long the long simulations and fault runs are: bounded by default, full size with
``TAILOR_LONG_TESTS=1``.

Either size asserts the same promises; the default only gives a test fewer events or rounds
(shorter phases of load between two faults), so that the suite stays within its time budget.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

LONG_TESTS = os.environ.get("TAILOR_LONG_TESTS", "") == "1"


def sized(default: T, full: T) -> T:
    """``full`` when ``TAILOR_LONG_TESTS=1`` is set, ``default`` otherwise."""
    return full if LONG_TESTS else default
