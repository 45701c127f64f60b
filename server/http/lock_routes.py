"""Locks over HTTP (docs/http.md): acquire, renew, release and list a workspace's leased locks, read
as the agent endpoint's `lock.*` messages (server/http/wire_bodies.py) and carried out by
server/workspaces/locks.py, with the same roles, fences and refusals (docs/protocol.md#121).
Each change publishes its `lock.*` event in its transaction and delivers it on commit.

An HTTP caller has no session: its lock lasts until released or its `ttl_ms` runs out (no
release after a disconnect's grace period), and `acquire` answers at once (`wait_ms` above 0 is
refused: an HTTP client tries again after the `expires_at` a `423 locked` names).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.http.access import member_of, node_of, principal, transaction
from server.http.models import LockList, LockOne
from server.http.problems import PROBLEMS, WRITE_PROBLEMS
from server.http.wire_bodies import body_schema, json_object, read_message
from server.wire import protocol_coordination as pc
from server.workspaces import locks
from server.workspaces.coordination import lock_event

router = APIRouter(responses={**PROBLEMS, **WRITE_PROBLEMS}, tags=["locks"])
Caller = Annotated[Principal, Depends(principal)]
LOCKS = "/workspaces/{workspace_id}/locks"

_MODELS = {"acquire": pc.LockAcquire, "renew": pc.LockRenew, "release": pc.LockRelease}
_EVENTS = {
    "acquire": "lock.acquired",
    "renew": "lock.renewed",
    "release": "lock.released",
}


async def _change(
    request: Request, who: Principal, workspace_id: uuid.UUID, action: str
) -> LockOne:
    body = await json_object(request)
    if action == "acquire" and body.get("wait_ms", 0) != 0:
        raise TandemError(
            ErrorCode.INVALID_MESSAGE,
            "wait_ms: an HTTP acquire answers at once (0)",
            {"errors": [{"field": "wait_ms", "type": "http_no_wait", "message": "must be 0 over HTTP"}]},
        )  # fmt: skip
    msg = read_message(request, _MODELS[action], body, workspace_id=workspace_id)
    resource = locks.Resource(workspace_id, msg.doc_id, msg.name)
    node = node_of(request)
    async with transaction(request, who) as conn:
        await member_of(conn, who.agent_id, workspace_id, write=True)
        if isinstance(msg, pc.LockAcquire):
            lock = await locks.acquire(conn, who.agent_id, resource, msg.ttl_ms)
        elif isinstance(msg, pc.LockRenew):
            lock = await locks.renew(
                conn, who.agent_id, resource, msg.fence, msg.ttl_ms
            )
        else:
            lock = await locks.release(conn, who.agent_id, resource, msg.fence)
        reason = "released" if action == "release" else None
        event = lock_event(who.tenant_id, _EVENTS[action], lock, reason=reason)
        await node.coordination.publish(conn, event)
    node.coordination.deliver(event)
    return LockOne(lock=lock.to_wire())


@router.get(LOCKS, response_model=LockList, summary="A workspace's live locks")
async def list_locks(
    request: Request, workspace_id: uuid.UUID, who: Caller
) -> LockList:
    async with transaction(request, who) as conn:
        await member_of(conn, who.agent_id, workspace_id, write=False)
        found = await locks.list_locks(conn, workspace_id)
    return LockList(workspace_id=workspace_id, locks=[lock.to_wire() for lock in found])


def _lock_route(action: str) -> None:
    async def change(request: Request, workspace_id: uuid.UUID, who: Caller) -> LockOne:
        return await _change(request, who, workspace_id, action)

    change.__name__ = f"lock_{action}"
    schema = body_schema(_MODELS[action], "workspace_id", "wait_ms")
    router.post(
        f"{LOCKS}/{action}",
        response_model=LockOne,
        summary=f"Lock: {action} (as `lock.{action}`)",
        openapi_extra=schema,
    )(change)


for _action in _MODELS:
    _lock_route(_action)
