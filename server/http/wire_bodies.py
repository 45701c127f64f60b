"""HTTP requests read as the WebSocket protocol's own messages (server/wire), so each validation
rule of a coordination request is written once: the JSON body's fields, plus those the path and
query give, become one `/ws` frame of the message's `type`, read by `parsing.parse` exactly as
the agent endpoint reads a frame. A refusal is the same typed error (`bad_json`,
`invalid_message` with its field list).

The body may not carry `type`, `id` or a field the path gives (`workspace_id`, `task_id`):
`invalid_message` naming it. `body_schema` is the message's JSON Schema without those fields,
for the OpenAPI document.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic_core
from fastapi import Request
from pydantic import BaseModel

from server.core.errors import ErrorCode, TandemError
from server.http.access import node_of
from server.wire import parsing

M = TypeVar("M", bound=BaseModel)
FRAME_FIELDS = ("type", "id")  # the frame's own fields, never in an HTTP body


def _type_of(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def _refuse(field: str, message: str, kind: str = "extra_forbidden") -> TandemError:
    return TandemError(
        ErrorCode.INVALID_MESSAGE,
        f"{field}: {message}" if field else message,
        {"errors": [{"field": field, "type": kind, "message": message}]},
    )


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = pydantic_core.from_json(raw)
    except ValueError:
        raise TandemError(ErrorCode.BAD_JSON, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _refuse("", "the body is a JSON object", "model_type")
    return data


def read_message(
    request: Request, model: type[M], body: dict[str, Any], **given: Any
) -> M:
    """`model` from `body` and the fields `given` by the path or query (None: not given), read
    as the agent endpoint reads a frame."""
    for field in (*FRAME_FIELDS, *given):
        if field in body:
            raise _refuse(field, "not permitted in the body (the path gives it)")
    fields = {k: v for k, v in given.items() if v is not None}
    frame = json.dumps(
        {**body, **fields, "type": _type_of(model)}, default=str, ensure_ascii=False
    )
    parsed = parsing.parse(frame, node_of(request).settings.max_frame_bytes)
    if isinstance(parsed, parsing.ProtocolError):
        raise TandemError(parsed.code, parsed.message, parsed.details)
    assert isinstance(parsed, model)
    return parsed


def body_schema(model: type[BaseModel], *path_fields: str) -> dict[str, Any]:
    """The OpenAPI request body of `model` over HTTP: its schema less the frame's and the
    path's fields."""
    schema = model.model_json_schema()
    dropped = {*FRAME_FIELDS, *path_fields}
    properties = {
        k: v for k, v in schema.get("properties", {}).items() if k not in dropped
    }
    required = [k for k in schema.get("required", []) if k not in dropped]
    content: dict[str, Any] = {
        "type": "object",
        "title": schema.get("title", model.__name__),
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        content["required"] = required
    return {
        "requestBody": {
            "required": bool(required),
            "content": {"application/json": {"schema": content}},
        }
    }
