"""Messages of workflow definitions (docs/protocol.md section 12.8): define, get, list, deactivate.

Pure like server/wire/protocol.py, which adds these to its message union, rules and registry. The
definition itself is checked by server/workspaces/workflow_rules.py (its JSON Schema and graph), so
a fault in it gets `invalid_workflow` naming the step and field rather than `invalid_message`;
the workflow objects are built by server/workspaces/workflows.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from server.core.errors import RequestId
from server.wire.fields import Name, Out, ReqId, Request
from server.wire.protocol_coordination import JsonObject

Obj = dict[str, Any]  # a workflow object or summary (docs/protocol.md#128)


class WorkflowDefine(Request):
    type: Literal["workflow.define"] = "workflow.define"
    id: ReqId | None = None
    workspace_id: UUID
    name: Name
    definition: JsonObject  # {"type", "steps", "config"?}: checked by workflow_rules
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class WorkflowGet(Request):
    type: Literal["workflow.get"] = "workflow.get"
    id: ReqId | None = None
    workspace_id: UUID
    workflow_id: UUID
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class WorkflowList(Request):
    type: Literal["workflow.list"] = "workflow.list"
    id: ReqId | None = None
    workspace_id: UUID
    include_inactive: bool = False
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class WorkflowDeactivate(Request):
    type: Literal["workflow.deactivate"] = "workflow.deactivate"
    id: ReqId | None = None
    workspace_id: UUID
    workflow_id: UUID


CLIENT_MESSAGES = (WorkflowDefine, WorkflowGet, WorkflowList, WorkflowDeactivate)
RULES = {cls.model_fields["type"].default: "joined" for cls in CLIENT_MESSAGES}


class WorkflowDefineOk(Out):
    type: Literal["workflow.define.ok"] = "workflow.define.ok"
    re: RequestId | None
    workflow: Obj


class WorkflowGetOk(Out):
    type: Literal["workflow.get.ok"] = "workflow.get.ok"
    re: RequestId | None
    workflow: Obj


class WorkflowListOk(Out):
    type: Literal["workflow.list.ok"] = "workflow.list.ok"
    re: RequestId | None
    workspace_id: UUID
    workflows: list[Obj]
    truncated: bool


class WorkflowDeactivateOk(Out):
    type: Literal["workflow.deactivate.ok"] = "workflow.deactivate.ok"
    re: RequestId | None
    workflow: Obj


SERVER_MESSAGES = (
    WorkflowDefineOk,
    WorkflowGetOk,
    WorkflowListOk,
    WorkflowDeactivateOk,
)
