"""Progress bars for the long steps the CLI runs itself (uploads of ``tailor import``).

Drawn with tqdm on stderr, and only when stderr is a terminal: piped or logged output gets no
bar characters, only the command's result.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ["CHUNK_BYTES", "upload_chunks"]

CHUNK_BYTES = 256 * 1024


def upload_chunks(data: bytes, what: str, stream: TextIO | None = None) -> Iterator[bytes]:
    """``data`` in chunks, advancing a bytes bar named ``what`` as each one is sent."""
    from tqdm import tqdm

    out = stream or sys.stderr
    with tqdm(
        total=len(data),
        desc=what,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=out,
        disable=not out.isatty(),
        leave=True,
    ) as bar:
        for start in range(0, len(data), CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            yield chunk
            bar.update(len(chunk))
