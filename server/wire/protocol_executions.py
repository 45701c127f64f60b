"""Messages of workflow executions (docs/protocol.md section 12.9): start, pause, resume, cancel,
get and list, and the `workflow.execution.changed` event.

Pure like server/wire/protocol.py, which adds these to its message union, rules and registry. The
execution objects are built by server/workspaces/executions.py. `WorkspaceEvent` and `EVENTS` here
are the coordination events of protocol_coordination.py with this one added: the union every
node reads workspace events back into.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, TypeAdapter

from server.core.errors import RequestId
from server.wire import protocol_coordination as pc
from server.wire.fields import Out, ReqId, Request
from server.wire.protocol_coordination import JsonObject

Obj = dict[str, Any]  # an execution or task object (docs/protocol.md#129, #124)
ExecutionStatus = Literal[
    "pending", "running", "paused", "completed", "failed", "cancelled", "timeout"
]


class WorkflowStart(Request):
    type: Literal["workflow.start"] = "workflow.start"
    id: ReqId | None = None
    workspace_id: UUID
    workflow_id: UUID
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    input: JsonObject = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)


class _ExecutionRequest(Request):
    id: ReqId | None = None
    workspace_id: UUID
    execution_id: UUID


class WorkflowPause(_ExecutionRequest):
    type: Literal["workflow.pause"] = "workflow.pause"


class WorkflowResume(_ExecutionRequest):
    type: Literal["workflow.resume"] = "workflow.resume"


class WorkflowCancel(_ExecutionRequest):
    type: Literal["workflow.cancel"] = "workflow.cancel"


class WorkflowExecutionGet(_ExecutionRequest):
    type: Literal["workflow.execution.get"] = "workflow.execution.get"


class WorkflowExecutionList(Request):
    type: Literal["workflow.execution.list"] = "workflow.execution.list"
    id: ReqId | None = None
    workspace_id: UUID
    workflow_id: UUID | None = None
    status: (
        Annotated[list[ExecutionStatus], Field(min_length=1, max_length=7)] | None
    ) = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


CLIENT_MESSAGES = (
    WorkflowStart, WorkflowPause, WorkflowResume, WorkflowCancel, WorkflowExecutionGet, WorkflowExecutionList,
)  # fmt: skip
RULES = {cls.model_fields["type"].default: "joined" for cls in CLIENT_MESSAGES}


class WorkflowStartOk(Out):
    type: Literal["workflow.start.ok"] = "workflow.start.ok"
    re: RequestId | None
    execution: Obj


class WorkflowPauseOk(Out):
    type: Literal["workflow.pause.ok"] = "workflow.pause.ok"
    re: RequestId | None
    execution: Obj


class WorkflowResumeOk(Out):
    type: Literal["workflow.resume.ok"] = "workflow.resume.ok"
    re: RequestId | None
    execution: Obj


class WorkflowCancelOk(Out):
    type: Literal["workflow.cancel.ok"] = "workflow.cancel.ok"
    re: RequestId | None
    execution: Obj


class WorkflowExecutionGetOk(Out):
    type: Literal["workflow.execution.get.ok"] = "workflow.execution.get.ok"
    re: RequestId | None
    execution: Obj
    tasks: list[Obj]


class WorkflowExecutionListOk(Out):
    type: Literal["workflow.execution.list.ok"] = "workflow.execution.list.ok"
    re: RequestId | None
    workspace_id: UUID
    executions: list[Obj]
    truncated: bool


class WorkflowExecutionChanged(Out):
    """An execution moved: `action` is `start`, `advance` (steps recorded or started), `pause`,
    `resume`, `cancel`, `complete` or `fail`; `agent_id` the agent whose request moved it."""

    type: Literal["workflow.execution.changed"] = "workflow.execution.changed"
    execution: Obj
    action: str
    previous_status: str | None
    agent_id: str


CONTROL_REPLIES: dict[str, type[WorkflowPauseOk | WorkflowResumeOk | WorkflowCancelOk]] = {
    "pause": WorkflowPauseOk, "resume": WorkflowResumeOk, "cancel": WorkflowCancelOk,
}  # fmt: skip

SERVER_MESSAGES = (
    WorkflowStartOk, WorkflowPauseOk, WorkflowResumeOk, WorkflowCancelOk, WorkflowExecutionGetOk,
    WorkflowExecutionListOk, WorkflowExecutionChanged,
)  # fmt: skip

WorkspaceEvent = pc.WorkspaceEvent | WorkflowExecutionChanged
EVENTS: TypeAdapter[WorkspaceEvent] = TypeAdapter(
    Annotated[WorkspaceEvent, Field(discriminator="type")]
)
