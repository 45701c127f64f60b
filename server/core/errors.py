"""Error codes of the wire protocol: stable snake_case codes, default messages, close codes.

This module mirrors the table in docs/protocol.md section 8 exactly (tests/test_protocol.py
compares them). It imports nothing from the server: every layer may raise `TandemError`, and
the session turns it into an `error` frame. Codes are never renamed or reused; add new ones.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    model_serializer,
)

# Close codes (docs/protocol.md#8-error-codes). 4xxx mirrors an HTTP status where one fits.
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOKEN_EXPIRED = 4440  # "login time-out"; distinct so clients know to refresh the token
CLOSE_UNSUPPORTED_VERSION = 4426  # "upgrade required"
CLOSE_TOO_MANY_INVALID_UPDATES = 4422  # "unprocessable"
CLOSE_SLOW_CONSUMER = 4408  # the peer did not read in time
CLOSE_SERVICE_RESTART = 1012  # IANA registry: the server is restarting; clients reconnect
CLOSE_INTERNAL_ERROR = 1011  # RFC 6455 7.4.1: only when the session loop itself fails
CLOSE_INVALID_DATA = 1007  # RFC 6455 7.4.1 and 8.1: a text frame that is not UTF-8


class ErrorCode(StrEnum):
    """Every error code the server may send. The value is what goes on the wire."""

    BAD_JSON = "bad_json"
    UNSUPPORTED_FRAME = "unsupported_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    NOT_MEMBER = "not_member"
    WORKSPACE_FULL = "workspace_full"
    DOC_NOT_OPEN = "doc_not_open"
    INVALID_UPDATE = "invalid_update"
    TOO_MANY_INVALID_UPDATES = "too_many_invalid_updates"
    RATE_LIMITED = "rate_limited"
    LIMIT_EXCEEDED = "limit_exceeded"
    SLOW_CONSUMER = "slow_consumer"
    CONFLICT = "conflict"
    LOCKED = "locked"
    INVALID_TRANSITION = "invalid_transition"
    SERVER_SHUTDOWN = "server_shutdown"
    INTERNAL_ERROR = "internal_error"
    AWARENESS_TOO_LARGE = "awareness_too_large"
    STALE_FENCE = "stale_fence"
    INVALID_PATCH = "invalid_patch"
    INVALID_STATE = "invalid_state"
    UNAVAILABLE = "unavailable"
    INVALID_UTF8 = "invalid_utf8"
    UPDATE_TOO_COSTLY = "update_too_costly"
    INVALID_WORKFLOW = "invalid_workflow"
    UPDATE_AHEAD = "update_ahead"
    TOKEN_REVOKED = "token_revoked"

    @property
    def message(self) -> str:
        return _TABLE[self][0]

    @property
    def close_code(self) -> int | None:
        """The close code the session ends with after this error; None: it stays open."""
        return _TABLE[self][1]


_TABLE: dict[ErrorCode, tuple[str, int | None]] = {
    ErrorCode.BAD_JSON: ("The frame is not valid JSON.", None),
    ErrorCode.UNSUPPORTED_FRAME: ("Binary frames are not used; send JSON text frames.", None),
    ErrorCode.FRAME_TOO_LARGE: ("The frame is larger than max_frame_bytes.", None),
    ErrorCode.UNKNOWN_TYPE: ("Unknown message type.", None),
    ErrorCode.INVALID_MESSAGE: ("The message has missing, extra or mistyped fields.", None),
    ErrorCode.UNEXPECTED_MESSAGE: ("This message is not allowed at this point of the session.", None),
    ErrorCode.UNSUPPORTED_VERSION: ("This protocol version is not supported.", CLOSE_UNSUPPORTED_VERSION),
    ErrorCode.UNAUTHORIZED: ("Authentication failed.", CLOSE_UNAUTHORIZED),
    ErrorCode.TOKEN_EXPIRED: ("The token has expired.", CLOSE_TOKEN_EXPIRED),
    ErrorCode.FORBIDDEN: ("You are not allowed to do this.", None),
    ErrorCode.NOT_FOUND: ("Not found.", None),
    ErrorCode.NOT_MEMBER: ("Join the workspace first.", None),
    ErrorCode.WORKSPACE_FULL: ("The workspace has reached its member limit.", None),
    ErrorCode.DOC_NOT_OPEN: ("Open the document first.", None),
    ErrorCode.INVALID_UPDATE: ("The update is not a valid Yjs update.", None),
    ErrorCode.TOO_MANY_INVALID_UPDATES: ("Too many invalid updates.", CLOSE_TOO_MANY_INVALID_UPDATES),
    ErrorCode.RATE_LIMITED: ("Too many messages; slow down.", None),
    ErrorCode.LIMIT_EXCEEDED: ("A session limit was reached.", None),
    ErrorCode.SLOW_CONSUMER: ("The client does not read fast enough.", CLOSE_SLOW_CONSUMER),
    ErrorCode.CONFLICT: ("The state changed meanwhile.", None),
    ErrorCode.LOCKED: ("Locked by another agent.", None),
    ErrorCode.INVALID_TRANSITION: ("This state change is not allowed.", None),
    ErrorCode.SERVER_SHUTDOWN: ("The server is shutting down.", CLOSE_SERVICE_RESTART),
    ErrorCode.INTERNAL_ERROR: ("Internal server error.", None),
    ErrorCode.AWARENESS_TOO_LARGE: ("The awareness state is larger than max_awareness_bytes.", None),
    ErrorCode.STALE_FENCE: ("The fencing token is not the current holder's; the lock was lost.", None),
    ErrorCode.INVALID_PATCH: ("The JSON Patch cannot be applied to the current state.", None),
    ErrorCode.INVALID_STATE: ("Workspace state must be a JSON object within max_state_bytes.", None),
    ErrorCode.UNAVAILABLE: ("The database is unavailable; retry.", None),
    ErrorCode.INVALID_UTF8: ("Text frames must be valid UTF-8.", CLOSE_INVALID_DATA),
    ErrorCode.UPDATE_TOO_COSTLY: ("Applying the update would cost the server too much; send smaller updates.", None),
    ErrorCode.INVALID_WORKFLOW: ("The workflow definition is invalid.", None),
    ErrorCode.UPDATE_AHEAD: ("The update builds on changes the server does not have; resync and send them.", None),
    # 4401 as `unauthorized`: the token is no good any more; the reason tells it from a bad one.
    ErrorCode.TOKEN_REVOKED: ("The token has been revoked.", CLOSE_UNAUTHORIZED),
}

RequestId = str | int


class ErrorMessage(BaseModel):
    """The `error` message (docs/protocol.md#56-errors): `re` is always present (null when
    unknown), `details` only when there are any. Configured as the other server messages
    (server/wire/fields.py `Out`), which this module cannot import."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["error"] = "error"
    re: RequestId | None
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _details_only_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("details") is None:
            data.pop("details", None)
        return data


def error_frame(
    code: ErrorCode,
    re: RequestId | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `error` message as a JSON-ready dict, made by its model `ErrorMessage`."""
    return ErrorMessage(re=re, code=code, message=message or code.message, details=details).model_dump(mode="json")


class TandemError(Exception):
    """A client-visible failure with a stable code; raised anywhere, sent as an `error` frame.

    Never put internal state (SQL, stack traces, other tenants' ids) in `message` or `details`:
    both go on the wire. Server faults are not TandemErrors; the session logs them and sends
    `internal_error`.
    """

    def __init__(self, code: ErrorCode, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.code = code
        self.message = message or code.message
        self.details = details
        super().__init__(f"{code.value}: {self.message}")

    @property
    def close_code(self) -> int | None:
        return self.code.close_code

    def frame(self, re: RequestId | None = None) -> dict[str, Any]:
        return error_frame(self.code, re, self.message, self.details)
