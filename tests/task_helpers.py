"""Shared by the task tests (tests/test_task_*.py): tenant A's workspace with an agent in every
role and tenant B's, as the `env` fixture, and calls made as the server makes them.

Every call but the sweep's listing of tenants runs inside `store.tenant_transaction`, so RLS
applies as in the server; the superuser connection (`admin`) only moves clocks and statuses
behind the app's back and reads the audit trail.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.database import create_pool
from server.wire import protocol
from server.wire import protocol_coordination as pc
from server.workspaces import directory as ws
from server.workspaces import tasks
from tests.conftest import TENANT_A, TENANT_B

# Tenant A's workspace: olivia owns it, adam administers it, vera only reads. beth owns tenant B's.
ROLES = {
    "olivia": "owner", "adam": "admin", "alice": "member", "bob": "member", "carl": "member",
    "dave": "member", "vera": "viewer", "beth": "owner",
}  # fmt: skip
CLIENT_IP = "198.51.100.7"
LIMIT = 100


@dataclass
class Env:
    pool: asyncpg.Pool
    admin: asyncpg.Connection
    ws_a: uuid.UUID
    ws_b: uuid.UUID


@pytest.fixture
async def env(db, admin) -> AsyncIterator[Env]:
    pool = await create_pool(db.app_url, min_size=1, max_size=8)
    try:
        async with tx(pool, "olivia") as conn:
            ws_a = (await ws.create_workspace(conn, TENANT_A, "olivia", "Build", visibility="team")).workspace_id
            for agent, role in ROLES.items():
                if agent not in ("olivia", "beth"):
                    await ws.add_member(conn, ws_a, agent, role)
        async with tx(pool, "beth", TENANT_B) as conn:
            ws_b = (await ws.create_workspace(conn, TENANT_B, "beth", "Other")).workspace_id
        yield Env(pool, admin, ws_a, ws_b)
    finally:
        await pool.close()


def tx(pool: asyncpg.Pool, agent: str, tenant: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant, agent, CLIENT_IP)


def request(kind: str, **fields: Any) -> Any:
    """`fields` read off the wire as the server reads them (server/wire/protocol.py, where task input
    is validated): the message, or the typed error the session would send."""
    message = protocol.parse(json.dumps({"type": kind, **fields}, default=str), 1 << 20)
    if isinstance(message, protocol.ProtocolError):
        raise TandemError(message.code, details=message.details)
    return message


async def create(env: Env, agent: str = "olivia", tenant: uuid.UUID = TENANT_A, **kwargs: Any) -> tasks.Task:
    kwargs.setdefault("workspace_id", env.ws_a if tenant == TENANT_A else env.ws_b)
    kwargs.setdefault("title", "Review the plan")
    async with tx(env.pool, agent, tenant) as conn:
        return await tasks.create_task(conn, agent, ROLES.get(agent), request("task.create", **kwargs))


async def act(
    env: Env, agent: str, task_id: uuid.UUID, action: str, tenant: uuid.UUID = TENANT_A, **kwargs: Any
) -> tasks.TaskChange:
    """`action` with those of `kwargs` its message takes (`to_agent_id` is its `agent_id`)."""
    if "to_agent_id" in kwargs:
        kwargs["agent_id"] = kwargs.pop("to_agent_id")
    model = pc.TASK_ACTIONS.get(action)
    if model is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in model.model_fields}
    message = request(f"task.{action}", task_id=task_id, **kwargs)
    async with tx(env.pool, agent, tenant) as conn:
        return await tasks.transition(conn, agent, ROLES.get(agent), message)


async def get(env: Env, task_id: uuid.UUID, tenant: uuid.UUID = TENANT_A) -> tasks.Task:
    async with tx(env.pool, "olivia", tenant) as conn:
        return await tasks.get_task(conn, task_id)


async def refused(call: Awaitable[Any], code: ErrorCode) -> TandemError:
    with pytest.raises(TandemError) as info:
        await call
    assert info.value.code is code, info.value
    return info.value


def field_of(error: TandemError) -> str:
    assert error.details is not None
    return error.details["errors"][0]["field"]


async def audit_count(env: Env, record_id: uuid.UUID) -> int:
    return await env.admin.fetchval("SELECT count(*) FROM audit_log WHERE record_id = $1", record_id)


async def walk(env: Env, task_id: uuid.UUID, *steps: tuple[str, str, dict[str, Any]]) -> tasks.Task:
    """Apply (agent, action, kwargs) steps in order; returns the task after the last."""
    change = None
    for agent, action, kwargs in steps:
        change = await act(env, agent, task_id, action, **kwargs)
    assert change is not None
    return change.task


def started(assignee: str) -> list[tuple[str, str, dict[str, Any]]]:
    """From pending: olivia assigns `assignee`, who accepts and starts."""
    return [("olivia", "assign", {"to_agent_id": assignee}), (assignee, "accept", {}), (assignee, "start", {})]
