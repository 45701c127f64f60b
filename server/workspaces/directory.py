"""Workspaces, memberships and document metadata: the data side of docs/protocol.md#54 and #55.

Every function takes an asyncpg connection already inside `store.tenant_transaction`, so RLS
scopes it to one tenant; SQL lives in `server/db/sql/queries.sql` (the `ws_*` queries). Failures a
client may see are `TandemError`s; when one is raised after a statement failed, the caller's
transaction is aborted, so let it propagate out of `tenant_transaction` (which rolls back).
Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.store import Q

ROLES = ("owner", "admin", "member", "viewer")
WRITE_ROLES = frozenset({"owner", "admin", "member"})


def rfc3339(ts: datetime) -> str:
    """A timestamp as the wire writes it: RFC 3339 in UTC with `Z` (docs/protocol.md#3)."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Workspace:
    workspace_id: uuid.UUID
    name: str
    workspace_type: str
    visibility: str
    max_members: int
    owner_id: str
    created_at: datetime
    state_version: int

    def to_wire(self) -> dict[str, Any]:
        """The workspace object of docs/protocol.md#52 (no `state_version`: join replies carry it)."""
        return {
            "workspace_id": str(self.workspace_id),
            "name": self.name,
            "workspace_type": self.workspace_type,
            "visibility": self.visibility,
            "max_members": self.max_members,
            "owner_id": self.owner_id,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Member:
    agent_id: str
    role: str
    joined_at: datetime
    permissions: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        """The member object of docs/protocol.md#52 (permissions stay server-side)."""
        return {"agent_id": self.agent_id, "role": self.role, "joined_at": rfc3339(self.joined_at)}


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    doc_id: uuid.UUID
    workspace_id: uuid.UUID
    title: str
    content_type: str
    language: str | None
    created_by: str
    created_at: datetime
    head_seq: int

    def to_wire(self) -> dict[str, Any]:
        """The document object of docs/protocol.md#52 (no `head_seq`: open replies carry `seq`)."""
        return {
            "doc_id": str(self.doc_id),
            "workspace_id": str(self.workspace_id),
            "title": self.title,
            "content_type": self.content_type,
            "language": self.language,
            "created_by": self.created_by,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What `workspace.join.ok` carries. `truncated`: members or documents were cut at the limit.

    `can_write` is `can_write()` of the joining agent's membership (role and permissions), for
    the session to cache with the joined workspace; it is not sent.
    """

    workspace: Workspace
    role: str
    state_version: int
    members: tuple[Member, ...]
    documents: tuple[DocumentInfo, ...]
    truncated: bool
    can_write: bool

    def to_wire(self) -> dict[str, Any]:
        """The reply's fields other than `type` and `re`."""
        return {
            "workspace": self.workspace.to_wire(),
            "role": self.role,
            "state_version": self.state_version,
            "members": [m.to_wire() for m in self.members],
            "documents": [d.to_wire() for d in self.documents],
            "truncated": self.truncated,
        }


def can_write(member: Member | None) -> bool:
    """Owners, admins and members write, viewers only read; a `permissions` array without
    "write" takes writing away from any role."""
    return member is not None and role_can_write(member.role) and "write" in member.permissions


def wire_can_write(member: Mapping[str, Any]) -> bool:
    """`can_write` of a member object as `member.changed` events carry it (role and
    `permissions`, docs/protocol.md#125), for sessions that follow their own membership."""
    return role_can_write(member["role"]) and "write" in member["permissions"]


def role_can_write(role: str | None) -> bool:
    """The role part of `can_write` alone (None: not a member). Prefer `can_write` or
    `JoinResult.can_write`, which also honour the member's `permissions`."""
    return role in WRITE_ROLES


# --- workspaces ------------------------------------------------------------------------------


async def create_workspace(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    owner_agent: str,
    name: str,
    workspace_type: str = "general",
    visibility: str = "private",
    max_members: int = 100,
) -> Workspace:
    """Create a workspace with `owner_agent` as its `owner` member, in one statement.

    Values the schema refuses (blank or over-long name, unknown visibility, max_members outside
    1..1000) raise `invalid_message`. Does not join any session to it.
    """
    with store.input_errors(_CONSTRAINT_FIELDS):
        row = await conn.fetchrow(
            Q["ws_create_workspace"], tenant_id, name, workspace_type, owner_agent, visibility, max_members
        )
    return _workspace(row)


async def list_workspaces(conn: asyncpg.Connection, agent_id: str, limit: int) -> tuple[list[Workspace], bool]:
    """The agent's workspaces plus the tenant's team and public ones (not deleted), oldest first,
    at most `limit`; the flag is true when there were more."""
    rows = await conn.fetch(Q["ws_list_workspaces"], agent_id, _plus_one(limit))
    return [_workspace(r) for r in rows[:limit]], len(rows) > limit


async def join_workspace(conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID, limit: int) -> JoinResult:
    """Admit `agent_id` to the workspace (docs/protocol.md#54) and return what the join reply needs.

    A member is admitted again (its `last_seen_at` and the workspace's `last_activity_at` move
    on). A non-member becomes `member` of a team or public workspace; a private one raises
    `forbidden`, a full one `workspace_full`. Unknown, deleted and other tenants' ids raise the
    same bare `not_found`. A member's rejoin takes no lock on the workspace row (and moves
    `last_activity_at` at most once a second), so a crowd of returning agents is not served one
    at a time; a non-member's join locks the row until the caller commits, so of concurrent
    joiners racing for the last slot exactly one gets in. Members and documents are cut at
    `limit` each.
    """
    row = await conn.fetchrow(Q["ws_rejoin_member"], workspace_id, agent_id)
    if row is not None:
        workspace, member = _workspace(row), _member(row)
        return await _join_result(conn, workspace, member, limit)
    workspace = await _lock_workspace(conn, workspace_id)
    counts = await conn.fetchrow(Q["ws_member_role_and_count"], workspace_id, agent_id)
    if counts["role"] is not None:  # became a member since the rejoin above looked
        member = _member(await conn.fetchrow(Q["ws_touch_member"], workspace_id, agent_id))
    else:
        if workspace.visibility == "private":
            raise TandemError(ErrorCode.FORBIDDEN)
        if counts["member_count"] >= workspace.max_members:
            raise TandemError(ErrorCode.WORKSPACE_FULL)
        member = _member(await conn.fetchrow(Q["ws_join_member"], workspace_id, agent_id))
    return await _join_result(conn, workspace, member, limit)


async def _join_result(conn: asyncpg.Connection, workspace: Workspace, member: Member, limit: int) -> JoinResult:
    workspace_id = workspace.workspace_id
    member_rows = await conn.fetch(Q["ws_list_members"], workspace_id, _plus_one(limit))
    documents, docs_truncated = await list_documents(conn, workspace_id, limit)
    return JoinResult(
        workspace=workspace,
        role=member.role,
        state_version=workspace.state_version,
        members=tuple(_member(r) for r in member_rows[:limit]),
        documents=tuple(documents),
        truncated=docs_truncated or len(member_rows) > limit,
        can_write=can_write(member),
    )


# --- members ---------------------------------------------------------------------------------


async def workspace_and_membership(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID
) -> tuple[Workspace, Member | None]:
    """A live workspace of the tenant and the agent's membership of it (None: not a member);
    unknown, deleted and other tenants' ids raise the bare `not_found`. Reads only."""
    row = await conn.fetchrow(Q["ws_get_workspace"], workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _workspace(row), await membership(conn, agent_id, workspace_id)


async def read_access(conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID) -> tuple[Workspace, Member | None]:
    """The workspace and the agent's membership (None: not a member) when the agent may read it
    without joining: a member, or anyone of the tenant for a team or public workspace (those are
    the ones `workspace.list` shows a non-member). A private one raises `forbidden`; unknown,
    deleted and other tenants' ids the bare `not_found`. Reads only: nothing is written."""
    workspace, member = await workspace_and_membership(conn, agent_id, workspace_id)
    if member is None and workspace.visibility == "private":
        raise TandemError(ErrorCode.FORBIDDEN)
    return workspace, member


async def membership(conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID) -> Member | None:
    """The agent's membership of a live workspace of the current tenant, or None."""
    row = await conn.fetchrow(Q["ws_get_membership"], workspace_id, agent_id)
    return None if row is None else _member(row)


async def add_member(conn: asyncpg.Connection, workspace_id: uuid.UUID, agent_id: str, role: str = "member") -> Member:
    """Make `agent_id` a member with `role`, or give an existing member that role (idempotent).

    Unknown, deleted or other tenants' workspaces raise `not_found`; a new member beyond
    `max_members` raises `workspace_full` (race-free: the workspace row is locked as in
    `join_workspace`). An unknown role raises `invalid_message`. Ownership is not transferred
    here: `owner_id` does not change when another agent is given the `owner` role.
    """
    if role not in ROLES:
        raise TandemError(ErrorCode.INVALID_MESSAGE, details=_field_error("role", f"must be one of {', '.join(ROLES)}"))
    workspace = await _lock_workspace(conn, workspace_id)
    counts = await conn.fetchrow(Q["ws_member_role_and_count"], workspace_id, agent_id)
    if counts["role"] is None and counts["member_count"] >= workspace.max_members:
        raise TandemError(ErrorCode.WORKSPACE_FULL)
    with store.input_errors(_CONSTRAINT_FIELDS):
        row = await conn.fetchrow(Q["ws_upsert_member"], workspace_id, agent_id, role)
    return _member(row)


# --- documents -------------------------------------------------------------------------------


async def create_document(
    conn: asyncpg.Connection,
    agent_id: str,
    workspace_id: uuid.UUID,
    title: str,
    content_type: str = "text",
    language: str | None = None,
) -> DocumentInfo:
    """Create an empty document in a workspace the agent may write to (docs/protocol.md#55).

    No membership of a live workspace of this tenant (including unknown and other tenants'
    ids): `not_member`; a membership that cannot write (viewer, or no "write" permission):
    `forbidden`; a title or content type the schema refuses: `invalid_message`.
    """
    member = await membership(conn, agent_id, workspace_id)
    if member is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    if not can_write(member):
        raise TandemError(ErrorCode.FORBIDDEN)
    with store.input_errors(_CONSTRAINT_FIELDS):
        row = await conn.fetchrow(Q["ws_create_document"], workspace_id, title, content_type, language, agent_id)
    return _document(row)


async def list_documents(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, limit: int
) -> tuple[list[DocumentInfo], bool]:
    """Live documents of a live workspace, oldest first, at most `limit`; the flag is true when
    there were more. The caller checks the session has joined the workspace."""
    rows = await conn.fetch(Q["ws_list_documents"], workspace_id, _plus_one(limit))
    return [_document(r) for r in rows[:limit]], len(rows) > limit


async def get_document(conn: asyncpg.Connection, doc_id: uuid.UUID) -> DocumentInfo | None:
    """A live document of a live workspace of this tenant, or None (the session answers
    `not_found`). Its `workspace_id` tells the session which workspace must be joined."""
    row = await conn.fetchrow(Q["ws_get_document"], doc_id)
    return None if row is None else _document(row)


# --- helpers ---------------------------------------------------------------------------------


async def _lock_workspace(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> Workspace:
    # FOR NO KEY UPDATE conflicts with itself (joiners queue up) but not with the KEY SHARE
    # locks of foreign-key checks, so creating documents in the workspace does not wait.
    row = await conn.fetchrow(Q["ws_lock_workspace"], workspace_id)
    if row is None:
        # Always the bare code: the reply must not tell "deleted" or "another tenant's" apart.
        raise TandemError(ErrorCode.NOT_FOUND)
    return _workspace(row)


def _plus_one(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return limit + 1  # one more row than we return tells whether the list was cut


def _workspace(row: Mapping[str, Any]) -> Workspace:
    """From a row with the workspace's columns (and maybe others: a rejoin's carries the member's)."""
    return Workspace(**{name: row[name] for name in _WORKSPACE_FIELDS})


_WORKSPACE_FIELDS = tuple(f.name for f in fields(Workspace))


def _member(row: Mapping[str, Any]) -> Member:
    return Member(row["agent_id"], row["role"], row["joined_at"], tuple(row["permissions"]))


def _document(row: Mapping[str, Any]) -> DocumentInfo:
    return DocumentInfo(**dict(row))


# Which request field a named constraint of migrations 0006-0008 guards.
_CONSTRAINT_FIELDS = {
    "workspace_name_not_empty": ("name", "must not be blank"),
    "valid_max_members": ("max_members", "must be between 1 and 1000"),
    "doc_title_not_empty": ("title", "must not be blank"),
    "shared_documents_content_type_check": ("content_type", "must be text, markdown, json, yaml or code"),
}


def _field_error(field: str, message: str) -> dict[str, Any]:
    return {"errors": [{"field": field, "type": "value_error", "message": message}]}
