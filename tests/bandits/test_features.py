"""VW text formatting of typed features."""

from __future__ import annotations

import pytest
from vowpal_wabbit_next import TextFormatParser, Workspace

from bandits.base import FeatureValue
from bandits.features import action_line, clean, format_features, shared_line


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"age": 42}, "age:42"),
        ({"score": 0.25}, "score:0.25"),
        ({"country": "fr"}, "country=fr"),
        ({"tags": ["a", "b"]}, "tags=a tags=b"),
        ({"member": True, "guest": False}, "member"),
        ({"zero": 0, "nan": float("nan"), "inf": float("inf"), "empty": ""}, ""),
        ({"city": "New York"}, "city=New%20York"),
        ({"a|b": "x:y"}, "a%7Cb=x%3Ay"),
        ({"k=v": "1%"}, "k%3Dv=1%25"),
        ({"": "dropped", "tabs": "a\tb", "null": None}, "tabs=a%09b"),  # type: ignore[dict-item]
    ],
)
def test_format_features(features: dict[str, FeatureValue], expected: str) -> None:
    """Numbers are name:value, strings name=value, lists repeat, booleans are presence."""
    assert format_features(features) == expected


def test_escaping_is_injective() -> None:
    """Different raw strings never escape to the same token."""
    raw = ["a b", "a_b", "a%20b", "a:b", "a|b", "a=b"]
    assert len({clean(r, name=True) for r in raw}) == len(raw)
    assert len({clean(r) for r in raw}) == len(raw)


def test_lines_parse_into_the_intended_namespaces() -> None:
    """VW parses the shared line into namespace U and the action line into A, feature by feature."""
    ws = Workspace(["--cb_explore_adf", "--quiet"])
    parser = TextFormatParser(ws)
    shared = parser.parse_line(shared_line({"city": "New York", "n": 2, "tags": ["x", "y z"]}))
    action = parser.parse_line(action_line("big | bold", {"price": 9.5, "colour": "red"}))
    assert shared.get_label().shared  # type: ignore[union-attr]
    assert shared.feat_group_indices == [ord("U")]
    assert len(shared[ord("U")]) == 4
    assert action.feat_group_indices == [ord("A")]
    assert len(action[ord("A")]) == 3  # _key, price, colour
    assert action_line("big | bold", {}) == "|A _key=big%20%7C%20bold"


def test_unsupported_value_types_are_refused() -> None:
    """A value outside FeatureValue (here a dict) raises TypeError naming the feature."""
    with pytest.raises(TypeError, match="feature 'nested' has unsupported type dict"):
        format_features({"nested": {"a": 1}})  # type: ignore[dict-item]
