"""Workflow definitions: the data side of docs/protocol.md section 12.8 (define, get, list,
deactivate). Executions are not here.

Every function takes an asyncpg connection already inside `store.tenant_transaction` (RLS scopes
it to one tenant) and the workspace the session joined; a workflow of another workspace or
tenant is `not_found`. Definitions are checked by `workflow_rules` before anything is written;
SQL is `server/db/sql/workflows.sql`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.core.settings import Settings
from server.db.store import Q
from server.workspaces import workflow_rules
from server.workspaces.directory import rfc3339
from server.workspaces.members import MANAGER_ROLES


def _may_define(role: str | None) -> None:
    """Defining and deactivating belong to the workspace's owner and admins; any member reads."""
    if role not in MANAGER_ROLES:
        raise TandemError(
            ErrorCode.FORBIDDEN,
            "Only the workspace's owner and admins define workflows.",
        )


def workflow_wire(row: asyncpg.Record) -> dict[str, Any]:
    """A workflow object (full, with steps and config) or summary, as the wire carries it."""
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key in ("steps", "config"):
            value = json.loads(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        elif hasattr(value, "astimezone"):
            value = rfc3339(value)
        out[key] = value
    return out


async def define(
    conn: asyncpg.Connection,
    agent_id: str,
    role: str | None,
    workspace_id: uuid.UUID,
    name: str,
    definition: Any,
    description: str | None,
    settings: Settings,
) -> dict[str, Any]:
    """Create workflow `name` in the workspace, or add its next version; returns that version."""
    _may_define(role)
    checked = workflow_rules.check_definition(
        definition,
        max_steps=settings.max_workflow_steps,
        max_bytes=settings.max_workflow_bytes,
    )
    await _check_capabilities(conn, checked["steps"])
    row = await conn.fetchrow(
        Q["workflow_define"], workspace_id, name, checked["type"], json.dumps(checked["steps"]),
        json.dumps(checked["config"]), description, agent_id,
    )  # fmt: skip
    return await get(conn, workspace_id, row["workflow_id"], row["version"])


async def _check_capabilities(conn: asyncpg.Connection, steps: list[dict[str, Any]]) -> None:
    """A step's capability must be one a registered agent of the tenant declares (else no agent
    could ever be given the step): the first that none does is refused, naming its step."""
    wanted = [s["capability"] for s in steps if "capability" in s]
    if not wanted:
        return
    missing = {r["c"] for r in await conn.fetch(Q["agent_capabilities_missing"], sorted(set(wanted)))}
    for i, step in enumerate(steps):
        if step.get("capability") in missing:
            raise workflow_rules.invalid(
                f"no registered agent has capability {step['capability']!r}",
                workflow_rules.pointer("steps", i, "capability"),
                step["id"],
            )


async def get(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID | None,
    workflow_id: uuid.UUID,
    version: int | None,
) -> dict[str, Any]:
    """Version `version` (None: the latest) of a workflow of the workspace (None: of any)."""
    row = await conn.fetchrow(Q["workflow_get"], workflow_id, workspace_id, version)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return workflow_wire(row)


async def list_workflows(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    include_inactive: bool,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Summaries of the workspace's workflows by name, and whether more were left out."""
    rows = await conn.fetch(
        Q["workflow_list"], workspace_id, include_inactive, limit + 1
    )
    return [workflow_wire(r) for r in rows[:limit]], len(rows) > limit


async def deactivate(
    conn: asyncpg.Connection,
    role: str | None,
    workspace_id: uuid.UUID,
    workflow_id: uuid.UUID,
) -> dict[str, Any]:
    """Mark the workflow inactive (it starts no executions; defining it again reactivates it)."""
    _may_define(role)
    row = await conn.fetchrow(Q["workflow_deactivate"], workflow_id, workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return workflow_wire(row)
