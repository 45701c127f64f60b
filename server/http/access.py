"""Who is asking and what they may read: the bearer token checked by the node's own rule (as
/ws and /yjs check it), and workspace access by the directory's rules (server/workspaces).

Reads (`may_read`, `readable_document`) change nothing: a member reads, and so does a non-member
of a team or public workspace (the workspaces `workspace.list` shows it), without becoming a
member; a private workspace is `forbidden` to non-members. Writes go through `admit`, the /yjs
endpoint's rule (server/transport/yws.py `_join`): a non-member of a team or public workspace
joins it, as `workspace.join` admits it, before its role is checked. An unknown, deleted or
other tenant's id is a bare `not_found` either way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import asyncpg
from fastapi import Request, Security
from fastapi.security import HTTPBearer

from server.core.auth import Principal, Refusal
from server.core.errors import ErrorCode, TandemError
from server.core.metrics import Metrics
from server.core.revocations import Revocation
from server.core.settings import Settings
from server.db import store
from server.documents.checker import UpdateChecker
from server.documents.rooms import RoomRegistry
from server.workspaces import directory
from server.workspaces.coordination import Coordination
from server.workspaces.directory import DocumentInfo, Member, Workspace


class NodeView(Protocol):
    """What the API needs of the running node (server/transport/node.py `Node` has it)."""

    settings: Settings
    node_id: str
    pool: asyncpg.Pool
    rooms: RoomRegistry
    checker: UpdateChecker | None
    metrics: Metrics
    coordination: Coordination

    def authenticate(
        self, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> Principal | Refusal: ...

    def on_revoked(self, revocation: Revocation) -> None: ...


NodeGetter = Callable[[], NodeView | None]


def node_of(request: Request) -> NodeView:
    """The node serving this request; `unavailable` while it is starting or stopping."""
    node = request.app.state.node_of()
    if node is None:
        raise TandemError(ErrorCode.UNAVAILABLE, "the server is starting or stopping")
    return node


bearer = HTTPBearer(
    auto_error=False,
    description="A Tandem token (`tandem token issue`), as /ws takes it.",
)


async def principal(
    request: Request, _credentials: object = Security(bearer)
) -> Principal:
    """The caller from `Authorization: Bearer <token>` alone (no `?token=` over HTTP): refused as
    the WebSocket endpoints refuse it, the problem naming the refusal's class."""
    node = node_of(request)
    authorization = request.headers.get("authorization")
    verdict = node.authenticate(
        {}, {"authorization": authorization} if authorization else {}
    )
    if isinstance(verdict, Refusal):
        raise TandemError(
            verdict.code, f"{verdict.close_reason}", {"reason": verdict.reason.value}
        )
    return verdict


@asynccontextmanager
async def transaction(
    request: Request, who: Principal
) -> AsyncIterator[asyncpg.Connection]:
    """A tenant transaction of the caller's tenant, the caller recorded as the actor."""
    client = request.client.host if request.client else None
    async with store.tenant_transaction(
        node_of(request).pool, who.tenant_id, who.agent_id, client
    ) as conn:
        yield conn


async def admit(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID
) -> Member:
    """Before a write: the caller's membership, a non-member of a team or public workspace
    joining it by `workspace.join`'s rule; raises `forbidden` / `not_found` otherwise."""
    member = await directory.membership(conn, agent_id, workspace_id)
    if member is None:
        await directory.join_workspace(conn, agent_id, workspace_id, 1)
        member = await directory.membership(conn, agent_id, workspace_id)
        assert member is not None
    return member


async def may_read(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID
) -> tuple[Workspace, Member | None]:
    """Before a read: the workspace and the caller's membership (None: a non-member reading a
    team or public workspace); nothing is written (`directory.read_access`)."""
    return await directory.read_access(conn, agent_id, workspace_id)


async def member_of(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID, *, write: bool
) -> Member:
    """Before a task or lock request: the caller's membership, as the agent endpoint asks a
    session to have joined the workspace (`not_member` otherwise; unknown, deleted and other
    tenants' ids the bare `not_found`), and with `write` a role that writes (`forbidden`)."""
    _, member = await directory.workspace_and_membership(conn, agent_id, workspace_id)
    if member is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    if write and not directory.can_write(member):
        raise TandemError(ErrorCode.FORBIDDEN)
    return member


async def readable_document(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID
) -> DocumentInfo:
    """A live document of this workspace that the caller may read (`may_read`), read only."""
    info = await directory.get_document(conn, doc_id)
    if info is None or info.workspace_id != workspace_id:
        raise TandemError(ErrorCode.NOT_FOUND)
    await may_read(conn, agent_id, workspace_id)
    return info
