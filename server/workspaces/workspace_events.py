"""Events of tasks and workflow executions (docs/protocol.md#126), built from their models.

Apart from server/workspaces/coordination.py, which keeps the node's side (rooms' lock views, the
sweep), so the `tandem` commands that change tasks and executions build the same events without
loading the web stack.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.cluster.events import Event
from server.wire import protocol_coordination as pc
from server.wire import protocol_executions as pe
from server.workspaces import executions


def task_event(
    tenant_id: uuid.UUID,
    task: Any,
    action: str,
    agent_id: str,
    delegation: Any = None,
    also: frozenset[str] = frozenset(),
) -> Event:
    """To the task's workspace, its creator and its assignee (and `also`: a previous assignee)."""
    message = pc.TaskChanged(
        task=task.to_wire(),
        action=action,
        agent_id=agent_id,
        delegation=None if delegation is None else delegation.to_wire(),
    )
    agents = (
        frozenset(
            {task.created_by} | ({task.assigned_to} if task.assigned_to else set())
        )
        | also
    )
    return Event(
        tenant_id,
        task.workspace_id,
        message,
        agents,
        ref=("task", str(task.task_id), "task"),
    )


def execution_events(
    tenant_id: uuid.UUID, out: executions.Outcome, agent_id: str
) -> list[Event]:
    """One engine run's events, in the order they happened: each step task it created, gave out
    or cancelled (`task.changed`, by `system`), then `workflow.execution.changed` to the
    workspace and the agent that started the execution."""
    found = [
        task_event(tenant_id, task, action, executions.ENGINE, delegation)
        for task, action, delegation in out.tasks
    ]
    ex = out.execution
    if ex is not None and ex.workspace_id is not None and out.action is not None:
        message = pe.WorkflowExecutionChanged(
            execution=ex.to_wire(),
            action=str(out.action),
            previous_status=out.previous_status,
            agent_id=agent_id,
        )
        ref = ("execution", str(ex.execution_id), "execution")
        found.append(
            Event(
                tenant_id,
                ex.workspace_id,
                message,
                frozenset({ex.triggered_by}),
                ref=ref,
            )
        )
    return found
