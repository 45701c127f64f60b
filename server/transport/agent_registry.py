"""Handlers of a connection for the agent registry (docs/protocol.md section 12.7): register,
set status, list. Mixed into `agent.AgentConnection`. The caller is always the token's agent:
an agent registers and sets the status of itself only (tenants have no admin role).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.wire import protocol_agents as pa
from server.workspaces import agents, executions

if TYPE_CHECKING:
    from server.transport.agent import AgentConnection

    _Base = AgentConnection
else:
    _Base = object


class AgentRegistryHandlers(_Base):
    """`on_agent_*` handlers; statuses are listed against the node's presence TTL. An agent that
    registers or sets itself `active` may be the one waiting step tasks need: they are handed
    out in the same transaction (their `task.changed` follow the reply)."""

    async def on_agent_register(self, msg: pa.AgentRegister) -> None:
        assert self.principal is not None
        ttl = self.node.settings.presence_ttl_s
        async with self._tx() as conn:
            agent = await agents.register(conn, self.principal.agent_id, msg, ttl)
            events = await self._publish_run(conn, await executions.hand_out_waiting(conn, ttl))
        self.reply(pa.AgentRegisterOk(re=msg.id, agent=agent.to_wire()))
        self._deliver_run(events)

    async def on_agent_set_status(self, msg: pa.AgentSetStatus) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            agent = await agents.set_status(
                conn,
                self.principal.agent_id,
                msg.status,
                self.node.settings.presence_ttl_s,
            )
            ttl = self.node.settings.presence_ttl_s
            out = await executions.hand_out_waiting(conn, ttl) if agent.status == "active" else None
            events = await self._publish_run(conn, out)
        self.reply(pa.AgentSetStatusOk(re=msg.id, agent=agent.to_wire()))
        self._deliver_run(events)

    async def on_agent_list(self, msg: pa.AgentList) -> None:
        async with self._tx() as conn:
            found, truncated = await agents.list_agents(
                conn,
                self.node.settings.presence_ttl_s,
                capability=msg.capability,
                statuses=msg.status,
                limit=msg.limit,
            )
        self.reply(
            pa.AgentListOk(
                re=msg.id, agents=[a.to_wire() for a in found], truncated=truncated
            )
        )
