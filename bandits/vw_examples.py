"""Parsed VW examples, cached by what they were formatted from.

Contexts and candidates repeat (a visitor's profile and page across a session, a campaign's
segments, a placement's variants), and formatting plus parsing a line is about half of a VW
decision's CPU. VW leaves an example as it found it after predict and learn (pinned by the
policies' tests), so a parsed example can serve again. Keyed by the msgpack encoding of the
source value; a value msgpack cannot encode is formatted and parsed every time. Bounded: a full
cache is cleared. Used by :mod:`bandits.vw` and :mod:`bandits.vw_slates`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec
from vowpal_wabbit_next import Example as VWExample
from vowpal_wabbit_next import TextFormatParser

__all__ = ["ExampleCache"]

_ENCODER: Final = msgspec.msgpack.Encoder()


class ExampleCache:
    """At most ``size`` parsed examples, keyed by their source's msgpack encoding."""

    def __init__(self, parser: TextFormatParser, size: int) -> None:
        self._parser = parser
        self._size = size
        self._cache: dict[bytes, VWExample] = {}

    def __len__(self) -> int:
        """How many parsed examples are held."""
        return len(self._cache)

    def get(self, source: object, fmt: Callable[..., str], *args: object) -> VWExample:
        """The example parsed from ``fmt(*args)``, the line that ``source`` formats to."""
        try:
            content = _ENCODER.encode(source)
        except TypeError:  # a value msgpack cannot encode: format it (the formatter says why)
            return self._parser.parse_line(fmt(*args))
        cache = self._cache
        example = cache.get(content)
        if example is None:
            if len(cache) >= self._size:
                cache.clear()
            example = cache[content] = self._parser.parse_line(fmt(*args))
        return example
