"""Creating tasks (server/workspaces/tasks.py) against real PostgreSQL, as the application role:
defaults and wire shape, the values the schema refuses, and who may create where
(docs/protocol.md section 12.4).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from server.core.errors import ErrorCode
from server.workspaces import directory as ws
from tests.conftest import TENANT_A, TENANT_B
from tests.task_helpers import (
    create,
    env,  # noqa: F401  (the fixture the tests take)
    field_of,
    get,
    refused,
    tx,
)

# --- create ----------------------------------------------------------------------------------


async def test_create_returns_the_task_with_defaults_and_wire_shape(env) -> None:
    task = await create(env, "alice", parameters={"repo": "tandem", "depth": 2}, description="look closely")
    assert (task.status, task.priority, task.task_type, task.created_by) == ("pending", "normal", "general", "alice")
    assert (task.assigned_to, task.assigned_at, task.started_at, task.completed_at) == (None, None, None, None)
    assert (task.max_retries, task.retry_count, task.timeout_s) == (3, 0, 3600)
    assert task.parameters == {"repo": "tandem", "depth": 2} and task.result is None
    assert task.workspace_id == env.ws_a

    wire = task.to_wire()
    assert list(wire) == [
        "task_id", "workspace_id", "title", "task_type", "description", "status", "priority", "created_by",
        "assigned_to", "parent_task_id", "parameters", "result", "error", "max_retries", "retry_count",
        "timeout_s", "created_at", "assigned_at", "started_at", "completed_at", "updated_at", "execution_id", "step_id",
        "attempt",
    ]  # fmt: skip
    assert wire["task_id"] == str(task.task_id) and wire["workspace_id"] == str(env.ws_a)
    assert wire["created_at"].endswith("Z") and datetime.fromisoformat(wire["created_at"]) == task.created_at
    assert wire["assigned_at"] is None and wire["parent_task_id"] is None


async def test_create_with_assign_to_starts_assigned(env) -> None:
    task = await create(env, "olivia", assign_to="alice", priority="high", task_type="review", timeout_s=60)
    assert (task.status, task.assigned_to, task.priority, task.task_type, task.timeout_s) == (
        "assigned", "alice", "high", "review", 60
    )
    assert task.assigned_at is not None and task.to_wire()["assigned_at"].endswith("Z")
    assert await get(env, task.task_id) == task


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"title": "  "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"task_type": "t" * 101}, "task_type"),
        ({"priority": "urgent"}, "priority"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"parameters": ["not", "an", "object"]}, "parameters"),
        ({"parameters": {"nan": float("nan")}}, "parameters"),
    ],
)
async def test_create_refuses_values_the_schema_refuses_naming_the_field(env, kwargs, field) -> None:
    error = await refused(create(env, **kwargs), ErrorCode.INVALID_MESSAGE)
    assert field_of(error) == field


async def test_create_refuses_an_int_beyond_the_column(env) -> None:
    error = await refused(create(env, timeout_s=2**40), ErrorCode.INVALID_MESSAGE)
    assert field_of(error) == "timeout_s"


async def test_create_needs_a_live_workspace_of_this_tenant_and_a_parent_of_it(env) -> None:
    await refused(create(env, workspace_id=uuid.uuid4()), ErrorCode.NOT_FOUND)
    await refused(create(env, workspace_id=env.ws_b), ErrorCode.NOT_FOUND)  # tenant B's
    await refused(create(env, parent_task_id=uuid.uuid4()), ErrorCode.NOT_FOUND)

    async with tx(env.pool, "olivia") as conn:
        other_ws = (await ws.create_workspace(conn, TENANT_A, "olivia", "Elsewhere")).workspace_id
    foreign_parent = await create(env, workspace_id=other_ws)
    await refused(create(env, parent_task_id=foreign_parent.task_id), ErrorCode.NOT_FOUND)
    b_parent = await create(env, "beth", TENANT_B)
    await refused(create(env, parent_task_id=b_parent.task_id), ErrorCode.NOT_FOUND)

    parent = await create(env)
    child = await create(env, parent_task_id=parent.task_id, title="Part one")
    assert child.parent_task_id == parent.task_id
    assert child.to_wire()["parent_task_id"] == str(parent.task_id)

    async with tx(env.pool, "olivia") as conn:
        assert await conn.fetchval("SELECT soft_delete_task($1)", parent.task_id)
    await refused(create(env, parent_task_id=parent.task_id), ErrorCode.NOT_FOUND)
    await env.admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", other_ws)
    await refused(create(env, workspace_id=other_ws), ErrorCode.NOT_FOUND)


async def test_create_needs_a_writing_member(env) -> None:
    await refused(create(env, "vera"), ErrorCode.FORBIDDEN)
    await refused(create(env, "stranger"), ErrorCode.NOT_MEMBER)
