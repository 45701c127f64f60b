"""Workflow definitions of a workspace (docs/protocol.md section 12.8): define (a new workflow or
its next version), get, list, deactivate; and their executions (section 12.9): start (a `Run`),
pause, resume, cancel, get, list and events. Imports nothing of the server.

A definition the server refuses raises `InvalidWorkflow`, whose `step`, `pointer` (a JSON pointer
into the definition) and `reason` say what to fix. Defining and deactivating are for the
workspace's owner and admins (`Forbidden` otherwise).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from tandem_client import wire
from tandem_client.coordination import EventStream, Streams
from tandem_client.executions import ExecutionEvent, Run

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace

WorkflowRef = str | wire.Workflow | wire.WorkflowSummary


def workflow_id_of(workflow: WorkflowRef) -> str:
    return workflow if isinstance(workflow, str) else workflow.workflow_id


class Workflows:
    """`ws.workflows`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._streams: Streams[ExecutionEvent] = Streams(workspace.client.options.max_event_queue)

    async def define(
        self,
        name: str,
        type: str,  # noqa: A002 - the definition's own field name
        steps: builtins.list[dict[str, Any]],
        config: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> wire.Workflow:
        """`workflow.define`: the workflow `name` at version 1, or its next version. Not retried
        after a dropped connection (`ConnectionLost`: a version may or may not have been added)."""
        self.workspace._check()
        definition = wire.given(type=type, steps=steps, config=config)
        frame = await self.workspace.client._conn.request(
            "workflow.define",
            {"workspace_id": self.workspace.workspace_id, "name": name, "definition": definition, **wire.given(description=description)},
        )
        return wire.Workflow.from_wire(frame["workflow"])

    async def get(self, workflow: WorkflowRef, version: int | None = None) -> wire.Workflow:
        """`workflow.get`: that version (None: the latest)."""
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "workflow_id": workflow_id_of(workflow)}
        frame = await self.workspace.client._idempotent("workflow.get", {**fields, **wire.given(version=version)})
        return wire.Workflow.from_wire(frame["workflow"])

    async def list(self, include_inactive: bool = False, limit: int | None = None) -> builtins.list[wire.WorkflowSummary]:
        """`workflow.list`: active workflows by name (and inactive ones if asked)."""
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "include_inactive": include_inactive}
        frame = await self.workspace.client._idempotent("workflow.list", {**fields, **wire.given(limit=limit)})
        return [wire.WorkflowSummary.from_wire(w) for w in frame["workflows"]]

    async def deactivate(self, workflow: WorkflowRef) -> wire.WorkflowSummary:
        """`workflow.deactivate`: it starts no new executions; defining it again reactivates it."""
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "workflow_id": workflow_id_of(workflow)}
        frame = await self.workspace.client._idempotent("workflow.deactivate", fields)
        return wire.WorkflowSummary.from_wire(frame["workflow"])

    # --- executions (section 12.9) -----------------------------------------------------------

    async def start(
        self,
        workflow: WorkflowRef,
        input: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> Run:
        """`workflow.start`: run that version (None: the latest) with `input`; the ready steps'
        tasks exist when this returns. Not retried after a dropped connection."""
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "workflow_id": workflow_id_of(workflow)}
        frame = await self.workspace.client._conn.request(
            "workflow.start", {**fields, **wire.given(input=input, context=context, version=version)}
        )
        return Run(self, wire.Execution.from_wire(frame["execution"]))

    async def pause(self, execution_id: str) -> wire.Execution:
        """No new step tasks start until `resume`; outcomes meanwhile are recorded."""
        return await self._control("pause", execution_id)

    async def resume(self, execution_id: str) -> wire.Execution:
        return await self._control("resume", execution_id)

    async def cancel(self, execution_id: str) -> wire.Execution:
        """Cancels the execution and its open tasks."""
        return await self._control("cancel", execution_id)

    async def execution(self, execution_id: str) -> tuple[wire.Execution, builtins.list[wire.Task]]:
        """`workflow.execution.get`: the execution and its step tasks, oldest first."""
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "execution_id": execution_id}
        frame = await self.workspace.client._idempotent("workflow.execution.get", fields)
        return wire.Execution.from_wire(frame["execution"]), [wire.Task.from_wire(t) for t in frame["tasks"]]

    async def executions(
        self,
        workflow: WorkflowRef | None = None,
        status: str | builtins.list[str] | None = None,
        limit: int | None = None,
    ) -> builtins.list[wire.Execution]:
        """`workflow.execution.list`: the workspace's executions, newest first."""
        self.workspace._check()
        fields = wire.given(
            workspace_id=self.workspace.workspace_id,
            workflow_id=None if workflow is None else workflow_id_of(workflow),
            status=[status] if isinstance(status, str) else status,
            limit=limit,
        )
        frame = await self.workspace.client._idempotent("workflow.execution.list", fields)
        return [wire.Execution.from_wire(e) for e in frame["executions"]]

    def events(self, max_queue: int | None = None) -> EventStream[ExecutionEvent]:
        """`workflow.execution.changed` events of this workspace from now on (bounded, oldest
        dropped; see `EventStream`)."""
        return self._streams.new(max_queue)

    async def _control(self, action: str, execution_id: str) -> wire.Execution:
        self.workspace._check()
        fields = {"workspace_id": self.workspace.workspace_id, "execution_id": execution_id}
        frame = await self.workspace.client._conn.request(f"workflow.{action}", fields)
        return wire.Execution.from_wire(frame["execution"])

    def _on_event(self, event: ExecutionEvent) -> None:
        self._streams.put(event)
