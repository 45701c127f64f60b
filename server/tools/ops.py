"""The operator's everyday commands' bodies: list, show and soft-delete workspaces and documents,
list and remove members, list the agent registry, and `tandem status`.

Tenant commands run on `admin.app_pool` inside `store.tenant_transaction` with the operator
(`admin.ACTOR`) as the audited actor, so RLS confines each one to its tenant. Soft delete sets
`deleted_at` (server/db/sql/ops.sql); the server's statements all skip such rows, and the
`doc.deleted` / `workspace.deleted` event commits with it, so running servers close what is gone. A member is
removed under the rules of server/workspaces/members.py with the operator acting as an owner, and
the `member.changed` event goes out in the same transaction, so running servers end the removed
agent's hold on the workspace. Imports no typer: server/tools/cli_ops.py owns the command line.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from server.cluster.events import Event, Events
from server.core.errors import ErrorCode, TandemError
from server.core.settings import Settings
from server.db import dbserver, migrate, store
from server.db.store import Q
from server.tools.admin import ACTOR, AdminError
from server.wire.protocol_deletes import DocDeleted, WorkspaceDeleted
from server.workspaces import agents, directory, members

CONNECT_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 2.0
# What a server keeps only in memory: `tandem status` says so instead of guessing.
NOT_TRACKED = "not tracked in the database (each node's /metrics reports its own)"


@dataclass(frozen=True, slots=True)
class WorkspaceSummary:
    workspace: directory.Workspace
    member_count: int
    document_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            **self.workspace.to_wire(),
            "state_version": self.workspace.state_version,
            "member_count": self.member_count,
            "document_count": self.document_count,
        }


def document_json(document: directory.DocumentInfo) -> dict[str, Any]:
    """The wire's document object plus `head_seq`, the number of operations in its log."""
    return {**document.to_wire(), "head_seq": document.head_seq}


# --- workspaces ------------------------------------------------------------------------------


async def list_workspaces(pool: asyncpg.Pool, tenant_id: uuid.UUID, limit: int) -> tuple[list[WorkspaceSummary], bool]:
    """The tenant's live workspaces, oldest first, at most `limit`; true when there were more."""
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        rows = await conn.fetch(Q["ops_list_workspaces"], limit + 1)
    return [_summary(r) for r in rows[:limit]], len(rows) > limit


async def show_workspace(pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> WorkspaceSummary:
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        row = await conn.fetchrow(Q["ops_get_workspace"], workspace_id)
    if row is None:
        raise AdminError(_no_workspace(tenant_id, workspace_id))
    return _summary(row)


async def delete_workspace(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID
) -> tuple[directory.Workspace, datetime]:
    """Soft-delete a live workspace; returns it and its `deleted_at`."""
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        row = await conn.fetchrow(Q["ops_delete_workspace"], workspace_id)
        if row is None:
            raise AdminError(_no_workspace(tenant_id, workspace_id))
        message = WorkspaceDeleted(workspace_id=workspace_id, agent_id=ACTOR)
        await Events(ACTOR).notify(conn, Event(tenant_id, workspace_id, message))
    return directory.Workspace(**{k: v for k, v in row.items() if k != "deleted_at"}), row["deleted_at"]


# --- documents -------------------------------------------------------------------------------


async def list_documents(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID, limit: int
) -> tuple[list[directory.DocumentInfo], bool]:
    """Live documents of a live workspace, oldest first, at most `limit`; true when there were more."""
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        if await conn.fetchrow(Q["ops_get_workspace"], workspace_id) is None:
            raise AdminError(_no_workspace(tenant_id, workspace_id))
        return await directory.list_documents(conn, workspace_id, limit)


async def show_document(pool: asyncpg.Pool, tenant_id: uuid.UUID, doc_id: uuid.UUID) -> directory.DocumentInfo:
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        document = await directory.get_document(conn, doc_id)
    if document is None:
        raise AdminError(_no_document(tenant_id, doc_id))
    return document


async def delete_document(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, doc_id: uuid.UUID
) -> tuple[directory.DocumentInfo, datetime]:
    """Soft-delete a live document; its log and snapshots stay, so `tandem replay` still reads it."""
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        row = await conn.fetchrow(Q["ops_delete_document"], doc_id)
        if row is None:
            raise AdminError(_no_document(tenant_id, doc_id))
        message = DocDeleted(workspace_id=row["workspace_id"], doc_id=doc_id, agent_id=ACTOR)
        await Events(ACTOR).notify(conn, Event(tenant_id, row["workspace_id"], message))
    return directory.DocumentInfo(**{k: v for k, v in row.items() if k != "deleted_at"}), row["deleted_at"]


# --- members ---------------------------------------------------------------------------------


async def list_members(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID, limit: int
) -> tuple[list[directory.Member], bool]:
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        try:
            return await members.list_members(conn, workspace_id, limit)
        except TandemError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise AdminError(_no_workspace(tenant_id, workspace_id)) from exc
            raise


async def list_agents(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, seen_within_s: float, capability: str | None, limit: int
) -> tuple[list[agents.Agent], bool]:
    """The tenant's registered agents by id (with `capability`), statuses as a server lists them."""
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        return await agents.list_agents(conn, seen_within_s, capability=capability, limit=limit)


async def remove_member(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID, agent_id: str
) -> directory.Member:
    """Remove `agent_id` as a workspace owner may (members.check_change): never the owner.

    The `member.changed` event commits with the removal, so every server's sessions hear it
    (the removed agent's sessions leave the workspace).
    """
    async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
        row = await conn.fetchrow(Q["ws_lock_workspace"], workspace_id)
        if row is None:
            raise AdminError(_no_workspace(tenant_id, workspace_id))
        workspace = directory.Workspace(**dict(row))
        roles = await conn.fetchrow(Q["member_roles_and_count"], workspace_id, ACTOR, agent_id)
        refused = members.check_change(
            "remove", actor_id=ACTOR, actor_role="owner", target_id=agent_id,
            target_role=roles["target_role"], owner_id=workspace.owner_id,
        )  # fmt: skip
        if refused is ErrorCode.NOT_FOUND:
            raise AdminError(f"agent {agent_id!r} is not a member of workspace {workspace_id}")
        if refused is not None:
            raise AdminError(f"agent {agent_id!r} owns workspace {workspace_id}: an owner is never removed")
        member = _member(await conn.fetchrow(Q["member_delete"], workspace_id, agent_id))
        # Here, not at the top: the coordination module brings the rooms, which no other command needs.
        from server.workspaces.coordination import member_event

        event = member_event(tenant_id, workspace_id, members.member_to_wire(member), "removed", ACTOR)
        await Events(ACTOR).notify(conn, event)
    return member


# --- status ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    database: str  # "reachable", or "unreachable: <why>"
    schema_version: str | None  # newest applied migration (None: none, or unknown)
    pending: tuple[str, ...]  # versions of migrations not applied yet
    nodes: tuple[tuple[str, datetime], ...] | None  # (node id, connected since); None: unknown
    redis: str  # "not configured", "reachable" or "unreachable: <why>"

    @property
    def ok(self) -> bool:
        return self.database == "reachable"

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "schema_version": self.schema_version,
            "pending_migrations": list(self.pending),
            "nodes": None if self.nodes is None else [
                {"node_id": n, "connected_at": directory.rfc3339(t)} for n, t in self.nodes
            ],
            "rooms_and_sessions": NOT_TRACKED,
            "redis": self.redis,
        }  # fmt: skip


async def status(settings: Settings) -> Status:
    """What the database knows, read without changing anything; never raises for an
    unreachable database or Redis (the status says so)."""
    redis = await _redis_status(settings)
    try:
        async with dbserver.database_server(settings, share=True) as (admin_url, _embedded):
            conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_S)
            try:
                version = await _schema_version(conn)
                rows = await conn.fetch(Q["ops_nodes"], settings.app_role)
            finally:
                await conn.close(timeout=CONNECT_TIMEOUT_S)
    except dbserver.EXPECTED_ERRORS as exc:
        return Status(f"unreachable: {dbserver.explain(exc)}", None, (), None, redis)
    pending = tuple(m.version for m in migrate.load(settings.migrations_dir) if version is None or m.version > version)
    return Status("reachable", version, pending, tuple((r["node_id"], r["backend_start"]) for r in rows), redis)


async def _schema_version(conn: asyncpg.Connection) -> str | None:
    try:
        return await migrate.current_version(conn)
    except asyncpg.UndefinedTableError:  # never migrated: no schema_migrations yet
        return None


async def _redis_status(settings: Settings) -> str:
    if not settings.redis_url:
        return "not configured"
    from redis.asyncio import Redis  # only when configured
    from redis.exceptions import RedisError

    client = Redis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
            await client.ping()
        return "reachable"
    except (RedisError, OSError, TimeoutError) as exc:
        return " ".join(f"unreachable: {type(exc).__name__}: {exc}".split())
    finally:
        await client.aclose()


# --- helpers ---------------------------------------------------------------------------------


def _summary(row: Mapping[str, Any]) -> WorkspaceSummary:
    fields = {k: v for k, v in row.items() if k not in ("member_count", "document_count")}
    return WorkspaceSummary(directory.Workspace(**fields), row["member_count"], row["document_count"])


def _member(row: Mapping[str, Any]) -> directory.Member:
    return directory.Member(row["agent_id"], row["role"], row["joined_at"], tuple(row["permissions"]))


def _no_workspace(tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> str:
    return f"workspace {workspace_id} not found in tenant {tenant_id}"


def _no_document(tenant_id: uuid.UUID, doc_id: uuid.UUID) -> str:
    return f"document {doc_id} not found in tenant {tenant_id}"
