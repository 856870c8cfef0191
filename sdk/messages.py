"""Plain-word messages for what the SDK refuses or cannot reach (I/O-free).

msgspec says ``Expected `str` matching regex '\\A[^\\x00-\\x1f{}]+\\Z' - at `$.unit_id```;
a developer wants ``invalid unit_id 'x\\n': must be text without control characters or
braces``. :func:`invalid_argument` turns the first into the second — the field, the value
given, and the rule in words (the contract's patterns are described here, one line each) — and
:func:`unreachable` says which URL could not be reached and why ("connection refused").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tailor_contract.definitions import KEY_PATTERN
from tailor_contract.wire import ITEM_ID_PATTERN, UNIT_ID_PATTERN

__all__ = ["PATTERNS", "invalid_argument", "unreachable"]

_NAME_TAIL = "letters, digits, '_', '.', ':' or '-'"
PATTERNS: dict[str, str] = {
    UNIT_ID_PATTERN: "text without control characters or braces",
    KEY_PATTERN: f"a key: a letter or digit, then up to 63 {_NAME_TAIL}",
    r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,63}\Z": f"a name: a letter or '_', then up to 63 {_NAME_TAIL}",
    r"\A[a-z][a-z0-9_]{0,39}\Z": "a lower-case name: a letter, then up to 39 letters, digits "
    "or '_'",
    r"\A[A-Za-z0-9_-]+\Z": "letters, digits, '_' or '-'",
    r"\A[0-9a-f]{32}\Z": "32 lower-case hexadecimal digits",
    r"\A[^\x00-\x1f]*\Z": "text without control characters",
    ITEM_ID_PATTERN: "non-empty text without control characters",
}
"""Each pattern of the wire schemas, in words."""

_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "None",
}
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Expected `str` matching regex '(?P<regex>.*)'\Z", re.DOTALL), ""),
    (re.compile(r"Expected `str` of length <= (?P<n>\d+)\Z"), "must be at most {n} characters"),
    (re.compile(r"Expected `str` of length >= (?P<n>\d+)\Z"), "must be at least {n} characters"),
    (re.compile(r"Expected `(?:array|object)` of length <= (?P<n>\d+)\Z"),
     "must have at most {n} items"),
    (re.compile(r"Expected `(?:array|object)` of length >= (?P<n>\d+)\Z"),
     "must have at least {n} item(s)"),
    (re.compile(r"Expected `(?P<type>[^`]+)` (?P<op>[<>]=?) (?P<n>[-\d.e+]+)\Z"),
     "must be {op} {n}"),
    (re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`\Z"),
     "must be {want}, got {got}"),
    (re.compile(r"Object missing required field `(?P<name>[^`]+)`\Z"), "needs the field {name!r}"),
    (re.compile(r"Object contains unknown field `(?P<name>[^`]+)`\Z"),
     "has an unknown field {name!r}"),
]  # fmt: skip
_SEGMENT = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")


def _types(text: str) -> str:
    return " or ".join(_TYPES.get(t.strip(), f"`{t.strip()}`") for t in text.split("|"))


def plain_rule(reason: str) -> str:
    """msgspec's reason (without the ``- at`` part) as a rule in words."""
    for pattern, template in _RULES:
        match = pattern.match(reason)
        if match is None:
            continue
        found = match.groupdict()
        if "regex" in found:
            regex = found["regex"].replace("\\\\", "\\")  # msgspec doubles backslashes
            words = PATTERNS.get(regex)
            return f"must be {words}" if words else f"must match {regex}"
        if "want" in found:
            found = {"want": _types(found["want"]), "got": _types(found["got"])}
        return template.format(**found)
    return reason[:1].lower() + reason[1:]


def value_at(data: Any, path: str) -> tuple[bool, Any]:
    """The value at a ``$.a[0].b`` path of plain data, and whether it was found."""
    if not path.startswith("$"):
        return False, None
    current = data
    for match in _SEGMENT.finditer(path, 1):
        name, index = match.group(1), match.group(2)
        if name is not None and isinstance(current, Mapping) and name in current:
            current = current[name]
        elif index is not None and isinstance(current, list | tuple) and int(index) < len(current):
            current = current[int(index)]
        else:
            return False, None
    return True, current


def invalid_argument(reason: str, field: str | None, data: Any) -> str:
    """``invalid <field> <value>: <rule>`` (or ``invalid request: <rule>`` with no field)."""
    rule = plain_rule(reason)
    if not field or field == "$":
        return f"invalid request: {rule}"
    label = field[2:] if field.startswith("$.") else field
    if "[...]" in label:  # a value under a key of a mapping: the key is not in the path
        label = "value in " + label.replace("[...]", "")
    found, value = value_at(data, field)
    shown = ""
    if found and not isinstance(value, Mapping | list):
        text = repr(value)
        shown = f" {text[:80]}{'...' if len(text) > 80 else ''}"
    return f"invalid {label}{shown}: {rule}"


_REASONS = [
    ("connection refused", "connection refused (is the API running there?)"),
    ("name or service not known", "unknown host name"),
    ("temporary failure in name resolution", "unknown host name (or no DNS)"),
    ("nodename nor servname", "unknown host name"),
    ("certificate verify failed", "TLS certificate not trusted"),
    ("connection reset", "connection reset by the server"),
    ("network is unreachable", "network unreachable"),
]


def unreachable(url: str, error: str, kind: str) -> str:
    """``could not connect to <url>: <reason>`` in words for an httpx failure."""
    lowered = error.lower()
    reason = next((words for text, words in _REASONS if text in lowered), None)
    if reason is None:
        reason = f"{kind}: {error}" if error else kind
    verb = "could not connect to" if "Connect" in kind else "the request to"
    tail = "" if verb == "could not connect to" else " failed"
    return f"{verb} {url}{tail}: {reason}"
