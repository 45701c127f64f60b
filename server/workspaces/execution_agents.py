"""Who does a workflow step (docs/protocol.md section 12.9) and the tasks that start it: its
named agent, each of its agents (a collaborative step), or the least-loaded free agent with a
capability from the agent registry (section 12.7) with the delegation that records the choice.
Called by server/workspaces/executions.py inside the engine's transaction.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from server.db.store import Q
from server.workspaces import tasks

ENGINE = "system"  # the from_agent_id of the engine's delegations
STEP_TASK_TYPE = "workflow_step"
_TASK_COLUMNS = tuple(f.name for f in dataclasses.fields(tasks.Task))


async def start_step(
    conn: asyncpg.Connection, execution_id: uuid.UUID, workspace_id: uuid.UUID | None, created_by: str,
    step: Mapping[str, Any], attempt: int, seen_within_s: float,
) -> list[tuple[tasks.Task, tasks.Delegation | None]]:  # fmt: skip
    """Create attempt `attempt` of a step from its task template: one task assigned to its
    named agent, one to each of its `agents` (all on its document), or one to the least-loaded
    active agent with its capability and a free slot (none: left pending), with a delegation."""
    template = step["task"]
    parameters = dict(template.get("parameters", {}))
    if "document_id" in step:
        parameters.setdefault("document_id", step["document_id"])
    capability = step.get("capability")
    # A capability step's agent is claimed by the insert itself (execution_task_create).
    who = [None] if capability is not None else step.get("agents", [step.get("agent")])
    reason = None if capability is None else f"step {step['id']} needs {capability}"
    made = []
    for assignee in who:
        row = dict(await conn.fetchrow(
            Q["execution_task_create"], workspace_id, template["title"], STEP_TASK_TYPE, template.get("description"),
            template.get("priority", "normal"), created_by, assignee, json.dumps(parameters),
            template.get("timeout_s", 3600), execution_id, step["id"], attempt, assignee if "agents" in step else None,
            capability, seen_within_s, reason, ENGINE,
        ))  # fmt: skip
        task = tasks._task({name: row.pop(name) for name in _TASK_COLUMNS})
        delegation = None
        if row["delegation_id"] is not None:
            delegation = tasks.Delegation(task_id=task.task_id, **row)
        made.append((task, delegation))
    return made


async def pick(
    conn: asyncpg.Connection,
    capability: str,
    seen_within_s: float,
    exclude: str | None = None,
) -> tuple[str | None, str | None]:
    """The agent other than `exclude` to give a `capability` step to and the delegation type:
    `automatic` when it was the only free one, `load_balance` when chosen among several;
    (None, None): none is free. The agent chosen stays locked to the end of the transaction
    (claim_agent_slot, migration 0031), so a slot counted free is not filled twice; picks of
    other agents do not wait for it."""
    row = await conn.fetchrow(
        Q["execution_claim_agent"], capability, seen_within_s, exclude
    )
    if row is None:
        return None, None
    return row["agent_id"], "load_balance" if row["candidates"] > 1 else "automatic"


async def delegate(
    conn: asyncpg.Connection, task: tasks.Task, to: str | None, kind: str, reason: str
) -> tasks.Delegation:
    row = await conn.fetchrow(
        Q["task_insert_delegation"], task.task_id, ENGINE, to, kind, reason
    )
    return tasks.Delegation(**dict(row))
