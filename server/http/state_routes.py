"""A workspace's state over HTTP (docs/http.md): `GET` with `ETag` = its version, `PATCH` with an
RFC 6902 JSON Patch (`application/json-patch+json`, applied by server/workspaces/state.py as
`state.update` applies one) or an RFC 7386 merge patch (`application/merge-patch+json`).

The change is computed and written under the workspace row's lock in one transaction, and its
`state.changed` event published in it and delivered on commit, as the agent endpoint does.
`If-Match: "<version>"` is compared under that lock: 412 on another version, nothing written.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.http.access import admit, may_read, node_of, principal, transaction
from server.http.body import media_type
from server.http.models import WorkspaceState
from server.http.problems import PROBLEMS, WRITE_PROBLEMS, Stale
from server.http.write_routes import if_match
from server.workspaces import state
from server.workspaces.coordination import state_event

router = APIRouter(responses={**PROBLEMS, **WRITE_PROBLEMS})
Caller = Annotated[Principal, Depends(principal)]
STATE = "/workspaces/{workspace_id}/state"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge member by member, `null` removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@router.get(STATE, response_model=WorkspaceState, summary="A workspace's state")
async def get_state(
    request: Request, response: Response, workspace_id: uuid.UUID, who: Caller
) -> WorkspaceState:
    async with transaction(request, who) as conn:
        await may_read(conn, who.agent_id, workspace_id)
        current = await state.get_state(conn, workspace_id)
    response.headers["ETag"] = f'"{current.version}"'
    return WorkspaceState(
        workspace_id=workspace_id, version=current.version, state=current.state
    )


@router.patch(
    STATE,
    response_model=WorkspaceState,
    summary="Change a workspace's state (JSON Patch or merge patch)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON_PATCH: {"schema": {"type": "array", "items": {"type": "object"}}},
                MERGE_PATCH: {"schema": {"type": "object"}},
            },
        }
    },
)
async def patch_state(
    request: Request, response: Response, workspace_id: uuid.UUID, who: Caller
) -> WorkspaceState:
    kind = media_type(request.headers.get("content-type", ""))
    if kind not in (JSON_PATCH, MERGE_PATCH):
        raise TandemError(
            ErrorCode.UNSUPPORTED_FRAME,
            f"the body must be {JSON_PATCH} or {MERGE_PATCH}",
        )
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise TandemError(ErrorCode.BAD_JSON, "The body is not valid JSON.") from None
    if kind == JSON_PATCH and not isinstance(body, list):
        raise TandemError(
            ErrorCode.INVALID_PATCH,
            details={"reason": "a JSON Patch is an array of operations"},
        )
    expect = if_match(request)
    node = node_of(request)
    async with transaction(request, who) as conn:
        await admit(conn, who.agent_id, workspace_id)
        current = await state.locked_state(conn, workspace_id)
        if expect is not None and expect != current.version:
            raise Stale(
                f"If-Match names {expect}; the version is {current.version}",
                {"version": current.version},
            )
        common: dict[str, Any] = {
            "expected_version": current.version,
            "max_state_bytes": node.settings.max_state_bytes,
        }
        if kind == JSON_PATCH:
            done = await state.update_state(
                conn, who.agent_id, workspace_id, mode="patch", patch=body, **common
            )
        else:
            merged = merge_patch(current.state, body)
            done = await state.update_state(
                conn, who.agent_id, workspace_id, mode="replace", value=merged, **common
            )
        event = state_event(
            who.tenant_id, workspace_id, done.version, done.state, who.agent_id
        )
        await node.coordination.publish(conn, event)
    node.coordination.deliver(event)
    response.headers["ETag"] = f'"{done.version}"'
    return WorkspaceState(
        workspace_id=workspace_id, version=done.version, state=done.state
    )
