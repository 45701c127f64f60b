"""Handlers of a connection for workflow definitions (docs/protocol.md section 12.8). Mixed into
`agent.AgentConnection`; each runs in one tenant transaction in the workspace the message names
(joined by this session: the `joined` rule), with the session's role there deciding who defines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.wire import protocol_workflows as pw
from server.workspaces import workflows

if TYPE_CHECKING:
    from server.transport.agent import AgentConnection

    _Base = AgentConnection
else:
    _Base = object


class WorkflowHandlers(_Base):
    """`on_workflow_<action>` handlers."""

    async def on_workflow_define(self, msg: pw.WorkflowDefine) -> None:
        assert self.principal is not None
        role = self.roles.get(msg.workspace_id)
        async with self._tx() as conn:
            found = await workflows.define(
                conn, self.principal.agent_id, role, msg.workspace_id, msg.name, msg.definition, msg.description,
                self.node.settings,
            )  # fmt: skip
        self.reply(pw.WorkflowDefineOk(re=msg.id, workflow=found))

    async def on_workflow_get(self, msg: pw.WorkflowGet) -> None:
        async with self._tx() as conn:
            found = await workflows.get(
                conn, msg.workspace_id, msg.workflow_id, msg.version
            )
        self.reply(pw.WorkflowGetOk(re=msg.id, workflow=found))

    async def on_workflow_list(self, msg: pw.WorkflowList) -> None:
        limit = min(msg.limit, self.node.settings.max_list_items)
        async with self._tx() as conn:
            found, truncated = await workflows.list_workflows(
                conn, msg.workspace_id, msg.include_inactive, limit
            )
        self.reply(
            pw.WorkflowListOk(
                re=msg.id,
                workspace_id=msg.workspace_id,
                workflows=found,
                truncated=truncated,
            )
        )

    async def on_workflow_deactivate(self, msg: pw.WorkflowDeactivate) -> None:
        async with self._tx() as conn:
            found = await workflows.deactivate(
                conn,
                self.roles.get(msg.workspace_id),
                msg.workspace_id,
                msg.workflow_id,
            )
        self.reply(pw.WorkflowDeactivateOk(re=msg.id, workflow=found))
