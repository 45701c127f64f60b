"""Reading client frames (docs/protocol.md#43-when-each-request-is-legal, steps 1 and 3): one
frame or a batch into typed messages, or `ProtocolError` values saying why not. Never raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import ValidationError

from server.core.errors import ErrorCode, RequestId, error_frame
from server.wire.fields import MAX_ERROR_DETAILS, _request_id
from server.wire.messages import (
    _BATCH_ADAPTER,
    _CLIENT_ADAPTER,
    CLIENT_MESSAGES,
    MAX_BATCH_MESSAGES,
    ClientMessage,
)

# --- parsing (docs/protocol.md#43-when-each-request-is-legal, steps 1 and 3) -----------------


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A client fault as a value: what `parse` and `ProtocolSession` return instead of raising."""

    code: ErrorCode
    re: RequestId | None = None
    details: dict[str, Any] | None = None
    message: str | None = None

    @property
    def close_code(self) -> int | None:
        return self.code.close_code

    def frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.re, self.message, self.details)


def frame_bytes(frame: str, limit: int) -> int:
    """UTF-8 length of `frame`, computed only when it could exceed `limit` (else a lower bound)."""
    if len(frame) * 4 <= limit:
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


def parse(frame: str | bytes, max_frame_bytes: int) -> ClientMessage | ProtocolError:
    """Validate one received frame into a typed message, or say why not. Never raises.

    Binary frames get `unsupported_frame`, text over `max_frame_bytes` UTF-8 bytes gets
    `frame_too_large` (not parsed), then `bad_json`, `unknown_type` or `invalid_message`. The
    error carries the request's `id` as `re` whenever the frame is a JSON object with a valid id.
    """
    if not isinstance(frame, str):
        return ProtocolError(ErrorCode.UNSUPPORTED_FRAME)
    size = frame_bytes(frame, max_frame_bytes)
    if size > max_frame_bytes:
        return ProtocolError(ErrorCode.FRAME_TOO_LARGE, details={"max_frame_bytes": max_frame_bytes, "frame_bytes": size})
    try:
        return _CLIENT_ADAPTER.validate_json(frame)
    except ValidationError as exc:
        return _classify(frame, exc)


def is_batch(frame: str | bytes) -> bool:
    """Whether a text frame's top level is a JSON array (a batch of messages, docs/protocol.md#3)."""
    if not isinstance(frame, str):
        return False
    head = frame[:1]
    if head.isspace():
        head = frame.lstrip()[:1]
    return head == "["


def parse_batch(frame: str, max_frame_bytes: int) -> list[ClientMessage | ProtocolError]:
    """Validate a batched client frame (a JSON array of messages, docs/protocol.md#3): one result
    per element, each what `parse` would have made of it as a frame of its own, in order. One
    error stands for the whole frame when it exceeds `max_frame_bytes` (`frame_too_large`), is
    not JSON (`bad_json`) or does not hold 1 to MAX_BATCH_MESSAGES elements (`invalid_message`).
    Never raises."""
    size = frame_bytes(frame, max_frame_bytes)
    if size > max_frame_bytes:
        return [ProtocolError(ErrorCode.FRAME_TOO_LARGE, details={"max_frame_bytes": max_frame_bytes, "frame_bytes": size})]
    try:
        return list(_BATCH_ADAPTER.validate_json(frame))
    except ValidationError:
        pass  # one element or more is wrong: judge each on its own
    try:
        items = pydantic_core.from_json(frame)
    except ValueError:
        return [ProtocolError(ErrorCode.BAD_JSON)]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_MESSAGES:
        message = f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages"
        return [ProtocolError(ErrorCode.INVALID_MESSAGE, details={"errors": [{"field": "", "type": "batch_size", "message": message}]})]
    return [parse(pydantic_core.to_json(item).decode(), max_frame_bytes) for item in items]


def _classify(frame: str, exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    kinds = {e["type"] for e in errors}
    if kinds & {"json_invalid", "string_unicode"}:  # string_unicode: lone surrogates
        return ProtocolError(ErrorCode.BAD_JSON)
    re = _request_id_of(frame)
    if "union_tag_invalid" in kinds:
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, re)
    details = [_field_error(e) for e in errors[:MAX_ERROR_DETAILS]]
    return ProtocolError(ErrorCode.INVALID_MESSAGE, re, {"errors": details})


def _field_error(error: Any) -> dict[str, str]:
    if error["type"] == "union_tag_not_found":
        return {"field": "type", "type": "missing", "message": "Field required"}
    loc = list(error["loc"])
    if loc and loc[0] in CLIENT_MESSAGES:  # the discriminated union prefixes the tag
        loc = loc[1:]
    return {"field": ".".join(str(part) for part in loc), "type": error["type"], "message": error["msg"]}


def _request_id_of(frame: str) -> RequestId | None:
    try:
        data = pydantic_core.from_json(frame)
        return _request_id(data["id"]) if isinstance(data, dict) and "id" in data else None
    except (ValueError, TypeError):  # PydanticCustomError is a ValueError
        return None
