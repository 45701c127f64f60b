"""Typed errors: one exception class per wire error code, generated from one code list.

`ERROR_CODES` is a copy of the server's table (docs/protocol.md section 8, `server/core/errors.py`);
the SDK must not import the server, so tests/test_sdk_codes.py compares the two. Each code gets a
class named in CamelCase (`doc_not_open` -> `DocNotOpen`), a subclass of `TandemError`, which
carries `code`, `message`, `details` and `close_code`; codes whose details the protocol documents
also expose those fields as attributes and say what they mean in the exception's text
(`explain.py`: "invalid_transition: ...: cannot complete a task that is pending: complete needs a
task that is in_progress"). Errors that are not wire codes
(`ConnectionLost`, `ReconnectFailed`, `ClientClosed`) share the base `ClientError`.
Imports nothing but the standard library.
"""

from __future__ import annotations

from typing import Any

from tandem_client.explain import DETAIL_FIELDS, explain

# (code, default message, close code or None), in the order of docs/protocol.md section 8.
ERROR_CODES: tuple[tuple[str, str, int | None], ...] = (
    ("bad_json", "The frame is not valid JSON.", None),
    ("unsupported_frame", "Binary frames are not used; send JSON text frames.", None),
    ("frame_too_large", "The frame is larger than max_frame_bytes.", None),
    ("unknown_type", "Unknown message type.", None),
    ("invalid_message", "The message has missing, extra or mistyped fields.", None),
    ("unexpected_message", "This message is not allowed at this point of the session.", None),
    ("unsupported_version", "This protocol version is not supported.", 4426),
    ("unauthorized", "Authentication failed.", 4401),
    ("token_expired", "The token has expired.", 4440),
    ("forbidden", "You are not allowed to do this.", None),
    ("not_found", "Not found.", None),
    ("not_member", "Join the workspace first.", None),
    ("workspace_full", "The workspace has reached its member limit.", None),
    ("doc_not_open", "Open the document first.", None),
    ("invalid_update", "The update is not a valid Yjs update.", None),
    ("too_many_invalid_updates", "Too many invalid updates.", 4422),
    ("rate_limited", "Too many messages; slow down.", None),
    ("limit_exceeded", "A session limit was reached.", None),
    ("slow_consumer", "The client does not read fast enough.", 4408),
    ("conflict", "The state changed meanwhile.", None),
    ("locked", "Locked by another agent.", None),
    ("invalid_transition", "This state change is not allowed.", None),
    ("server_shutdown", "The server is shutting down.", 1012),
    ("internal_error", "Internal server error.", None),
    ("awareness_too_large", "The awareness state is larger than max_awareness_bytes.", None),
    ("stale_fence", "The fencing token is not the current holder's; the lock was lost.", None),
    ("invalid_patch", "The JSON Patch cannot be applied to the current state.", None),
    ("invalid_state", "Workspace state must be a JSON object within max_state_bytes.", None),
    ("unavailable", "The database is unavailable; retry.", None),
    ("invalid_utf8", "Text frames must be valid UTF-8.", 1007),
    ("update_too_costly", "Applying the update would cost the server too much; send smaller updates.", None),
    ("invalid_workflow", "The workflow definition is invalid.", None),
    ("update_ahead", "The update builds on changes the server does not have; resync and send them.", None),
    ("token_revoked", "The token has been revoked.", 4401),
)


class ClientError(Exception):
    """Base of every exception the SDK raises."""


class TandemError(ClientError):
    """An `error` the server sent (docs/protocol.md section 5.6), or the close that ended a session.

    Programs branch on the class (or `code`) and read the detail attributes; `message` (the
    server's sentence) and `explanation` (what the details say) are for people and may change.
    """

    code: str = "unknown"
    default_message: str = "Unknown error."
    close_code: int | None = None

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None, code: str | None = None) -> None:
        if code is not None:  # a code this SDK version does not know (a newer server)
            self.code = code
        self.message = message or self.default_message
        self.details = details
        self.explanation = explain(self.code, details)
        text = f"{self.code}: {self.message}"
        if self.explanation:
            text = f"{text.rstrip('.')}: {self.explanation}"
        super().__init__(text)


class ConnectionLost(ClientError):
    """The connection dropped before the reply arrived: the request may or may not have taken effect."""


class ReconnectFailed(ClientError):
    """The client gave up reconnecting (`reconnect_timeout_s` passed, or the server refused it)."""


class ClientClosed(ClientError):
    """The client, workspace or document was closed."""


def class_name(code: str) -> str:
    """`doc_not_open` -> `DocNotOpen`."""
    return "".join(part.capitalize() for part in code.split("_"))


def _detail(name: str) -> property:
    """An attribute reading `details[name]` (None when the server did not send it)."""
    return property(lambda self: (self.details or {}).get(name), doc=f"`details.{name}`, or None.")


def _make(code: str, message: str, close_code: int | None) -> type[TandemError]:
    fields = DETAIL_FIELDS.get(code, ())
    doc = f"Wire error `{code}`: {message}" + (f" Attributes from `details`: {', '.join(fields)}." if fields else "")
    attributes: dict[str, Any] = {name: _detail(name) for name in fields}
    attributes.update(code=code, default_message=message, close_code=close_code, __doc__=doc, __module__=__name__)
    return type(class_name(code), (TandemError,), attributes)


ERROR_CLASSES: dict[str, type[TandemError]] = {code: _make(code, msg, close) for code, msg, close in ERROR_CODES}
globals().update({cls.__name__: cls for cls in ERROR_CLASSES.values()})

__all__ = [
    "ERROR_CLASSES",
    "ERROR_CODES",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "ReconnectFailed",
    "TandemError",
    "close_details",
    "error_from_code",
    "error_from_frame",
    *(cls.__name__ for cls in ERROR_CLASSES.values()),
]


def error_from_code(code: str, message: str | None = None, details: dict[str, Any] | None = None) -> TandemError:
    """The typed exception for `code`; an unknown code gives a plain `TandemError` carrying it."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return TandemError(message, details, code=code)
    return cls(message, details)


def error_from_frame(frame: dict[str, Any]) -> TandemError:
    """The typed exception for an `error` frame."""
    details = frame.get("details")
    return error_from_code(str(frame.get("code")), frame.get("message"), details if isinstance(details, dict) else None)


def close_details(reason: str | None) -> dict[str, Any] | None:
    """The details a close reason carries: `unauthorized: bad_signature` (docs/protocol.md
    section 2.2) gives `{"reason": "bad_signature"}`; a bare code gives None."""
    if not reason or ":" not in reason:
        return None
    found = reason.split(":", 1)[1].strip()
    return {"reason": found} if found else None


def close_code_error(code: int | None, reason: str | None = None) -> type[TandemError] | None:
    """The error class a close names: the code at the start of `reason` when its class closes
    with `code` (4401 `token_revoked` -> TokenRevoked), else the first class whose close code is
    `code` (4401 -> Unauthorized), if any."""
    named = ERROR_CLASSES.get((reason or "").split(":", 1)[0].strip())
    if named is not None and named.close_code is not None and named.close_code == code:
        return named
    for cls in ERROR_CLASSES.values():
        if cls.close_code is not None and cls.close_code == code:
            return cls
    return None
