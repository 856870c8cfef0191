"""Regenerate ``assignment_cases.json``: golden vectors for assignment hash version 1.

Run ``python tests/golden/make_assignment_cases.py`` from the repository root. The generator is
an independent reading of the specification in ``tailor_contract/assignment.py`` and imports nothing
from it, so a change to the code cannot silently change the vectors:

- ``hash``: the first 8 bytes of ``sha256("v1|{salt}|{unit_id}")`` (UTF-8) as an unsigned
  big-endian integer ``h`` (written as a decimal string, since JSON numbers lose precision past
  2**53), and ``u = h / 2**64`` as the nearest double;
- ``variant``: the index of the bucket ``[c[i-1], c[i])`` of the normalised cumulative weights
  that holds ``u``, computed here in exact rational arithmetic (a zero-weight bucket is empty);
- ``holdout``: ``u' < holdout`` for ``u'`` the hash of salt ``"{salt}:holdout"``;
- ``layer``: ``start <= u'' < end`` for ``u''`` the hash of salt ``"layer:{layer}"``;
- ``bucket``: the bucket rule alone, at positions exactly on bucket edges.

A case whose exact answer differs from what doubles give is refused (it would make the file
depend on floating-point details); none of the chosen cases is near a boundary.
"""

from __future__ import annotations

import hashlib
import json
import sys
from fractions import Fraction
from itertools import accumulate
from pathlib import Path

OUT = Path(__file__).with_name("assignment_cases.json")
HASH_VERSION = 1

WEIGHTS: list[list[float]] = [
    [1, 1],
    [1, 2, 7],
    [0.1, 0.2, 0.7],
    [1 / 3, 1 / 3, 1 / 3],
    [0, 1],
    [1, 0],
    [1, 0, 1],
    [0, 0, 5],
    [3, 0, 0, 1],
    [0.001, 999.999],
    [1e6, 1, 1],
    [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    [2.5],
    [0.25, 0.25, 0.5],
]
SALTS = ["hero-banner", "checkout-cta", "Ünïcödé-salt", "exp:v2", "a"]
UNITS = [
    "u-123",
    "u-124",
    "user@example.com",
    "0",
    "",
    "ünïcödé-id",
    "用户-42",
    "emoji-🎉-unit",
    "with space and\ttab",
    "x" * 256,
    "a|b|c",
    "9007199254740993",
]

# Positions on bucket edges (exactly representable): a unit exactly on an upper bound belongs to
# the next non-empty bucket; the largest double below 1 stays in the last non-empty bucket.
BOUNDARIES: list[tuple[float, list[float]]] = [
    (0.0, [1, 1]),
    (0.0, [0, 1]),
    (0.0, [0, 0, 5]),
    (0.5, [1, 1]),
    (0.49999999999999994, [1, 1]),
    (0.5, [1, 0, 1]),
    (0.25, [0.25, 0.25, 0.5]),
    (0.75, [1, 2, 1]),
    (0.9999999999999999, [1, 0]),
    (0.9999999999999999, [3, 0, 0, 1]),
]


def hash_int(salt: str, unit_id: str) -> int:
    """The 64-bit integer behind a unit's position for a salt."""
    digest = hashlib.sha256(f"v{HASH_VERSION}|{salt}|{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def exact_bucket(h: int, weights: list[float]) -> int:
    """The bucket holding ``h / 2**64``, in exact arithmetic."""
    return exact_bucket_of(Fraction(h, 1 << 64), weights)


def exact_bucket_of(u: Fraction, weights: list[float]) -> int:
    """The bucket holding ``u``, in exact arithmetic."""
    total = sum(Fraction(w) for w in weights)
    upper = Fraction(0)
    for i, w in enumerate(weights):
        upper += Fraction(w) / total
        if w > 0 and u < upper:
            return i
    raise AssertionError("u is always below the last upper bound 1")


def float_bucket(u: float, weights: list[float]) -> int:
    """The same bucket with doubles, as a client in any language would compute it."""
    total = float(sum(weights))
    cumulative = [c / total for c in accumulate(weights)]
    cumulative[-1] = 1.0
    for i, upper in enumerate(cumulative):
        if u < upper:
            return i
    return len(weights) - 1


def case(salt: str, unit_id: str, weights: list[float]) -> dict[str, object]:
    """One assignment vector."""
    h = hash_int(salt, unit_id)
    u = h / float(1 << 64)
    index = exact_bucket(h, weights)
    if float_bucket(u, weights) != index:
        raise SystemExit(f"boundary case refused: {salt!r} {unit_id!r} {weights}")
    return {
        "salt": salt,
        "unit_id": unit_id,
        "hash_uint64": str(h),
        "hash": u,
        "weights": weights,
        "variant": index,
    }


def build() -> dict[str, object]:
    """Every vector, in a stable order."""
    assignment = []
    for i, unit_id in enumerate(UNITS):
        for j, salt in enumerate(SALTS):
            weights = WEIGHTS[(i * len(SALTS) + j) % len(WEIGHTS)]
            assignment.append(case(salt, unit_id, weights))
    holdout = []
    for i, unit_id in enumerate(UNITS):
        share = [0.05, 0.1, 0.5, 0.9][i % 4]
        h = hash_int("hero-banner:holdout", unit_id)
        holdout.append(
            {
                "salt": "hero-banner",
                "unit_id": unit_id,
                "holdout": share,
                "hash": h / float(1 << 64),
                "in_holdout": Fraction(h, 1 << 64) < Fraction(share),
            }
        )
    layer = []
    for i, unit_id in enumerate(UNITS):
        start, end = [(0.0, 0.5), (0.5, 1.0), (0.25, 0.75), (0.0, 0.1)][i % 4]
        h = hash_int("layer:home", unit_id)
        u = Fraction(h, 1 << 64)
        layer.append(
            {
                "layer": "home",
                "unit_id": unit_id,
                "slice": [start, end],
                "hash": h / float(1 << 64),
                "in_layer": Fraction(start) <= u < Fraction(end),
            }
        )
    bucket = []
    for u, weights in BOUNDARIES:
        index = exact_bucket_of(Fraction(u), weights)
        if float_bucket(u, weights) != index:
            raise SystemExit(f"boundary case disagrees: {u!r} {weights}")
        bucket.append({"hash": u, "weights": weights, "variant": index})
    return {
        "hash_version": HASH_VERSION,
        "description": "Assignment hash v1; the specification is in make_assignment_cases.py.",
        "assignment": assignment,
        "holdout": holdout,
        "layer": layer,
        "bucket": bucket,
    }


def render(data: dict[str, object]) -> str:
    """JSON with one vector per line, so a diff shows exactly which vectors moved."""
    lines = ["{"]
    items = list(data.items())
    for n, (name, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, list):
            rows = [json.dumps(row, ensure_ascii=False) for row in value]
            lines.append(f" {json.dumps(name)}: [")
            lines.extend(f"  {row}," for row in rows[:-1])
            lines.append(f"  {rows[-1]}")
            lines.append(f" ]{comma}")
        else:
            lines.append(f" {json.dumps(name)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Write the file (or, with ``--check``, fail when it is out of date)."""
    text = render(build())
    if "--check" in sys.argv[1:]:
        return 0 if OUT.read_text(encoding="utf-8") == text else 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
