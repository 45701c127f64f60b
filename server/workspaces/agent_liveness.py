"""The agent registry's heartbeat: an agent's liveness follows its connections on every node.

Every presence heartbeat period (`presence_ttl_s` / 3) each node stamps `last_seen_at` of the
agents with an open session on it: one transaction per tenant per beat, one statement in it per
`agents.MAX_SEEN_PER_STATEMENT` agents, never one per message. An agent is listed `active`
while some node stamped it within `presence_ttl_s` (server/workspaces/agents.py), so one that
disconnected everywhere turns `inactive` at most a TTL later, whichever node lists it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import structlog

from server.core.settings import Settings
from server.db import store
from server.workspaces import agents

log = structlog.get_logger("tandem.agents")

MAX_TENANTS_PER_BEAT = 1000  # tenants stamped per beat; the rest wait for the next one


class AgentLiveness:
    def __init__(
        self,
        pool: asyncpg.Pool,
        connected: Callable[[], dict[uuid.UUID, list[str]]],
        settings: Settings,
    ) -> None:
        self.pool = pool
        self.connected = connected  # Events.connected_agents of this node
        self.period_s = settings.presence_ttl_s / 3
        self._next = 0  # where the next beat starts when there are more tenants than one beat stamps

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)  # the period, not a wait for a condition
            try:
                await self.beat_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "agents.heartbeat_failed", error=f"{type(exc).__name__}: {exc}"
                )

    async def beat_once(self) -> int:
        """Stamp the agents connected here now, tenant by tenant; returns how many tenants."""
        by_tenant = sorted(self.connected().items())
        if (
            len(by_tenant) > MAX_TENANTS_PER_BEAT
        ):  # take turns, so every tenant is stamped in time
            start = self._next % len(by_tenant)
            by_tenant = (by_tenant[start:] + by_tenant[:start])[:MAX_TENANTS_PER_BEAT]
            self._next = start + MAX_TENANTS_PER_BEAT
        step = agents.MAX_SEEN_PER_STATEMENT
        for tenant_id, agent_ids in by_tenant:
            ids = sorted(agent_ids)
            async with store.tenant_transaction(self.pool, tenant_id) as conn:
                for i in range(
                    0, len(ids), step
                ):  # one statement unless a tenant has more agents here
                    await agents.seen(conn, ids[i : i + step])
        return len(by_tenant)
