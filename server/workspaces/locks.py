"""Leased locks with fencing tokens: the data side of docs/protocol.md#121.

A lock is a document's (the seed's `is_locked`, `locked_by`, `locked_at`, `lock_expires_at`,
plus `lock_fence`) or a named one of a workspace (`workspace_locks`: "deploy", "tests"). Both
have the same semantics: acquire with a TTL (the acquiring statement itself decides whether the
current lock has expired), renew and release by the holder presenting its fence. A fence is a
number that only grows; the write path refuses a document update whose fence is not the live
lock's (`tandem_append_batch`, migrations 0018 and 0019).

Every function takes a connection inside `store.tenant_transaction`; the caller checks the
agent may write in the workspace. Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db.store import Q
from server.workspaces.directory import rfc3339


@dataclass(frozen=True, slots=True)
class Resource:
    """What a lock guards: a document of the workspace, or a name."""

    workspace_id: uuid.UUID
    doc_id: uuid.UUID | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.doc_id is None) == (self.name is None):
            raise ValueError("a lock guards a document or a name, exactly one")

    def to_wire(self) -> dict[str, Any]:
        return {"workspace_id": str(self.workspace_id), "doc_id": self.doc_id and str(self.doc_id), "name": self.name}


@dataclass(frozen=True, slots=True)
class Lock:
    resource: Resource
    holder: str
    fence: int
    locked_at: datetime | None
    expires_at: datetime | None

    def to_wire(self) -> dict[str, Any]:
        """The lock object of docs/protocol.md#121."""
        return {
            **self.resource.to_wire(),
            "holder": self.holder,
            "fence": self.fence,
            "locked_at": self.locked_at and rfc3339(self.locked_at),
            "expires_at": self.expires_at and rfc3339(self.expires_at),
        }


def _lock(resource: Resource, row: asyncpg.Record) -> Lock:
    return Lock(resource, row["locked_by"], row["fence"], row.get("locked_at"), row.get("lock_expires_at"))


def _args(resource: Resource) -> tuple[uuid.UUID, Any]:
    return (resource.doc_id, resource.workspace_id) if resource.doc_id is not None else (resource.workspace_id, resource.name)


def _kind(resource: Resource) -> str:
    return "doc" if resource.doc_id is not None else "named"


async def acquire(conn: asyncpg.Connection, agent_id: str, resource: Resource, ttl_ms: int) -> Lock:
    """Take the lock for `ttl_ms`, with a new fence. The holder may take it again (a new fence
    and expiry; its older fence stops working). `locked` (details: holder, expires_at) while
    another agent's lock is live; `not_found` for a document not in the workspace."""
    row = await conn.fetchrow(Q[f"lock_{_kind(resource)}_acquire"], *_args(resource), agent_id, ttl_ms)
    if row is not None:
        return _lock(resource, row)
    current = await conn.fetchrow(Q[f"lock_{_kind(resource)}_current"], *_args(resource))
    if current is None and resource.doc_id is not None:
        raise TandemError(ErrorCode.NOT_FOUND)
    details = None
    if current is not None and current["locked_by"] is not None:
        details = {"holder": current["locked_by"], "expires_at": rfc3339(current["lock_expires_at"])}
    raise TandemError(ErrorCode.LOCKED, details=details)


async def renew(conn: asyncpg.Connection, agent_id: str, resource: Resource, fence: int, ttl_ms: int) -> Lock:
    """Extend the holder's live lock to `ttl_ms` from now. `stale_fence` when the lease lapsed,
    another agent holds it, or the fence is an older one."""
    row = await conn.fetchrow(Q[f"lock_{_kind(resource)}_renew"], *_args(resource), agent_id, fence, ttl_ms)
    if row is None:
        raise TandemError(ErrorCode.STALE_FENCE)
    return _lock(resource, row)


async def release(
    conn: asyncpg.Connection, agent_id: str, resource: Resource, fence: int, *, if_expires_at: datetime | None = None
) -> Lock:
    """Release the holder's lock (a lapsed one too, if nobody took it since). `stale_fence` when
    the fence is not the lock's. `if_expires_at`: only if not renewed since (the disconnect
    grace period: a reconnected holder that renewed keeps its lock)."""
    row = await conn.fetchrow(Q[f"lock_{_kind(resource)}_release"], *_args(resource), agent_id, fence, if_expires_at)
    if row is None:
        raise TandemError(ErrorCode.STALE_FENCE)
    return Lock(resource, agent_id, fence, None, None)


async def list_locks(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> list[Lock]:
    """The workspace's live locks, oldest first (documents' and named ones)."""
    rows = await conn.fetch(Q["lock_list"], workspace_id)
    return [_lock(Resource(workspace_id, r["doc_id"], r["name"]), r) for r in rows]
