"""Handlers of a connection for the agent registry (docs/protocol.md section 12.7): register,
set status, list. Mixed into `agent.AgentConnection`. The caller is always the token's agent:
an agent registers and sets the status of itself only (tenants have no admin role).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.wire import protocol_agents as pa
from server.workspaces import agents

if TYPE_CHECKING:
    from server.transport.agent import AgentConnection

    _Base = AgentConnection
else:
    _Base = object


class AgentRegistryHandlers(_Base):
    """`on_agent_*` handlers; statuses are listed against the node's presence TTL."""

    async def on_agent_register(self, msg: pa.AgentRegister) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            agent = await agents.register(
                conn, self.principal.agent_id, msg, self.node.settings.presence_ttl_s
            )
        self.reply(pa.AgentRegisterOk(re=msg.id, agent=agent.to_wire()))

    async def on_agent_set_status(self, msg: pa.AgentSetStatus) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            agent = await agents.set_status(
                conn,
                self.principal.agent_id,
                msg.status,
                self.node.settings.presence_ttl_s,
            )
        self.reply(pa.AgentSetStatusOk(re=msg.id, agent=agent.to_wire()))

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
