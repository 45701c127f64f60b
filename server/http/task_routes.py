"""Tasks over HTTP (docs/http.md): create, list, get, and each action of the agent endpoint's
`task.*` requests (docs/protocol.md#124), read as those very messages (server/http/wire_bodies.py)
and carried out by the same code (server/workspaces/tasks.py, executions.py), with the same
roles and refusals. Each change publishes its `task.changed` event in its transaction (and a
workflow step's execution events with it) and delivers it on commit, as the agent endpoint does.

The caller must be a member of the task's workspace (`not_member`, as a session that has not
joined is answered), and changes need a role that writes (`forbidden`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.http.access import member_of, node_of, principal, transaction
from server.http.models import TaskDetail, TaskList, TaskOne
from server.http.problems import PROBLEMS, WRITE_PROBLEMS
from server.http.wire_bodies import body_schema, json_object, read_message
from server.wire import protocol_coordination as pc
from server.workspaces import executions, tasks
from server.workspaces.coordination import task_event
from server.workspaces.workspace_events import execution_events

router = APIRouter(responses={**PROBLEMS, **WRITE_PROBLEMS}, tags=["tasks"])
Caller = Annotated[Principal, Depends(principal)]
TASKS = "/workspaces/{workspace_id}/tasks"
TASK = "/tasks/{task_id}"


@router.post(
    TASKS,
    status_code=201,
    response_model=TaskOne,
    summary="Create a task",
    openapi_extra=body_schema(pc.TaskCreate, "workspace_id"),
)
async def create_task(
    request: Request, response: Response, workspace_id: uuid.UUID, who: Caller
) -> TaskOne:
    """As `task.create`: `pending`, or `assigned` with `assign_to`."""
    msg = read_message(
        request, pc.TaskCreate, await json_object(request), workspace_id=workspace_id
    )
    node = node_of(request)
    async with transaction(request, who) as conn:
        member = await member_of(conn, who.agent_id, workspace_id, write=True)
        task = await tasks.create_task(conn, who.agent_id, member.role, msg)
        event = task_event(who.tenant_id, task, "create", who.agent_id)
        await node.coordination.publish(conn, event)
    node.coordination.deliver(event)
    root = request.scope.get("root_path", "")
    response.headers["Location"] = f"{root}/tasks/{task.task_id}"
    return TaskOne(task=task.to_wire())


@router.get(TASKS, response_model=TaskList, summary="A workspace's tasks")
async def list_tasks(
    request: Request,
    workspace_id: uuid.UUID,
    who: Caller,
    assigned_to: str | None = None,
    created_by: str | None = None,
    status: Annotated[list[str] | None, Query(description="Any of these")] = None,
    priority: Annotated[list[str] | None, Query(description="Any of these")] = None,
    parent_task_id: uuid.UUID | None = None,
    limit: int | None = None,
) -> TaskList:
    """The filters of `task.list`, each repeatable one (`status`, `priority`) given once per
    value; critical first, then oldest first."""
    msg = read_message(
        request, pc.TaskList, {},
        workspace_id=workspace_id, assigned_to=assigned_to, created_by=created_by,
        status=status, priority=priority, parent_task_id=parent_task_id, limit=limit,
    )  # fmt: skip
    async with transaction(request, who) as conn:
        await member_of(conn, who.agent_id, workspace_id, write=False)
        found, truncated = await tasks.list_tasks(conn, msg)
    return TaskList(
        workspace_id=workspace_id,
        tasks=[t.to_wire() for t in found],
        truncated=truncated,
    )


@router.get(TASK, response_model=TaskDetail, summary="A task and its delegations")
async def get_task(request: Request, task_id: uuid.UUID, who: Caller) -> TaskDetail:
    node = node_of(request)
    async with transaction(request, who) as conn:
        task = await tasks.get_task(conn, task_id)
        await member_of(conn, who.agent_id, _workspace_of(task), write=False)
        history = await tasks.delegations(conn, task_id, node.settings.max_list_items)
    return TaskDetail(task=task.to_wire(), delegations=[d.to_wire() for d in history])


def _workspace_of(task: tasks.Task) -> uuid.UUID:
    """A task without a workspace (older than migration 0017) has no members: `not_member`."""
    if task.workspace_id is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    return task.workspace_id


async def _act(
    request: Request, who: Principal, model: type[Any], task_id: uuid.UUID
) -> TaskOne:
    msg = read_message(request, model, await json_object(request), task_id=task_id)
    action = msg.type.removeprefix("task.")
    node = node_of(request)
    async with transaction(request, who) as conn:
        task = await tasks.get_task(conn, task_id)
        member = await member_of(conn, who.agent_id, _workspace_of(task), write=True)
        # A workflow step's task advances its execution in this same transaction.
        change, run = await executions.transition_task(
            conn, who.agent_id, member.role, msg, node.settings.presence_ttl_s
        )
        previous = {change.previous.assigned_to} - {None, change.task.assigned_to}
        event = task_event(
            who.tenant_id, change.task, action, who.agent_id,
            change.delegation, frozenset(previous),
        )  # fmt: skip
        run_events = (
            [] if run is None else execution_events(who.tenant_id, run, who.agent_id)
        )
        await node.coordination.publish(conn, event, *run_events)
    node.coordination.deliver(event)
    for run_event in run_events:
        node.coordination.deliver(run_event)
    return TaskOne(task=change.task.to_wire())


def _action_route(action: str, model: type[Any]) -> None:
    async def act(request: Request, task_id: uuid.UUID, who: Caller) -> TaskOne:
        return await _act(request, who, model, task_id)

    act.__name__ = f"task_{action}"
    router.post(
        f"{TASK}/{action}",
        response_model=TaskOne,
        summary=f"Task action: {action} (as `task.{action}`)",
        openapi_extra=body_schema(model, "task_id"),
    )(act)


for _action, _model in pc.TASK_ACTIONS.items():
    _action_route(_action, _model)
