"""Member management: who may add, change and remove the members of a workspace (docs/protocol.md section 12.5).

The rules, checked by `check_change` (pure) in this order:

1. The acting agent must be a member (`not_member`).
2. Only owners and admins manage members; anyone else may only remove itself, i.e. leave
   (`forbidden`).
3. Changing or removing someone who is not a member: `not_found`.
4. The workspace owner (`workspaces.owner_id`, and any member whose role is `owner`) is never
   removed, demoted or given other permissions, by anyone, itself included (`forbidden`).
5. Nobody is given the role `owner` (`forbidden`): ownership is not transferred here.
6. Leaving (removing oneself) is always allowed to a non-owner.
7. Only an owner adds, removes or changes an admin, or makes someone admin; admins manage
   members and viewers (`forbidden`).

The `permissions` array ("read", "write", "admin") is stored as given and honoured where it
matters (`workspaces.can_write`: no "write", no writing). Managing members is decided by role
alone: the "admin" permission is stored but grants nothing by itself.

Every function takes an asyncpg connection inside `store.tenant_transaction` (RLS scopes it to
one tenant; the audit trigger records the acting agent). Changes hold the workspace row lock
(as `workspaces.join_workspace` does) until the caller commits, so membership changes of one
workspace are serialised and `max_members` holds under concurrency. SQL:
`server/db/sql/members.sql` plus `ws_lock_workspace`. Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from server.core.errors import ErrorCode, TandemError
from server.db.store import Q
from server.workspaces.directory import Member, Workspace, rfc3339

Role = Literal["owner", "admin", "member", "viewer"]
Permission = Literal["read", "write", "admin"]
Action = Literal["add", "update", "remove"]
MANAGER_ROLES = frozenset({"owner", "admin"})


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise PydanticCustomError("unique_items", "Items must not repeat")
    return values


class _MemberChange(BaseModel):
    """The client-given arguments of a change, validated once (strict: no type coercion)."""

    model_config = ConfigDict(strict=True, frozen=True)

    agent_id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    role: Role | None = None
    permissions: Annotated[list[Permission], AfterValidator(_distinct)] | None = None


def member_to_wire(member: Member) -> dict[str, Any]:
    """A member object with its permissions: {"agent_id", "role", "permissions", "joined_at"}."""
    return {
        "agent_id": member.agent_id,
        "role": member.role,
        "permissions": list(member.permissions),
        "joined_at": rfc3339(member.joined_at),
    }


def check_change(
    action: Action,
    *,
    actor_id: str,
    actor_role: str | None,
    target_id: str,
    target_role: str | None,
    owner_id: str,
    new_role: str | None = None,
) -> ErrorCode | None:
    """Whether `actor_id` may `action` the membership of `target_id` (None: allowed).

    `actor_role`/`target_role` are their current roles (None: not a member); `new_role` is the
    role the target would get (None: unchanged). For `add`, a target that is already a member
    is an `update`. The rules are the module docstring's, in its order.
    """
    if actor_role is None:
        return ErrorCode.NOT_MEMBER
    leaving = action == "remove" and actor_id == target_id
    if not leaving and actor_role not in MANAGER_ROLES:
        return ErrorCode.FORBIDDEN
    if target_role is None and action != "add":
        return ErrorCode.NOT_FOUND
    if target_id == owner_id or target_role == "owner" or new_role == "owner":
        return ErrorCode.FORBIDDEN
    if leaving:
        return None
    if (target_role == "admin" or new_role == "admin") and actor_role != "owner":
        return ErrorCode.FORBIDDEN
    return None


# --- database --------------------------------------------------------------------------------


async def add_member(
    conn: asyncpg.Connection,
    actor_id: str,
    workspace_id: uuid.UUID,
    agent_id: str,
    role: str = "member",
    permissions: list[str] | None = None,
) -> Member:
    """Make `agent_id` a member with `role` and `permissions` (None: the default ["read",
    "write"]). An existing member is changed as `update_member` would change it.

    Errors: `invalid_message` (unknown role or permission, repeated permission); `not_found`
    (unknown, deleted or other tenant's workspace); the rules of `check_change`;
    `workspace_full` for a new member beyond `max_members` (checked after the rules).
    """
    change = _validate(agent_id, role, permissions)
    workspace = await _lock_workspace(conn, workspace_id)
    roles = await conn.fetchrow(Q["member_roles_and_count"], workspace_id, actor_id, agent_id)
    action: Action = "add" if roles["target_role"] is None else "update"
    _authorize(action, actor_id, roles, agent_id, workspace, change.role)
    if action == "update":
        return await _update(conn, workspace_id, change)
    if roles["member_count"] >= workspace.max_members:
        raise TandemError(ErrorCode.WORKSPACE_FULL)
    row = await conn.fetchrow(Q["member_insert"], workspace_id, agent_id, change.role, change.permissions)
    return _member(row)


async def update_member(
    conn: asyncpg.Connection,
    actor_id: str,
    workspace_id: uuid.UUID,
    agent_id: str,
    *,
    role: str | None = None,
    permissions: list[str] | None = None,
) -> Member:
    """Give member `agent_id` a new `role` and/or `permissions` (None: unchanged).

    Errors: `invalid_message`; `not_found` (workspace, or a target that is not a member); the
    rules of `check_change`.
    """
    change = _validate(agent_id, role, permissions)
    workspace = await _lock_workspace(conn, workspace_id)
    roles = await conn.fetchrow(Q["member_roles_and_count"], workspace_id, actor_id, agent_id)
    _authorize("update", actor_id, roles, agent_id, workspace, change.role)
    return await _update(conn, workspace_id, change)


async def remove_member(conn: asyncpg.Connection, actor_id: str, workspace_id: uuid.UUID, agent_id: str) -> Member:
    """Remove `agent_id` from the workspace (itself: leave) and return the membership it had.

    Errors: `invalid_message`; `not_found` (workspace, or a target that is not a member); the
    rules of `check_change`. Sessions of the removed agent are the caller's to end.
    """
    change = _validate(agent_id, None, None)
    workspace = await _lock_workspace(conn, workspace_id)
    roles = await conn.fetchrow(Q["member_roles_and_count"], workspace_id, actor_id, change.agent_id)
    _authorize("remove", actor_id, roles, agent_id, workspace, None)
    row = await conn.fetchrow(Q["member_delete"], workspace_id, agent_id)
    return _member(row)


async def list_members(conn: asyncpg.Connection, workspace_id: uuid.UUID, limit: int) -> tuple[list[Member], bool]:
    """Members of a live workspace in joining order, at most `limit`; the flag is true when
    there were more. Unknown, deleted and other tenants' workspaces: `not_found`. The caller
    checks the session has joined the workspace."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    rows = await conn.fetch(Q["member_list"], workspace_id, limit + 1)
    if not rows and not await conn.fetchval(Q["member_workspace_exists"], workspace_id):
        raise TandemError(ErrorCode.NOT_FOUND)
    return [_member(r) for r in rows[:limit]], len(rows) > limit


# --- helpers ---------------------------------------------------------------------------------


def _validate(agent_id: str, role: str | None, permissions: list[str] | None) -> _MemberChange:
    try:
        return _MemberChange(agent_id=agent_id, role=role, permissions=permissions)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "type": e["type"], "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise TandemError(ErrorCode.INVALID_MESSAGE, details={"errors": errors}) from exc


async def _lock_workspace(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> Workspace:
    row = await conn.fetchrow(Q["ws_lock_workspace"], workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)  # bare: "deleted" and "another tenant's" look alike
    return Workspace(**dict(row))


def _authorize(
    action: Action, actor_id: str, roles: Mapping[str, Any], target_id: str, workspace: Workspace, new_role: str | None
) -> None:
    code = check_change(
        action,
        actor_id=actor_id,
        actor_role=roles["actor_role"],
        target_id=target_id,
        target_role=roles["target_role"],
        owner_id=workspace.owner_id,
        new_role=new_role,
    )
    if code is not None:
        raise TandemError(code)


async def _update(conn: asyncpg.Connection, workspace_id: uuid.UUID, change: _MemberChange) -> Member:
    row = await conn.fetchrow(Q["member_update"], workspace_id, change.agent_id, change.role, change.permissions)
    return _member(row)


def _member(row: Mapping[str, Any]) -> Member:
    return Member(row["agent_id"], row["role"], row["joined_at"], tuple(row["permissions"]))
