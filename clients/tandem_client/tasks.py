"""Tasks and delegations (docs/protocol.md section 12.4): create, move along the status table,
query, and a stream of `task.changed` events.

Every action returns the task as the server has it after the change (`wire.Task`). Actions are
not retried after a dropped connection (`ConnectionLost`: they may or may not have happened;
`get` tells); queries are. Imports nothing of the server.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem_client import wire
from tandem_client.coordination import EventStream, Streams
from tandem_client.work import AssignedTasks

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace

TaskRef = str | wire.Task
CREATE_FIELDS = frozenset(
    {"task_type", "description", "priority", "parameters", "parent_task_id", "timeout_s", "max_retries", "assign_to"}
)


@dataclass(frozen=True)
class TaskEvent:
    """A `task.changed` event: `action` is `create`, an action of the status table, or
    `timeout` (by the server's sweep, `agent_id` "system"); `task` is the task after it."""

    task: wire.Task
    action: str
    agent_id: str | None
    delegation: wire.Delegation | None
    raw: wire.Frame = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, frame: wire.Frame) -> TaskEvent:
        delegation = frame.get("delegation")
        return cls(
            wire.Task.from_wire(frame["task"]),
            str(frame.get("action")),
            frame.get("agent_id"),
            wire.Delegation.from_wire(delegation) if isinstance(delegation, dict) else None,
            frame,
        )


def task_id_of(task: TaskRef) -> str:
    return task.task_id if isinstance(task, wire.Task) else task


class Tasks:
    """`ws.tasks`. Status moves and who may make them: docs/protocol.md section 12.4; a move the
    table does not allow raises `InvalidTransition` (`.status`, `.action`). Each method
    takes a task id or a `Task`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._streams: Streams[TaskEvent] = Streams(workspace.client.options.max_event_queue)

    async def create(self, title: str, **fields: Any) -> wire.Task:
        """`task.create`; `fields`: task_type, description, priority, parameters (a dict),
        parent_task_id, timeout_s, max_retries, assign_to (an agent id)."""
        unknown = set(fields) - CREATE_FIELDS
        if unknown:
            raise TypeError(f"unknown task fields: {sorted(unknown)}")
        self.workspace._check()
        frame = await self.workspace.client._conn.request(
            "task.create", {"workspace_id": self.workspace.workspace_id, "title": title, **wire.given(**fields)}
        )
        return wire.Task.from_wire(frame["task"])

    async def assign(self, task: TaskRef, agent_id: str) -> wire.Task:
        return await self._act("assign", task, agent_id=agent_id)

    async def claim(self, task: TaskRef) -> wire.Task:
        """Assign the task to this agent (pending, rejected or timed-out tasks). Of concurrent
        claims one wins; the others get `InvalidTransition`."""
        agent_id = self.workspace.client.agent_id
        assert agent_id is not None
        return await self.assign(task, agent_id)

    async def accept(self, task: TaskRef) -> wire.Task:
        return await self._act("accept", task)

    async def reject(self, task: TaskRef, reason: str | None = None) -> wire.Task:
        return await self._act("reject", task, reason=reason)

    async def start(self, task: TaskRef) -> wire.Task:
        return await self._act("start", task)

    async def complete(self, task: TaskRef, result: dict[str, Any] | None = None) -> wire.Task:
        return await self._act("complete", task, result=result)

    async def fail(self, task: TaskRef, error: str) -> wire.Task:
        """With retries left the task goes back to `pending` (unassigned) instead of `failed`."""
        return await self._act("fail", task, error=error)

    async def cancel(self, task: TaskRef, reason: str | None = None) -> wire.Task:
        return await self._act("cancel", task, reason=reason)

    async def delegate(
        self, task: TaskRef, agent_id: str, delegation_type: str = "manual", reason: str | None = None
    ) -> wire.Task:
        return await self._act("delegate", task, agent_id=agent_id, delegation_type=delegation_type, reason=reason)

    async def get(self, task: TaskRef) -> tuple[wire.Task, builtins.list[wire.Delegation]]:
        """The task and its delegation history, oldest first."""
        self.workspace._check()
        frame = await self.workspace.client._idempotent("task.get", {"task_id": task_id_of(task)})
        return wire.Task.from_wire(frame["task"]), [wire.Delegation.from_wire(d) for d in frame["delegations"]]

    async def list(
        self,
        *,
        assigned_to: str | None = None,
        created_by: str | None = None,
        status: str | builtins.list[str] | None = None,
        priority: str | builtins.list[str] | None = None,
        parent_task_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[wire.Task]:
        """The workspace's tasks matching every filter given (`status`, `priority`: one or a
        list), critical first, then oldest; at most `limit` (server default 100)."""
        self.workspace._check()
        fields = wire.given(
            workspace_id=self.workspace.workspace_id, assigned_to=assigned_to, created_by=created_by,
            status=[status] if isinstance(status, str) else status,
            priority=[priority] if isinstance(priority, str) else priority,
            parent_task_id=parent_task_id, limit=limit,
        )  # fmt: skip
        frame = await self.workspace.client._idempotent("task.list", fields)
        return [wire.Task.from_wire(t) for t in frame["tasks"]]

    async def mine(self, **filters: Any) -> builtins.list[wire.Task]:
        """`list(assigned_to=<this agent>, ...)`."""
        return await self.list(assigned_to=self.workspace.client.agent_id, **filters)

    async def stats(self) -> dict[str, Any]:
        """`task.stats`: {"workload": [...], "statistics": [...]} (section 12.4)."""
        self.workspace._check()
        frame = await self.workspace.client._idempotent("task.stats", {"workspace_id": self.workspace.workspace_id})
        return {"workload": frame["workload"], "statistics": frame["statistics"]}

    def assigned_to_me(self, *, relist_s: float = 30.0, max_queue: int | None = None) -> AssignedTasks:
        """The tasks assigned to this agent here, open ones first, then each new assignment as
        it happens (tandem_client/work.py): `async with ws.tasks.assigned_to_me() as mine:
        async for task in mine:` start (from `assigned` it accepts too), complete."""
        return AssignedTasks(self, relist_s=relist_s, max_queue=max_queue)

    def events(self, max_queue: int | None = None) -> EventStream[TaskEvent]:
        """`task.changed` events of this workspace from now on, this client's own changes
        included (joined with `task_events="own"`: only this agent's tasks'; bounded, oldest
        dropped; see `EventStream`):
        `async with ws.tasks.events() as events: async for event in events:`."""
        return self._streams.new(max_queue)

    async def _act(self, action: str, task: TaskRef, **fields: Any) -> wire.Task:
        self.workspace._check()
        frame = await self.workspace.client._conn.request(f"task.{action}", {"task_id": task_id_of(task), **wire.given(**fields)})
        return wire.Task.from_wire(frame["task"])

    def _on_event(self, event: TaskEvent) -> None:
        self._streams.put(event)
