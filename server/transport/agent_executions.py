"""Handlers of a connection for workflow executions (docs/protocol.md section 12.9). Mixed into
`agent.AgentConnection`; each runs in one tenant transaction in the workspace the message names
(joined by this session: the `joined` rule). A change commits with its events (the step tasks'
`task.changed` and `workflow.execution.changed`), is replied to, then delivered on this node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from server.cluster.events import Event
from server.wire import protocol_executions as pe
from server.workspaces import executions
from server.workspaces.workspace_events import execution_events

if TYPE_CHECKING:
    from server.transport.agent import AgentConnection

    _Base = AgentConnection
else:
    _Base = object


class ExecutionHandlers(_Base):
    """`on_workflow_<action>` handlers of executions."""

    async def on_workflow_start(self, msg: pe.WorkflowStart) -> None:
        assert self.principal is not None
        settings = self.node.settings
        async with self._tx() as conn:
            out = await executions.start(
                conn, self.principal.agent_id, self.roles.get(msg.workspace_id), msg.workspace_id, msg.workflow_id,
                msg.version, msg.input, msg.context, max_input_bytes=settings.max_execution_input_bytes,
                seen_within_s=settings.presence_ttl_s,
            )  # fmt: skip
            events = await self._publish_run(conn, out)
        assert out.execution is not None
        self.reply(pe.WorkflowStartOk(re=msg.id, execution=out.execution.to_wire()))
        self._deliver_run(events)

    async def _control(
        self, msg: pe.WorkflowPause | pe.WorkflowResume | pe.WorkflowCancel
    ) -> None:
        action = msg.type.removeprefix("workflow.")
        async with self._tx() as conn:
            out = await executions.control(
                conn, self.roles.get(msg.workspace_id), msg.workspace_id, msg.execution_id, action,
                self.node.settings.presence_ttl_s,
            )  # fmt: skip
            events = await self._publish_run(conn, out)
        assert out.execution is not None
        self.reply(
            pe.CONTROL_REPLIES[action](re=msg.id, execution=out.execution.to_wire())
        )
        self._deliver_run(events)

    on_workflow_pause = on_workflow_resume = on_workflow_cancel = _control

    async def on_workflow_execution_get(self, msg: pe.WorkflowExecutionGet) -> None:
        async with self._tx() as conn:
            found, steps = await executions.get(
                conn,
                msg.workspace_id,
                msg.execution_id,
                self.node.settings.max_list_items,
            )
        self.reply(
            pe.WorkflowExecutionGetOk(
                re=msg.id, execution=found.to_wire(), tasks=[t.to_wire() for t in steps]
            )
        )

    async def on_workflow_execution_list(self, msg: pe.WorkflowExecutionList) -> None:
        limit = min(msg.limit, self.node.settings.max_list_items)
        async with self._tx() as conn:
            found, truncated = await executions.list_executions(
                conn,
                msg.workspace_id,
                msg.workflow_id,
                None if msg.status is None else list(msg.status),
                limit,
            )
        self.reply(
            pe.WorkflowExecutionListOk(
                re=msg.id,
                workspace_id=msg.workspace_id,
                executions=[e.to_wire() for e in found],
                truncated=truncated,
            )
        )

    # --- shared with the task handlers: an engine run's events ------------------------------------

    async def _publish_run(
        self, conn: asyncpg.Connection, out: executions.Outcome | None, *before: Event
    ) -> list[Event]:
        """In the run's transaction: NOTIFY its events (after `before`, in one statement);
        deliver them after the commit."""
        events = []
        if out is not None:
            assert self.principal is not None
            events = execution_events(
                self.principal.tenant_id, out, self.principal.agent_id
            )
        await self.node.coordination.publish(conn, *before, *events)
        return events

    def _deliver_run(self, events: list[Event]) -> None:
        for event in events:
            self.node.coordination.deliver(event)
