"""Workflow definitions of a workspace (docs/protocol.md section 12.8): define (a new workflow or
its next version), get, list, deactivate. Imports nothing of the server.

A definition the server refuses raises `InvalidWorkflow`, whose `step`, `pointer` (a JSON pointer
into the definition) and `reason` say what to fix. Defining and deactivating are for the
workspace's owner and admins (`Forbidden` otherwise).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from tandem_client import wire

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace

WorkflowRef = str | wire.Workflow | wire.WorkflowSummary


def workflow_id_of(workflow: WorkflowRef) -> str:
    return workflow if isinstance(workflow, str) else workflow.workflow_id


class Workflows:
    """`ws.workflows`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

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
