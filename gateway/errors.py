"""Errors as OpenAI renders them: ``{"error": {"message", "type", "param", "code"}}``, one map.

Unmodified OpenAI clients read these bodies and raise their own matching exception classes
(`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ...).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from events.errors import transient
from services.accounts.errors import (
    AccountError,
    EmailTaken,
    InvalidCredentials,
    InvalidRefreshToken,
    PasswordChecksBusy,
    WeakPassword,
)

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error to show the client: status, message, and OpenAI's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped body."""
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` for a status and message."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _counted(request: Request[Any, Any, Any], code: str | None, status: int) -> None:
    request.app.state.gateway.metrics.errors.labels(code=code or str(status)).inc()


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    body = exc.body()
    _counted(request, body["error"]["code"], exc.status)
    return Response(body, status_code=exc.status, headers=exc.headers)


# Each account error's status, code and the request field it is about (its message is the text).
_ACCOUNT_ERRORS: dict[type[AccountError], tuple[int, str, str | None]] = {
    WeakPassword: (400, "weak_password", "password"),
    EmailTaken: (409, "email_taken", "email"),
    InvalidCredentials: (401, "invalid_credentials", None),
    InvalidRefreshToken: (401, "invalid_refresh_token", None),
    PasswordChecksBusy: (503, "busy", None),
}


def account_api_error(exc: AccountError) -> ApiError:
    """The `ApiError` the client sees for an account error (400 for one not in the map)."""
    for kind, (status, code, param) in _ACCOUNT_ERRORS.items():
        if isinstance(exc, kind):
            headers = {"Retry-After": "1"} if status == 503 else None
            return ApiError(status, str(exc), code=code, param=param, headers=headers)
    return ApiError(400, str(exc))


def _account_error(request: Request[Any, Any, Any], exc: AccountError) -> Response[dict[str, Any]]:
    return _api_error(request, account_api_error(exc))


def _validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    _counted(request, "invalid_request", 400)
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems else {}
    param = first.get("key") if isinstance(first, dict) else None
    detail = first.get("message") if isinstance(first, dict) else None
    if "JSON" in exc.detail or "decode" in exc.detail.lower():
        message = "the request body is not valid JSON"
    elif detail:
        message = f"invalid value for '{param}': {detail}" if param else str(detail)
    else:
        message = exc.detail
    body = error_body(400, message, code="invalid_request", param=param)
    return Response(body, status_code=400)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    message = exc.detail
    code = None
    if status == 413:
        message, code = "the request body is too large", "request_too_large"
    elif status == 400 and "JSON" in message:
        message, code = f"the request body is not valid JSON ({message})", "invalid_json"
    elif status == 404:
        message, code = f"no such endpoint: {request.method} {request.url.path}", "not_found"
    elif status == 405:
        message, code = (
            f"{request.method} is not allowed on {request.url.path}",
            "method_not_allowed",
        )
    _counted(request, code, status)
    return Response(error_body(status, message, code=code), status_code=status, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if transient(exc):  # NATS away for now (a server restarting, a leader election)
        log.warning("NATS unavailable on %s %s: %r", request.method, request.url.path, exc)
        _counted(request, "unavailable", 503)
        message = (
            "the event log (NATS) did not answer in time; retry shortly, with the same "
            "Idempotency-Key for jobs, so that one stored after all is not submitted twice"
        )
        return Response(
            error_body(503, message, code="unavailable"),
            status_code=503,
            headers={"Retry-After": "1"},
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    _counted(request, "internal", 500)
    return Response(
        error_body(500, "internal error; the request id header identifies it in the logs"),
        status_code=500,
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    ApiError: _api_error,
    AccountError: _account_error,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}
