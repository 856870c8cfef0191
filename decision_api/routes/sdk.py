"""``GET /sdk/tailor.js``: the browser snippet, served by the API it talks to.

The file ships inside the ``sdk`` package (``sdk/static/tailor.js``); it is read once per worker
on first request and served with an ``ETag`` and a short public cache lifetime, so a new release
reaches pages within minutes without a cache-busting URL.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Any

from litestar import Request, Response, get

MEDIA_TYPE = "text/javascript"  # Litestar appends "; charset=utf-8"
MAX_AGE_S = 300


@functools.cache
def snippet() -> tuple[bytes, str]:
    """The snippet's bytes and its strong ``ETag``."""
    body = resources.files("sdk").joinpath("static/tailor.js").read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@get("/sdk/tailor.js", tags=["sdk"], include_in_schema=False)
async def tailor_js(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The dependency-free browser snippet (see the comment at its top for the markup)."""
    body, etag = snippet()
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={MAX_AGE_S}"}
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers, media_type=MEDIA_TYPE)
    return Response(body, headers=headers, media_type=MEDIA_TYPE)
