"""Typed features to Vowpal Wabbit text format.

Shared (context) features go in namespace ``U``, per-action features in namespace ``A``:

- numbers become ``name:value`` (non-finite numbers and zeros are dropped, as VW drops zeros);
- strings become ``name=value`` (one hashed indicator per category);
- lists of strings become several ``name=item``;
- booleans become presence: ``name`` when true, nothing when false.

VW's text format splits on whitespace, ``|`` and ``:``, so those characters (and ``=`` in
names, which would make ``a=b`` + ``c`` collide with ``a`` + ``b=c``) are percent-escaped.
Each action also carries ``_key=<candidate key>`` so that, crossed with the context by
``-q UA``, the model can learn a per-variant, per-context effect without any variant metadata.
Slates (``--ccb_explore_adf``) prefix every line with ``ccb`` and add one line per slot, with
the slot's position as ``_slot=<j>`` in namespace ``S``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from bandits.base import FeatureValue

__all__ = [
    "KEY_FEATURE",
    "SLOT_FEATURE",
    "action_line",
    "ccb_action_line",
    "ccb_shared_line",
    "clean",
    "format_features",
    "shared_line",
    "slot_line",
]

KEY_FEATURE: Final = "_key"
SLOT_FEATURE: Final = "_slot"
# Percent-escapes keep the mapping injective: "a b" and "a_b" stay different features.
_VALUE_ESCAPES: Final = str.maketrans({c: f"%{ord(c):02X}" for c in "% \t\n\v\f\r|:"})
_NAME_ESCAPES: Final = str.maketrans({c: f"%{ord(c):02X}" for c in "% \t\n\v\f\r|:="})
_VALUE_UNSAFE: Final = re.compile(r"[% \t\n\v\f\r|:]")
_NAME_UNSAFE: Final = re.compile(r"[% \t\n\v\f\r|:=]")
# Feature names repeat across every request; remember their escaped form (bounded).
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_SIZE: Final = 65_536


def clean(text: str, *, name: bool = False) -> str:
    """Return ``text`` with VW's reserved characters percent-escaped.

    Reserved are whitespace, ``|``, ``:``, ``%`` and, in names, ``=``; distinct inputs stay
    distinct.
    """
    if name:
        return text.translate(_NAME_ESCAPES) if _NAME_UNSAFE.search(text) else text
    return text.translate(_VALUE_ESCAPES) if _VALUE_UNSAFE.search(text) else text


def _clean_name(raw: str) -> str:
    name = _NAME_CACHE.get(raw)
    if name is None:
        name = clean(raw, name=True)
        if len(_NAME_CACHE) < _NAME_CACHE_SIZE:
            _NAME_CACHE[raw] = name
    return name


def format_features(features: Mapping[str, FeatureValue]) -> str:
    """Return the space-separated VW tokens for ``features`` (may be empty).

    Keys are emitted in the mapping's iteration order; empty names, empty strings and None
    are skipped (VW would read an empty token as a bare namespace separator).

    Raises:
        TypeError: for a value that is not a string, number, boolean, list or None.
    """
    tokens: list[str] = []
    append = tokens.append
    for raw_name, value in features.items():
        name = _clean_name(raw_name)
        if not name:
            continue
        # Exact type checks first (the hot path); bool must precede int, its base class.
        if type(value) is str:
            if value:
                append(f"{name}={clean(value)}")
        elif isinstance(value, bool):
            if value:
                append(name)
        elif isinstance(value, int | float):
            if value and math.isfinite(value):
                append(f"{name}:{value!r}")
        elif isinstance(value, str):
            if value:
                append(f"{name}={clean(value)}")
        elif isinstance(value, list | tuple):
            for item in value:
                if item:
                    append(f"{name}={clean(str(item))}")
        elif value is not None:  # a JSON null is an absent feature; anything else is a bug
            raise TypeError(f"feature {raw_name!r} has unsupported type {type(value).__name__}")
    return " ".join(tokens)


def shared_line(context: Mapping[str, FeatureValue]) -> str:
    """Return the VW ``shared`` line holding the context in namespace ``U``."""
    return f"shared |U {format_features(context)}"


def action_line(key: str, features: Mapping[str, FeatureValue]) -> str:
    """Return the VW action line: ``_key=<key>`` and the action's features in namespace ``A``."""
    body = format_features(features)
    return f"|A {KEY_FEATURE}={clean(key)} {body}" if body else f"|A {KEY_FEATURE}={clean(key)}"


def ccb_shared_line(context: Mapping[str, FeatureValue]) -> str:
    """Return the VW ``ccb shared`` line holding the context in namespace ``U``."""
    return f"ccb shared |U {format_features(context)}"


def ccb_action_line(key: str, features: Mapping[str, FeatureValue]) -> str:
    """Return the VW ``ccb action`` line: ``_key=<key>`` and the item's features in ``A``."""
    return f"ccb action {action_line(key, features)}"


def slot_line(position: int) -> str:
    """Return the VW ``ccb slot`` line of the slot at ``position`` (0 = first)."""
    return f"ccb slot |S {SLOT_FEATURE}={position}"
