"""Targeting rules: every operator, missing attributes, type mismatches, lists, nested groups."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tailor_contract.definitions import Condition
from tailor_contract.targeting import matches

ATTRS: dict[str, Any] = {
    "device": "mobile",
    "country": "DE",
    "visits": 3,
    "score": 0.75,
    "vip": True,
    "zero": 0,
    "tags": ["sale", "new"],
    "page": "/products/shoes",
    "empty_list": [],
}


def rule(attribute: str, op: str, value: Any = None) -> Condition:
    """A leaf condition, validated as the API would decode it."""
    raw: dict[str, Any] = {"attribute": attribute, "op": op}
    if value is not None:
        raw["value"] = value
    return msgspec.convert(raw, Condition)


RULES = [
    # eq: same kind and value; numbers compare across int/float; never number vs string or bool
    ("device", "eq", "mobile", True),
    ("device", "eq", "desktop", False),
    ("visits", "eq", 3, True),
    ("visits", "eq", 3.0, True),
    ("visits", "eq", "3", False),
    ("vip", "eq", True, True),
    ("vip", "eq", 1, False),
    ("zero", "eq", False, False),
    ("missing", "eq", "x", False),
    ("tags", "eq", "sale", False),
    # ne: the negation of eq, and true for a missing attribute
    ("device", "ne", "desktop", True),
    ("device", "ne", "mobile", False),
    ("visits", "ne", "3", True),
    ("missing", "ne", "x", True),
    # in: scalar membership; a list attribute matches when any item is in the rule's list
    ("country", "in", ["DE", "AT", "CH"], True),
    ("country", "in", ["FR"], False),
    ("visits", "in", [1, 2, 3], True),
    ("visits", "in", ["3"], False),
    ("tags", "in", ["new", "old"], True),
    ("tags", "in", ["old"], False),
    ("empty_list", "in", ["x"], False),
    ("missing", "in", ["x"], False),
    # ordered operators: numbers with numbers, strings with strings, nothing else
    ("visits", "lt", 4, True),
    ("visits", "lt", 3, False),
    ("visits", "lte", 3, True),
    ("visits", "lte", 2.5, False),
    ("score", "gt", 0.5, True),
    ("score", "gt", 0.75, False),
    ("score", "gte", 0.75, True),
    ("score", "gte", 1, False),
    ("country", "gt", "AA", True),
    ("country", "lt", "AA", False),
    ("visits", "gt", "1", False),
    ("country", "lt", 5, False),
    ("vip", "gte", 0, False),
    ("tags", "gt", "a", False),
    ("missing", "lt", 10, False),
    ("missing", "gte", 0, False),
    # exists: presence (any value, even a falsy one); exists false is absence
    ("device", "exists", None, True),
    ("zero", "exists", None, True),
    ("empty_list", "exists", True, True),
    ("missing", "exists", None, False),
    ("missing", "exists", True, False),
    ("missing", "exists", False, True),
    ("device", "exists", False, False),
    # contains: substring on strings, membership on lists, false otherwise
    ("page", "contains", "/products", True),
    ("page", "contains", "/cart", False),
    ("tags", "contains", "sale", True),
    ("tags", "contains", "sal", False),
    ("visits", "contains", "3", False),
    ("visits", "contains", 3, False),
    ("missing", "contains", "x", False),
]


@pytest.mark.parametrize(("attribute", "op", "value", "expected"), RULES)
def test_rule(attribute: str, op: str, value: Any, expected: bool) -> None:
    """Each operator gives the documented answer, including missing and mismatched attributes."""
    assert matches(rule(attribute, op, value), ATTRS) is expected


def test_no_condition_matches_everyone() -> None:
    """An experiment without targeting matches any unit, even one with no attributes."""
    assert matches(None, {}) is True


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"all": [{"attribute": "device", "op": "eq", "value": "mobile"},
                  {"attribute": "visits", "op": "gte", "value": 3}]}, True),
        ({"all": [{"attribute": "device", "op": "eq", "value": "mobile"},
                  {"attribute": "visits", "op": "gt", "value": 3}]}, False),
        ({"any": [{"attribute": "device", "op": "eq", "value": "desktop"},
                  {"attribute": "tags", "op": "contains", "value": "sale"}]}, True),
        ({"any": [{"attribute": "device", "op": "eq", "value": "desktop"},
                  {"attribute": "missing", "op": "exists"}]}, False),
        # (mobile AND (DE OR FR)) AND NOT-missing(country)
        ({"all": [{"attribute": "device", "op": "eq", "value": "mobile"},
                  {"any": [{"attribute": "country", "op": "eq", "value": "FR"},
                           {"attribute": "country", "op": "eq", "value": "DE"}]},
                  {"attribute": "country", "op": "exists", "value": True}]}, True),
        ({"any": [{"all": [{"attribute": "vip", "op": "eq", "value": True},
                           {"attribute": "score", "op": "lt", "value": 0.5}]},
                  {"all": [{"attribute": "visits", "op": "lt", "value": 2}]}]}, False),
        ({"all": [{"any": [{"all": [{"attribute": "page", "op": "contains",
                                     "value": "shoes"}]}]}]}, True),
        # an empty `all` is vacuously true, an empty `any` is false
        ({"all": []}, True),
        ({"any": []}, False),
    ],
)  # fmt: skip
def test_nested_groups(condition: dict[str, Any], expected: bool) -> None:
    """`all` needs every member, `any` needs one, and groups nest."""
    assert matches(msgspec.convert(condition, Condition), ATTRS) is expected


def test_attributes_lists_every_attribute_read_at_any_depth() -> None:
    """A condition reports every attribute it reads (used by the sensitive-feature check)."""
    condition = msgspec.convert(
        {"all": [{"attribute": "a", "op": "exists"},
                 {"any": [{"attribute": "b", "op": "eq", "value": 1},
                          {"all": [{"attribute": "c", "op": "lt", "value": 2}]}]}]},
        Condition,
    )  # fmt: skip
    assert condition.attributes() == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"attribute": "x", "op": "bogus", "value": 1}, r"Invalid enum value 'bogus' - at `\$.op`"),
        ({"attribute": "x", "op": "eq"}, "`eq` needs a scalar"),
        ({"attribute": "x", "op": "ne", "value": ["a"]}, "`ne` needs a scalar"),
        ({"attribute": "x", "op": "contains"}, "`contains` needs a scalar"),
        ({"attribute": "x", "op": "in", "value": []}, "`in` needs a non-empty list"),
        ({"attribute": "x", "op": "in", "value": "a"}, "`in` needs a non-empty list"),
        ({"attribute": "x", "op": "lt", "value": True}, "`lt` needs a number or string"),
        ({"attribute": "x", "op": "gte", "value": [1]}, "`gte` needs a number or string"),
        ({"attribute": "x", "op": "exists", "value": 3}, "`exists` takes no value or a boolean"),
        ({"attribute": "x", "op": "eq", "value": {"a": 1}}, r"got `object` - at `\$.value`"),
        ({"op": "eq", "value": 1}, "needs `attribute` and `op`"),
        ({"attribute": "x"}, "needs `attribute` and `op`"),
        ({"attribute": "", "op": "exists"}, r"length >= 1 - at `\$.attribute`"),
        ({"all": [], "any": []}, "either `all` or `any`"),
        ({"all": [], "attribute": "x", "op": "exists"}, "either a rule"),
        ({"all": [{"all": [{"all": [{"all": [{"attribute": "x", "op": "exists"}]}]}]}]},
         "nested deeper than 4"),
        ({"all": [{"attribute": "x", "op": "exists"}] * 51}, "length <= 50"),
        ({"attribute": "x", "op": "eq", "value": 1, "extra": 1}, "unknown field `extra`"),
    ],
)  # fmt: skip
def test_invalid_conditions_fail_at_decode(raw: dict[str, Any], match: str) -> None:
    """A malformed rule is refused when it is decoded, with a message naming the problem."""
    with pytest.raises(msgspec.ValidationError, match=match):
        msgspec.convert(raw, Condition)


def test_four_levels_of_nesting_are_allowed() -> None:
    """Nesting up to the documented depth (4) decodes and evaluates."""
    raw = {"all": [{"any": [{"all": [{"attribute": "vip", "op": "eq", "value": True}]}]}]}
    assert matches(msgspec.convert(raw, Condition), ATTRS) is True
