"""The SDK's errors: one small hierarchy, mapped once from transport failures and HTTP answers.

::

    TailorError
    ├── TransportError          the API could not be reached, or the connection broke
    │   └── RequestTimeout      no answer within the call's timeout
    └── APIError                a non-2xx answer: status, code, detail, field, request_id
        ├── InvalidRequest      400/413/422, or arguments refused locally (status 0)
        ├── AuthError           401: no key, unknown or revoked key
        │   └── PermissionDenied  403: the key lacks the scope
        ├── NotFoundError       404
        ├── RateLimitedError    429 (``retry_after_s`` from ``Retry-After``)
        └── ServerError         5xx

``decide`` never raises these: it fails open and returns them in ``DecideResult.error``. Every
other call raises them. ``retryable`` says whether retrying the same request may succeed.

Messages say what failed in plain words: "could not connect to http://127.0.0.1:8000:
connection refused", "the API refused the key (401 unauthorized): ...", "invalid unit_id
'x\\n': must be 1 to 256 characters without control characters or braces". The status,
code and ``$.field`` path stay available as attributes for programs.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "APIError",
    "AuthError",
    "InvalidRequest",
    "NotFoundError",
    "PermissionDenied",
    "RateLimitedError",
    "RequestTimeout",
    "ServerError",
    "TailorError",
    "TransportError",
    "error_from_response",
]


class TailorError(Exception):
    """Base of every error the SDK raises."""

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return False


class TransportError(TailorError):
    """The request did not complete: connection refused or reset, DNS failure, broken stream."""

    @property
    def retryable(self) -> bool:
        """Always: the API may be back on the next attempt."""
        return True


class RequestTimeout(TransportError):
    """No (complete) answer within the call's timeout."""


class APIError(TailorError):
    """The API answered with an error status (a problem-details body when it could)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str = "",
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(self._message(status, detail, code, field))
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.request_id = request_id

    what = "the API answered"
    hint = ""

    @classmethod
    def _message(cls, status: int, detail: str, code: str, field: str | None) -> str:
        """``<what> (<status> <code>): <detail> (at <field>)<hint>``."""
        where = f" (at {field})" if field and field not in detail else ""
        answer = f"{status} {code}" if code else str(status)
        return f"{cls.what} ({answer}): {detail}{where}{cls.hint}"


class InvalidRequest(APIError):
    """The request breaks the wire schema: refused locally (status 0) or by the API (400/422).

    Refused locally, ``detail`` is the whole message ("invalid unit_id 'x': must be ...").
    """

    what = "the API refused the request"

    @classmethod
    def _message(cls, status: int, detail: str, code: str, field: str | None) -> str:
        """The plain local message as is, or the API's answer."""
        return detail if status == 0 else super()._message(status, detail, code, field)


class AuthError(APIError):
    """401: the API key is missing, unknown or revoked."""

    what = "the API refused the key"
    hint = "; check the api_key given to the client"


class PermissionDenied(AuthError):
    """403: the API key lacks the scope this call needs."""

    what = "the API key lacks the scope this call needs"
    hint = "; see the scopes in docs/http-api.md"


class NotFoundError(APIError):
    """404: no such resource (or route: an older server)."""

    what = "not found"


class RateLimitedError(APIError):
    """429: the key is over its rate limit; retry after ``retry_after_s`` seconds."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        retry_after_s: float = 1.0,
        code: str = "",
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(status, detail, code=code, field=field, request_id=request_id)
        self.retry_after_s = retry_after_s
        self.args = (f"{self.args[0]}; retry after {retry_after_s:g} s",)

    what = "rate limited"

    @property
    def retryable(self) -> bool:
        """Always, after ``retry_after_s``."""
        return True


class ServerError(APIError):
    """5xx: the API failed or a backend it needs is down."""

    what = "the API failed"

    @property
    def retryable(self) -> bool:
        """Every 5xx but 501 (Not Implemented) may succeed on a retry."""
        return self.status != 501


class _FieldError(msgspec.Struct):
    field: str = ""
    message: str = ""


class _Problem(msgspec.Struct):
    """The client's lenient view of the server's problem-details body (``decision_api.problems``,
    which imports Litestar and so is not imported here)."""

    detail: str = ""
    code: str = ""
    title: str = ""
    errors: list[_FieldError] = msgspec.field(default_factory=list)
    request_id: str | None = None


_problem_decoder = msgspec.json.Decoder(_Problem)


def error_from_response(status: int, body: bytes, retry_after: str | None = None) -> APIError:
    """The :class:`APIError` subclass for an error answer, with its problem-details fields."""
    try:
        problem = _problem_decoder.decode(body) if body else _Problem()
    except msgspec.DecodeError:
        problem = _Problem(detail=body[:200].decode("utf-8", "replace"))
    field = problem.errors[0].field if problem.errors else None
    detail = problem.detail or problem.title or f"HTTP {status}"
    code, rid = problem.code, problem.request_id
    if status == 429:
        return RateLimitedError(
            status, detail, retry_after_s=_seconds(retry_after), code=code, field=field,
            request_id=rid,
        )  # fmt: skip
    cls: type[APIError] = APIError
    if status in (400, 413, 422):
        cls = InvalidRequest
    elif status == 401:
        cls = AuthError
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = NotFoundError
    elif status >= 500:
        cls = ServerError
    return cls(status, detail, code=code, field=field, request_id=rid)


def _seconds(retry_after: str | None) -> float:
    try:
        return max(0.0, float(retry_after)) if retry_after else 1.0
    except ValueError:
        return 1.0
