"""Tailor's Python SDK: decide, report outcomes, keep features — fail-open, with local evaluation.

``TailorClient`` (threads) and ``AsyncTailorClient`` (asyncio) share one API and the server's
wire schemas (:mod:`tailor_contract.wire`). The browser snippet ships as ``sdk/static/tailor.js``
and is served by the API at ``/sdk/tailor.js``.
"""

from sdk.async_client import AsyncTailorClient
from sdk.client import ClientStats, TailorClient
from sdk.errors import (
    APIError,
    AuthError,
    InvalidRequest,
    NotFoundError,
    PermissionDenied,
    RateLimitedError,
    RequestTimeout,
    ServerError,
    TailorError,
    TransportError,
)
from sdk.event_buffer import BufferStats
from sdk.local_eval import LocalEvaluator
from sdk.options import ClientOptions, RetryPolicy
from sdk.results import DecideResult, Decision, DefaultVariant, RecipientResult

__all__ = [
    "APIError",
    "AsyncTailorClient",
    "AuthError",
    "BufferStats",
    "ClientOptions",
    "ClientStats",
    "DecideResult",
    "Decision",
    "DefaultVariant",
    "InvalidRequest",
    "LocalEvaluator",
    "NotFoundError",
    "PermissionDenied",
    "RateLimitedError",
    "RecipientResult",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "TailorClient",
    "TailorError",
    "TransportError",
]
