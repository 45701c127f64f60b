"""Errors of the HTTP API as RFC 9457 problem JSON (`application/problem+json`), carrying the
stable codes of the WebSocket protocol (server/core/errors.py, docs/protocol.md#8).

`STATUS` is the one mapping from an error code to its HTTP status. Every failure of a /v1 request
leaves through `problem_response`: a `TandemError` raised anywhere, FastAPI's validation errors
(`invalid_message`, or `bad_json` for a body that is not JSON), Starlette's own 404/405, and an
unexpected exception (logged in full, answered `internal_error` with nothing of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from server.core.errors import ErrorCode, TandemError
from server.core.logs import get_logger

log = get_logger("tandem.http")

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:tandem:error:"

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.UNSUPPORTED_FRAME: 415,  # a body that is not application/json
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_TYPE: 404,
    ErrorCode.INVALID_MESSAGE: 422,
    ErrorCode.UNEXPECTED_MESSAGE: 405,  # a method the route does not have
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NOT_MEMBER: 403,
    ErrorCode.WORKSPACE_FULL: 409,
    ErrorCode.DOC_NOT_OPEN: 409,
    ErrorCode.INVALID_UPDATE: 422,
    ErrorCode.TOO_MANY_INVALID_UPDATES: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_EXCEEDED: 413,  # a body over http_max_body_bytes
    ErrorCode.SLOW_CONSUMER: 429,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LOCKED: 423,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.SERVER_SHUTDOWN: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.AWARENESS_TOO_LARGE: 413,
    ErrorCode.STALE_FENCE: 409,
    ErrorCode.INVALID_PATCH: 422,
    ErrorCode.INVALID_STATE: 422,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INVALID_UTF8: 400,
    ErrorCode.UPDATE_TOO_COSTLY: 422,
    ErrorCode.INVALID_WORKFLOW: 422,
    ErrorCode.UPDATE_AHEAD: 409,
}


class Stale(TandemError):
    """`If-Match` named a seq or version that is no longer current: 412, code `conflict`,
    `details` carrying the current one. Nothing was changed."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(ErrorCode.CONFLICT, message, details)


class Problem(BaseModel):
    """An RFC 9457 problem object plus Tandem's `code` (and `details` where the code has some)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    details: dict[str, Any] | None = None


def problem_response(
    code: ErrorCode,
    detail: str | None = None,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
) -> JSONResponse:
    """`status` overrides the code's own (412: a stale `If-Match`, code `conflict`)."""
    status = status or STATUS[code]
    problem = Problem(
        type=f"{TYPE_PREFIX}{code.value}",
        title=code.message,
        status=status,
        detail=detail or code.message,
        code=code,
        details=details,
    )
    body = problem.model_dump(mode="json", exclude_none=True)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="tandem"')
    return JSONResponse(
        body, status_code=status, headers=all_headers, media_type=MEDIA_TYPE
    )


def from_error(exc: TandemError) -> JSONResponse:
    status = 412 if isinstance(exc, Stale) else None
    return problem_response(exc.code, exc.message, exc.details, status=status)


def _validation_errors(
    exc: RequestValidationError,
) -> tuple[ErrorCode, str, dict[str, Any]]:
    """The errors as the WebSocket protocol's `invalid_message` details list them."""
    errors = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            return ErrorCode.BAD_JSON, "The body is not valid JSON.", {}
        where = [str(part) for part in e.get("loc", ())]
        errors.append(
            {
                "field": ".".join(where),
                "type": str(e.get("type")),
                "message": str(e.get("msg")),
            }
        )
    first = errors[0] if errors else {"field": "", "message": "invalid"}
    return (
        ErrorCode.INVALID_MESSAGE,
        f"{first['field']}: {first['message']}",
        {"errors": errors},
    )


_STARLETTE_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.UNEXPECTED_MESSAGE}


def install(api: FastAPI) -> None:
    """Route every failure of `api` through `problem_response`."""

    async def on_tandem_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TandemError)
        return from_error(exc)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        code, detail, details = _validation_errors(exc)
        return problem_response(code, detail, details or None)

    async def on_http_exception(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _STARLETTE_CODES.get(exc.status_code, ErrorCode.INVALID_MESSAGE)
        return problem_response(code, None, None, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception(
            "http.internal_error", path=request.url.path, error=type(exc).__name__
        )
        return problem_response(ErrorCode.INTERNAL_ERROR)

    api.add_exception_handler(TandemError, on_tandem_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    api.add_exception_handler(HTTPException, on_http_exception)
    api.add_exception_handler(Exception, on_unexpected)


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {
        "model": Problem,
        "content": {MEDIA_TYPE: {}},
        "description": "A problem (RFC 9457) with its code",
    }
    for status in (400, 401, 403, 404, 413, 415, 422)
}
"""The failures every /v1 route may answer, for the OpenAPI document."""

WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {
        "model": Problem,
        "content": {MEDIA_TYPE: {}},
        "description": "A problem (RFC 9457) with its code",
    }
    for status in (409, 412, 423, 503)
}
"""What a write may answer besides: a conflict, a stale `If-Match`, a lock, a room rebuilding."""
