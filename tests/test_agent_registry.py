"""The agent registry's data side (server/workspaces/agents.py, agent_liveness.py) on a real
database as the application role: the listed status derived from what was set and when a node
last stamped the agent, the heartbeat stamping every tenant's connected agents (and nothing for an
agent that never registered), and the capability and status filters. The SDK and two-node
behaviour are in tests/e2e/test_sdk_agents.py."""

from __future__ import annotations

import uuid

import asyncpg

from server.core.settings import Settings
from server.db import store
from server.wire import protocol_agents as pa
from server.workspaces import agents
from server.workspaces.agent_liveness import AgentLiveness
from tests.conftest import TENANT_A, TENANT_B

TTL_S = 15.0


async def _register(
    pool: asyncpg.Pool, tenant: uuid.UUID, agent_id: str, *capabilities: str
) -> None:
    async with store.tenant_transaction(pool, tenant, agent_id) as conn:
        await agents.register(
            conn,
            agent_id,
            pa.AgentRegister(name=agent_id, capabilities=list(capabilities)),
            TTL_S,
        )


async def _listed(
    pool: asyncpg.Pool, tenant: uuid.UUID, **filters: object
) -> dict[str, agents.Agent]:
    async with store.tenant_transaction(pool, tenant) as conn:
        found, _ = await agents.list_agents(conn, TTL_S, **filters)  # type: ignore[arg-type]
    return {a.agent_id: a for a in found}


async def test_status_is_derived_from_the_set_status_and_the_last_stamp(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    for agent_id in ("fresh", "stale", "resting", "broken"):
        await _register(pool, TENANT_A, agent_id)
    await admin.execute(
        "UPDATE agents SET last_seen_at = now() - interval '1 minute' WHERE agent_id IN ('stale', 'resting')"
    )
    async with store.tenant_transaction(pool, TENANT_A) as conn:
        await agents.set_status(conn, "resting", "maintenance", TTL_S)
        await agents.set_status(conn, "broken", "error", TTL_S)
    listed = await _listed(pool, TENANT_A)
    assert {k: a.status for k, a in listed.items()} == {
        "broken": "error", "fresh": "active", "resting": "maintenance", "stale": "inactive"
    }  # fmt: skip
    assert list(await _listed(pool, TENANT_A, statuses=["inactive", "error"])) == [
        "broken",
        "stale",
    ]


async def test_the_heartbeat_stamps_connected_agents_of_every_tenant(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    await _register(pool, TENANT_A, "a-1", "write")
    await _register(pool, TENANT_A, "a-2", "review")
    await _register(pool, TENANT_B, "b-1", "write")
    await admin.execute("UPDATE agents SET last_seen_at = now() - interval '1 minute'")
    connected = {TENANT_A: ["a-1", "never-registered"], TENANT_B: ["b-1"]}
    liveness = AgentLiveness(pool, lambda: connected, Settings(presence_ttl_s=TTL_S))
    assert await liveness.beat_once() == 2
    assert {k: a.status for k, a in (await _listed(pool, TENANT_A)).items()} == {
        "a-1": "active",
        "a-2": "inactive",
    }
    assert {k: a.status for k, a in (await _listed(pool, TENANT_B)).items()} == {
        "b-1": "active"
    }
    assert (
        await admin.fetchval(
            "SELECT count(*) FROM agents WHERE agent_id = 'never-registered'"
        )
        == 0
    )
    assert list(await _listed(pool, TENANT_A, capability="write")) == ["a-1"]
    assert list(await _listed(pool, TENANT_B, capability="review")) == []
