"""Shared by the execution tests (tests/test_executions*.py): workflows defined in tenant A's
workspace of tests/task_helpers.py, registered agents, and step tasks driven as the server
drives them: every call in a `store.tenant_transaction`, the engine in the task's transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.core.settings import Settings
from server.wire import protocol_agents as pa
from server.workspaces import agents, executions, workflows
from tests.conftest import TENANT_A
from tests.task_helpers import ROLES, Env, request, tx

SEEN_S = 3600.0  # registered agents count as connected for the whole test
SETTINGS = Settings()


async def register(
    env: Env,
    agent: str,
    capabilities: list[str],
    slots: int = 10,
    tenant: uuid.UUID = TENANT_A,
) -> None:
    message = pa.AgentRegister(
        name=agent, capabilities=capabilities, max_concurrent_tasks=slots
    )
    async with tx(env.pool, agent, tenant) as conn:
        await agents.register(conn, agent, message, SEEN_S)


async def define(
    env: Env, name: str, definition: dict[str, Any], agent: str = "olivia"
) -> uuid.UUID:
    async with tx(env.pool, agent) as conn:
        found = await workflows.define(
            conn, agent, ROLES[agent], env.ws_a, name, definition, None, SETTINGS
        )
    return uuid.UUID(found["workflow_id"])


async def start(
    env: Env, workflow_id: uuid.UUID, input_: dict[str, Any] | None = None, agent: str = "olivia",
    version: int | None = None, tenant: uuid.UUID = TENANT_A, workspace_id: uuid.UUID | None = None,
    max_input_bytes: int = SETTINGS.max_execution_input_bytes,
) -> executions.Outcome:  # fmt: skip
    async with tx(env.pool, agent, tenant) as conn:
        return await executions.start(
            conn, agent, ROLES.get(agent), workspace_id or env.ws_a, workflow_id, version, input_ or {}, {},
            max_input_bytes=max_input_bytes, seen_within_s=SEEN_S,
        )  # fmt: skip


async def control(
    env: Env, execution_id: uuid.UUID, action: str, agent: str = "olivia"
) -> executions.Outcome:
    async with tx(env.pool, agent) as conn:
        return await executions.control(
            conn, ROLES.get(agent), env.ws_a, execution_id, action, SEEN_S
        )


async def act(
    env: Env, agent: str, task_id: uuid.UUID, action: str, **fields: Any
) -> executions.Outcome | None:
    async with tx(env.pool, agent) as conn:
        message = request(f"task.{action}", task_id=task_id, **fields)
        _, out = await executions.transition_task(
            conn, agent, ROLES.get(agent), message, SEEN_S
        )
    return out


async def finish(
    env: Env, task: Any, ok: bool = True, **result: Any
) -> executions.Outcome | None:
    """The task's assignee accepts, starts and completes it with `result` (or fails it)."""
    agent = task.assigned_to
    await act(env, agent, task.task_id, "accept")
    await act(env, agent, task.task_id, "start")
    if ok:
        return await act(env, agent, task.task_id, "complete", result=result)
    return await act(
        env, agent, task.task_id, "fail", error=result.get("error", "it broke")
    )


async def execution(
    env: Env, execution_id: uuid.UUID
) -> tuple[executions.Execution, list[Any]]:
    async with tx(env.pool, "olivia") as conn:
        return await executions.get(conn, env.ws_a, execution_id, 1000)


def open_tasks(found: list[Any]) -> list[Any]:
    return [t for t in found if t.status not in ("completed", "failed", "cancelled")]


def step(
    id_: str, *, depends_on: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    extra.setdefault("capability", "write") if "agent" not in extra else None
    task = extra.pop("task", {"title": f"do {id_}"})
    return {"id": id_, "task": task, "depends_on": depends_on or [], **extra}
