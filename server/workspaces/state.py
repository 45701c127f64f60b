"""Workspace state: one JSON object per workspace with an optimistic `state_version` (docs/protocol.md section 12.3).

`get_state` reads it; `update_state` changes it in one of three modes, checked against the
version the client last saw:

- `replace`: the new object as given;
- `merge`: `jsonb_merge_recursive(state, value)` computed by PostgreSQL (objects merge key by
  key, anything else is replaced by `value`'s);
- `patch`: an RFC 6902 JSON Patch applied with the `jsonpatch` library (`apply_patch`).

A matching `expected_version` applies the change and advances the version by exactly one. A
stale one is a `conflict` carrying the current version and state, unless the caller asked for
`on_conflict="merge"` with a merge or patch: then the change is applied on top of the current
state and the resolution is recorded in `conflict_resolutions` (a replace cannot be merged, and
a patch that no longer applies is still a `conflict`).

Every function takes an asyncpg connection inside `store.tenant_transaction` (RLS scopes it to
one tenant, and the audit trigger records the acting agent). SQL: `server/db/sql/state.sql`.
Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
import jsonpatch
import jsonpointer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.core.errors import ErrorCode, TandemError
from server.db.store import Q
from server.workspaces import directory as workspaces

Mode = Literal["replace", "merge", "patch"]
OnConflict = Literal["fail", "merge"]

MAX_REASON_CHARS = 200  # an `invalid_patch` reason is a hint, not a dump of the state


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    workspace_id: uuid.UUID
    version: int
    state: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"workspace_id": str(self.workspace_id), "version": self.version, "state": self.state}


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """A committed change. `merged_conflict`: the caller's version was stale and the change was
    merged onto `previous_version` (recorded in `conflict_resolutions`)."""

    workspace_id: uuid.UUID
    version: int
    state: dict[str, Any]
    previous_version: int
    merged_conflict: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "workspace_id": str(self.workspace_id),
            "version": self.version,
            "state": self.state,
            "previous_version": self.previous_version,
            "merged_conflict": self.merged_conflict,
        }


class _Change(BaseModel):
    """The arguments of `update_state`, validated once (strict: no coercion of JSON types)."""

    model_config = ConfigDict(strict=True, frozen=True)

    expected_version: Annotated[int, Field(ge=1)]
    mode: Mode
    value: dict[str, Any] | None = None
    patch: list[Any] | None = None
    on_conflict: OnConflict = "fail"

    @model_validator(mode="after")
    def _payload_matches_mode(self) -> _Change:
        if self.mode == "patch":
            if self.patch is None:
                raise ValueError("patch: a list of operations is required with mode patch")
            if self.value is not None:
                raise ValueError("value: not allowed with mode patch")
        else:
            if self.value is None:
                raise ValueError(f"value: an object is required with mode {self.mode}")
            if self.patch is not None:
                raise ValueError(f"patch: not allowed with mode {self.mode}")
        return self


# --- pure helpers ----------------------------------------------------------------------------


def apply_patch(state: dict[str, Any], patch: list[Any]) -> dict[str, Any]:
    """`state` with the RFC 6902 `patch` applied (all operations or none; `state` is untouched).

    Any failure (a malformed operation, a path that does not exist, a `test` that does not
    hold) raises `invalid_patch` with `details={"reason": ...}` naming the operation's index.
    A result that is not a JSON object (a patch replacing the root) raises `invalid_state`.
    """
    if not isinstance(patch, list):
        raise TandemError(ErrorCode.INVALID_PATCH, details={"reason": "a JSON Patch is a list of operations"})
    doc: Any = copy.deepcopy(state)
    for index, operation in enumerate(patch):
        try:
            # One operation at a time, in place on our own copy: the failing index is known.
            doc = jsonpatch.JsonPatch([operation]).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            reason = f"operation {index}: {_short(exc)}"
            raise TandemError(ErrorCode.INVALID_PATCH, details={"reason": reason}) from exc
    if not isinstance(doc, dict):
        raise _not_an_object(doc)
    return doc


def encode_state(state: Any, max_state_bytes: int) -> str:
    """`state` as compact JSON text, the form whose UTF-8 size `max_state_bytes` bounds.

    Not an object, not representable as JSON (NaN, lone surrogates) or too large:
    `invalid_state`.
    """
    if not isinstance(state, dict):
        raise _not_an_object(state)
    try:
        text = json.dumps(state, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise TandemError(ErrorCode.INVALID_STATE, details={"reason": "the state is not valid JSON"}) from exc
    if size > max_state_bytes:
        raise TandemError(ErrorCode.INVALID_STATE, details={"max_state_bytes": max_state_bytes, "state_bytes": size})
    return text


def _not_an_object(value: Any) -> TandemError:
    return TandemError(
        ErrorCode.INVALID_STATE, details={"reason": f"the state must be a JSON object, not {_json_type(value)}"}
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _invalid_message(exc: ValidationError) -> TandemError:
    errors = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if not field and error["type"] == "value_error":
            # The mode check names its field as "field: message".
            field, _, message = message.removeprefix("Value error, ").partition(": ")
        errors.append({"field": field, "type": error["type"], "message": message})
    return TandemError(ErrorCode.INVALID_MESSAGE, details={"errors": errors})


# --- database --------------------------------------------------------------------------------


async def get_state(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> StateSnapshot:
    """The workspace's state and version. Unknown, deleted and other tenants' workspaces raise
    the same bare `not_found`. The caller checks the session has joined the workspace."""
    row = await conn.fetchrow(Q["state_get"], workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return StateSnapshot(workspace_id, row["version"], json.loads(row["state"]))


async def locked_state(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> StateSnapshot:
    """The workspace's state and version under the row lock `update_state` takes (held until
    the caller commits): a change computed from it and written in the same transaction cannot
    interleave with another writer's. Raises `not_found` as `get_state` does."""
    row = await conn.fetchrow(Q["state_lock"], workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return StateSnapshot(workspace_id, row["version"], json.loads(row["state"]))


async def update_state(
    conn: asyncpg.Connection,
    agent_id: str,
    workspace_id: uuid.UUID,
    *,
    expected_version: int,
    mode: Mode,
    value: dict[str, Any] | None = None,
    patch: list[Any] | None = None,
    on_conflict: OnConflict = "fail",
    max_state_bytes: int,
) -> StateUpdate:
    """Change the workspace's state if `expected_version` is current (module docstring).

    Errors, in the order checked: `invalid_state` (a `value` that is not a JSON object: a state
    must be one); `invalid_message` (other arguments of the wrong type or not fitting the mode); `not_found` (unknown, deleted, other tenant); `not_member`; `forbidden` (a viewer,
    or no "write" permission); `conflict` with `details={"version", "state"}` (current values);
    `invalid_patch` with `details={"reason"}`; `invalid_state` (the result is not an object, or
    its compact JSON exceeds `max_state_bytes`: `details={"max_state_bytes", "state_bytes"}`).
    The workspace row stays locked until the caller commits, so concurrent writers serialise and
    each success advances the version by exactly one. On any error nothing is written; let it
    propagate out of `tenant_transaction`, which rolls back.
    """
    if value is not None and not isinstance(value, dict):
        raise _not_an_object(value)
    try:
        change = _Change(
            expected_version=expected_version, mode=mode, value=value, patch=patch, on_conflict=on_conflict
        )
    except ValidationError as exc:
        raise _invalid_message(exc) from exc

    current = await conn.fetchrow(Q["state_lock"], workspace_id)
    if current is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    member = await workspaces.membership(conn, agent_id, workspace_id)
    if member is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    if not workspaces.can_write(member):
        raise TandemError(ErrorCode.FORBIDDEN)

    version: int = current["version"]
    stale = change.expected_version != version
    if stale and (change.on_conflict == "fail" or change.mode == "replace"):
        raise _conflict(version, current["state"])

    if change.mode == "replace":
        new_state: Any = change.value
    elif change.mode == "merge":
        value_text = encode_state(change.value, max_state_bytes)
        with _storable():
            new_state = json.loads(await conn.fetchval(Q["state_merged"], workspace_id, value_text))
    else:
        try:
            new_state = apply_patch(json.loads(current["state"]), change.patch or [])
        except TandemError as exc:
            if stale and exc.code is ErrorCode.INVALID_PATCH:
                raise _conflict(version, current["state"]) from exc
            raise
    text = encode_state(new_state, max_state_bytes)

    with _storable():
        row = await conn.fetchrow(Q["state_write"], workspace_id, text)
    if stale:
        await conn.execute(
            Q["state_record_merge"], workspace_id, agent_id, change.expected_version, version, change.mode
        )
    return StateUpdate(workspace_id, row["version"], json.loads(row["state"]), version, stale)


@contextmanager
def _storable() -> Iterator[None]:
    """JSON that PostgreSQL's jsonb refuses (a "\\u0000" escape) is the client's `invalid_state`."""
    try:
        yield
    except asyncpg.DataError as exc:
        raise TandemError(ErrorCode.INVALID_STATE, details={"reason": "the state is not storable as jsonb"}) from exc


def _conflict(version: int, state_text: str) -> TandemError:
    return TandemError(ErrorCode.CONFLICT, details={"version": version, "state": json.loads(state_text)})
