"""The agent registry: the data side of docs/protocol.md section 12.7.

Every function takes an asyncpg connection already inside `store.tenant_transaction`, so RLS
scopes it to one tenant; SQL lives in `server/db/sql/agents.sql`. The listed status is derived in
SQL (`agent_listed_status`, migration 0023) from the status an agent set and when a connection
of it was last seen on any node, within `seen_within_s` (the presence TTL). An agent that
connects but never registered has no row: it is not listed, and its heartbeats change nothing.
Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.store import Q
from server.wire import protocol_agents as pa
from server.workspaces.directory import rfc3339

MAX_SEEN_PER_STATEMENT = 1000  # agent ids one heartbeat statement carries


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    name: str
    kind: str
    capabilities: list[str]
    max_concurrent_tasks: int
    metadata: dict[str, Any]
    status: str  # as listed: active, inactive, error or maintenance
    last_seen_at: datetime | None
    load: int  # open tasks assigned to it (assigned, accepted, in progress)
    tasks_completed: int
    tasks_failed: int
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime

    @property
    def free_slots(self) -> int:
        return max(self.max_concurrent_tasks - self.load, 0)

    def to_wire(self) -> dict[str, Any]:
        """The agent object (docs/protocol.md#127): fields in order, then free_slots; times in RFC 3339."""
        wire: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            wire[field.name] = rfc3339(value) if isinstance(value, datetime) else value
        wire["free_slots"] = self.free_slots
        return wire


_FIELDS = {
    "agent_capabilities_bounded": (
        "capabilities",
        f"At most {pa.MAX_CAPABILITIES} capabilities",
    ),
    "agent_metadata_bounded": (
        "metadata",
        f"At most {pa.MAX_METADATA_BYTES} bytes as JSON",
    ),
    "agent_max_concurrent_tasks_positive": (
        "max_concurrent_tasks",
        "Must be at least 1",
    ),
    "agent_name_not_blank": ("name", "Must not be only whitespace"),
}


async def register(
    conn: asyncpg.Connection,
    agent_id: str,
    request: pa.AgentRegister,
    seen_within_s: float,
) -> Agent:
    """Register `agent_id` (the caller) as `request` describes, or update its registration;
    idempotent. A status it set and its health counters stay. Seen now."""
    with store.input_errors(_FIELDS):
        row = await conn.fetchrow(
            Q["agent_register"], seen_within_s, agent_id, request.name, request.kind, request.capabilities,
            request.max_concurrent_tasks, json.dumps(request.metadata),
        )  # fmt: skip
    return _agent(row)


async def set_status(
    conn: asyncpg.Connection, agent_id: str, status: str, seen_within_s: float
) -> Agent:
    """Set `agent_id`'s own status; `active` ends a maintenance or error. Never registered: `not_found`."""
    with store.input_errors(_FIELDS):
        row = await conn.fetchrow(
            Q["agent_set_status"], seen_within_s, agent_id, status
        )
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _agent(row)


async def list_agents(
    conn: asyncpg.Connection,
    seen_within_s: float,
    *,
    capability: str | None = None,
    statuses: Sequence[str] | None = None,
    limit: int = 100,
) -> tuple[list[Agent], bool]:
    """The tenant's agents with `capability` and a listed status in `statuses` (None: any), by
    agent id; at most `limit`, the flag is true when there were more."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    statuses = None if statuses is None else list(statuses)
    rows = await conn.fetch(
        Q["agent_list"], seen_within_s, capability, statuses, limit + 1
    )
    return [_agent(r) for r in rows[:limit]], len(rows) > limit


async def seen(conn: asyncpg.Connection, agent_ids: Sequence[str]) -> None:
    """The heartbeat: these agents of the current tenant have a connection now. One statement
    for at most MAX_SEEN_PER_STATEMENT ids (the caller splits larger sets)."""
    if len(agent_ids) > MAX_SEEN_PER_STATEMENT:
        raise ValueError(f"at most {MAX_SEEN_PER_STATEMENT} agent ids per statement")
    if agent_ids:
        await conn.execute(Q["agent_seen"], list(agent_ids))


def _agent(row: Mapping[str, Any]) -> Agent:
    values = dict(row)
    values["metadata"] = json.loads(values["metadata"])
    values["capabilities"] = list(values["capabilities"])
    return Agent(**values)
