"""The tenant's agent registry (docs/protocol.md section 12.7): thin wrappers of `agent.*`.
Imports nothing of the server.

Every request is safe to repeat (register and set_status are idempotent), so each is sent again
on the next session when the connection drops. Bad input raises `InvalidMessage` (its `details`
name the field); `set_status` before `register` raises `NotFound`.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from tandem_client import wire

if TYPE_CHECKING:
    from tandem_client.client import Client


class Agents:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def register(
        self,
        name: str,
        *,
        kind: str | None = None,
        capabilities: builtins.list[str] | None = None,
        max_concurrent_tasks: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> wire.Agent:
        """`agent.register`: register this agent (the token's `sub`) or update its registration."""
        fields = wire.given(
            name=name,
            kind=kind,
            capabilities=capabilities,
            max_concurrent_tasks=max_concurrent_tasks,
            metadata=metadata,
        )
        frame = await self.client._idempotent("agent.register", fields)
        return wire.Agent.from_wire(frame["agent"])

    async def set_status(self, status: str) -> wire.Agent:
        """`agent.set_status`: `maintenance` or `error` takes this agent out of work, `active` brings it back."""
        frame = await self.client._idempotent("agent.set_status", {"status": status})
        return wire.Agent.from_wire(frame["agent"])

    async def list(
        self,
        *,
        capability: str | None = None,
        status: builtins.list[str] | None = None,
        limit: int | None = None,
    ) -> builtins.list[wire.Agent]:
        """`agent.list`: the tenant's agents by id, with `capability` and a status in `status` when
        given, each with its load, free slots and health counters (at most `limit`)."""
        frame = await self.client._idempotent(
            "agent.list", wire.given(capability=capability, status=status, limit=limit)
        )
        return [wire.Agent.from_wire(a) for a in frame["agents"]]
