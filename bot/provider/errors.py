"""The typed errors of the Kling client: what a failed call means, so that callers act on the kind, not the text."""

from __future__ import annotations

from typing import Any


class KlingError(Exception):
    """A failed call; `message` is the provider's own words where it gave any."""

    def __init__(
        self, message: str, *, code: int | None = None, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (f"HTTP {self.status}" if self.status else "", f"code {self.code}" if self.code else "")
            if part
        )
        return f"{self.message} ({where})" if where else self.message


class KlingAuthError(KlingError):
    """The key was refused (or the IP is not allowed): the operator must act; never retried."""


class KlingAccountError(KlingError):
    """The account is in arrears, out of credits or without access to the model: the operator must act."""


class KlingBadRequest(KlingError):
    """The provider refused the parameters; its message says why. Not retried."""


class KlingContentPolicy(KlingError):
    """The prompt or image broke the platform's content policy: the member must change it."""


class KlingRateLimited(KlingError):
    """Too many requests (1302) or too many tasks at once (1303); `retry_after` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class KlingUnavailable(KlingError):
    """Server trouble: 5xx, codes 5000-5002, a body that is not the API's JSON, a time-out, no connection."""


class KlingNotSent(KlingUnavailable):
    """The circuit breaker is open: the call was not sent at all."""


class KlingSubmitUncertain(KlingUnavailable):
    """A submit got no usable answer and the task is not visible yet: it may still appear (gateways create
    tasks late and may not refuse a repeated external id), so it must not be sent again for a while."""


def classify(
    status: int, code: int | None, message: str, *, request_id: str | None = None, retry_after: float | None = None
) -> KlingError:
    """Turn an HTTP status and the envelope's code into the error the rest of the code acts on."""
    kwargs: dict[str, Any] = {"code": code, "status": status, "request_id": request_id}
    if code is not None:
        if 1000 <= code <= 1004 or code == 1304:
            return KlingAuthError(message or "authentication failed", **kwargs)
        if 1100 <= code <= 1103:
            return KlingAccountError(message or "account unavailable", **kwargs)
        if 1200 <= code <= 1299:
            return KlingBadRequest(message or "bad request", **kwargs)
        if code in (1300, 1301):
            return KlingContentPolicy(message or "refused by the content policy", **kwargs)
        if code in (1302, 1303):
            return KlingRateLimited(message or "rate limited", retry_after=retry_after, **kwargs)
        if 5000 <= code <= 5999:
            return KlingUnavailable(message or "server error", **kwargs)
    if status == 401:
        return KlingAuthError(message or "authentication failed", **kwargs)
    if status == 429:
        return KlingRateLimited(message or "rate limited", retry_after=retry_after, **kwargs)
    if 400 <= status < 500:
        return KlingBadRequest(message or f"request refused (HTTP {status})", **kwargs)
    return KlingUnavailable(message or f"server error (HTTP {status})", **kwargs)
