"""Field types and base models of the wire protocol (docs/protocol.md section 3), shared by the
message modules (server/wire/protocol.py, server/wire/protocol_coordination.py). Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from crdt.clock import decode_state_vector
from server.core.errors import RequestId

EMPTY_STATE_VECTOR = b"\x00"  # a Yjs state vector with no clients
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript clients lose precision above this
MAX_REQUEST_ID_CHARS = 128
MAX_ERROR_DETAILS = 20



def _request_id(value: object) -> RequestId:
    if isinstance(value, str) and 1 <= len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    raise PydanticCustomError("request_id", "id must be a string of 1 to 128 characters or an integer of at most 2^53-1")


def _b64decode(value: object) -> bytes:
    if not isinstance(value, str):
        raise PydanticCustomError("base64", "Expected a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError("base64", "Invalid base64: {reason}", {"reason": str(exc)}) from None


def _non_empty(value: bytes) -> bytes:
    if not value:
        raise PydanticCustomError("empty_update", "The update must not be empty")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "Must not be only whitespace")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise PydanticCustomError("nul_character", "Must not contain NUL characters")
    return value


def _b64encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _bytes_or_b64(value: object) -> bytes:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else _b64decode(value)


def _state_vector(value: bytes) -> bytes:
    """Empty means "I have nothing" (docs/protocol.md#55); anything else must decode."""
    if not value:
        return EMPTY_STATE_VECTOR
    try:
        decode_state_vector(value)
    except ValueError:
        raise PydanticCustomError("state_vector", "Not a Yjs state vector") from None
    return value


ReqId = Annotated[RequestId, PlainValidator(_request_id)]
B64 = Annotated[bytes, PlainValidator(_b64decode)]  # decoded on input; frames bound the size
B64Update = Annotated[bytes, PlainValidator(_b64decode), AfterValidator(_non_empty)]
StateVector = Annotated[bytes, PlainValidator(_b64decode), AfterValidator(_state_vector)]
# Server side: bytes in code, base64 on the wire; a client reading frames back gets bytes again.
B64Out = Annotated[bytes, PlainValidator(_bytes_or_b64), PlainSerializer(_b64encode, return_type=str)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_not_blank)]
ShortName = Annotated[str, StringConstraints(min_length=1, max_length=50), AfterValidator(_not_blank)]
Visibility = Literal["private", "team", "public"]
ContentType = Literal["text", "markdown", "json", "yaml", "code"]
Role = Literal["owner", "admin", "member", "viewer"]
# Which `task.changed` events of a joined workspace a session gets (docs/protocol.md#54): every
# one, or only those of tasks its agent created, is assigned or was assigned before the change.
TaskEvents = Literal["all", "own"]



class Request(BaseModel):
    """A client message: strict types, no extra fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Out(BaseModel):
    """A server message."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def frame_encoder(model: type[Out]) -> Callable[..., str]:
    """The frames of one server message for the hot path (`doc.op`, `doc.update.ok`): the
    model's own fields (names, order, types, serializers) as a TypedDict serializer, so a frame
    is the model's encoding without constructing the model (`model_construct` costs several
    times the serialization). Values are not validated: give what the model would hold, every
    field but `type`, in the model's order (checked: a missing or misplaced field raises).
    """
    fields = model.model_fields
    renamed = [name for name, f in fields.items() if f.alias or f.serialization_alias or f.exclude]
    if renamed or model.__pydantic_decorators__.model_serializers:  # the TypedDict would not apply them
        raise TypeError(f"{model.__name__} has renamed or excluded fields or its own serializer; encode the model itself")
    type_: str = fields["type"].default
    names = tuple(name for name in fields if name != "type")
    shape = TypedDict(  # type: ignore[misc]  # built from the model's fields
        f"{model.__name__}Frame",
        {name: Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation for name, f in fields.items()},
    )
    dump = TypeAdapter(shape).serializer.to_json  # the compiled serializer, without the Python wrapper

    def encode(**values: Any) -> str:
        if tuple(values) != names:
            raise TypeError(f"{type_} takes {names} in this order, got {tuple(values)}")
        return dump({"type": type_, **values}).decode()

    return encode
