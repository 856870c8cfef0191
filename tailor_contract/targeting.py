"""Evaluate targeting conditions against a unit's attributes (profile features + request context).

Semantics, chosen to be unsurprising and documented in ``docs/experiments.md``:

- a missing attribute fails every rule except ``ne`` (a missing value is "not equal") and
  ``exists: false``;
- numbers compare as numbers, strings as strings; a number never equals a string (``"3" != 3``);
- ``contains`` tests substring on strings and membership on lists; ``in`` is true when the value
  (or, for a list attribute, any of its items) is in the rule's list;
- ``lt``/``lte``/``gt``/``gte`` between a number and a string are false.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailor_contract.definitions import Condition, RuleValue

_MISSING = object()


def matches(condition: Condition | None, attributes: Mapping[str, Any]) -> bool:
    """Whether ``attributes`` satisfy ``condition``; no condition matches everyone."""
    if condition is None:
        return True
    if condition.all is not None:
        return all(matches(c, attributes) for c in condition.all)
    if condition.any is not None:
        return any(matches(c, attributes) for c in condition.any)
    assert condition.attribute is not None and condition.op is not None
    return _rule(condition.op, attributes.get(condition.attribute, _MISSING), condition.value)


def _rule(op: str, actual: Any, expected: RuleValue) -> bool:
    if actual is _MISSING:
        return op == "ne" or (op == "exists" and expected is False)
    match op:
        case "exists":
            return expected is not False
        case "eq":
            return _equal(actual, expected)
        case "ne":
            return not _equal(actual, expected)
        case "in":
            assert isinstance(expected, list)
            if isinstance(actual, list):
                return any(_member(item, expected) for item in actual)
            return _member(actual, expected)
        case "contains":
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            if isinstance(actual, list):
                return _member(expected, actual)
            return False
        case _:
            return _ordered(op, actual, expected)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _member(value: Any, items: list[Any]) -> bool:
    return any(_equal(value, item) for item in items)


def _ordered(op: str, actual: Any, expected: Any) -> bool:
    kind = _kind(actual)
    if kind != _kind(expected) or kind not in {"number", "str"}:
        return False
    match op:
        case "lt":
            return bool(actual < expected)
        case "lte":
            return bool(actual <= expected)
        case "gt":
            return bool(actual > expected)
        case _:
            return bool(actual >= expected)
