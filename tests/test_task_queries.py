"""Tasks across tenants, listed, counted and audited (server/workspaces/tasks.py) against real
PostgreSQL, as the application role (docs/protocol.md section 12.4).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.core.errors import ErrorCode, TandemError
from server.wire import protocol_coordination as pc
from server.workspaces import tasks
from tests.conftest import TENANT_A, TENANT_B
from tests.task_helpers import (
    CLIENT_IP,
    LIMIT,
    ROLES,
    act,
    create,
    env,  # noqa: F401  (the fixture the tests take)
    field_of,
    get,
    refused,
    request,
    started,
    tx,
    walk,
)

# --- tenant isolation ----------------------------------------------------------------------------


async def test_another_tenants_task_is_not_found_everywhere(env) -> None:
    task = await create(env, "olivia", assign_to="alice")
    await act(env, "alice", task.task_id, "delegate", to_agent_id="bob")
    before = await get(env, task.task_id)

    async with tx(env.pool, "beth", TENANT_B) as conn:
        await refused(tasks.get_task(conn, task.task_id), ErrorCode.NOT_FOUND)
        await refused(tasks.delegations(conn, task.task_id, LIMIT), ErrorCode.NOT_FOUND)
        assert await tasks.list_tasks(conn, request("task.list", workspace_id=env.ws_a, limit=LIMIT)) == ([], False)
    for action in pc.TASK_ACTIONS:
        await refused(act(env, "beth", task.task_id, action, TENANT_B, to_agent_id="beth", error="x"), ErrorCode.NOT_FOUND)
    assert await get(env, task.task_id) == before


async def test_unknown_and_deleted_tasks_are_not_found(env) -> None:
    task = await create(env, "olivia")
    async with tx(env.pool, "olivia") as conn:
        assert await conn.fetchval("SELECT soft_delete_task($1)", task.task_id)
    for task_id in (uuid.uuid4(), task.task_id):
        await refused(get(env, task_id), ErrorCode.NOT_FOUND)
        await refused(act(env, "olivia", task_id, "cancel"), ErrorCode.NOT_FOUND)
        async with tx(env.pool, "olivia") as conn:
            await refused(tasks.delegations(conn, task_id, LIMIT), ErrorCode.NOT_FOUND)


# --- queries -------------------------------------------------------------------------------------


async def test_list_filters_and_orders_critical_first(env) -> None:
    await create(env, "olivia", title="low", priority="low", assign_to="alice")
    await create(env, "olivia", title="crit", priority="critical", assign_to="alice")
    normal = await create(env, "alice", title="normal")
    high = await create(env, "bob", title="high", priority="high", assign_to="alice")
    await create(env, "alice", title="sub 1", parent_task_id=normal.task_id)
    await create(env, "alice", title="sub 2", parent_task_id=normal.task_id, priority="high")
    await walk(env, high.task_id, ("alice", "accept", {}))
    await create(env, "beth", TENANT_B, title="theirs", assign_to="alice")

    def listing(statuses: Any = None, priorities: Any = None, **filters: Any) -> Any:
        named = {"status": statuses, "priority": priorities}
        return request("task.list", workspace_id=env.ws_a, **filters, **{k: v for k, v in named.items() if v is not None})

    async def titles(**filters: Any) -> list[str]:
        async with tx(env.pool, "alice") as conn:
            found, truncated = await tasks.list_tasks(conn, listing(limit=LIMIT, **filters))
        assert not truncated
        return [t.title for t in found]

    assert await titles() == ["crit", "high", "sub 2", "normal", "sub 1", "low"]
    assert await titles(assigned_to="alice") == ["crit", "high", "low"]  # my tasks
    assert await titles(assigned_to="alice", statuses=["assigned"]) == ["crit", "low"]
    assert await titles(statuses=["accepted", "pending"]) == ["high", "sub 2", "normal", "sub 1"]
    assert await titles(priorities=["high", "low"]) == ["high", "sub 2", "low"]
    assert await titles(created_by="alice") == ["sub 2", "normal", "sub 1"]
    assert await titles(parent_task_id=normal.task_id) == ["sub 2", "sub 1"]
    assert await titles(statuses=[]) == []

    async with tx(env.pool, "alice") as conn:
        first, truncated = await tasks.list_tasks(conn, listing(limit=2))
        assert [t.title for t in first] == ["crit", "high"] and truncated
    for filters, field in (({"statuses": ["done"]}, "status.0"), ({"priorities": ["urgent"]}, "priority.0")):
        with pytest.raises(TandemError) as refusal:
            listing(**filters)
        assert refusal.value.code is ErrorCode.INVALID_MESSAGE and field_of(refusal.value) == field


async def test_workload_and_statistics_are_per_tenant_plain_numbers(env) -> None:
    done = await create(env, "olivia")
    await walk(env, done.task_id, *started("alice"), ("alice", "complete", {"result": {}}))
    active = await create(env, "olivia")
    await walk(env, active.task_id, *started("alice"))
    await create(env, "olivia", assign_to="bob")
    await create(env, "olivia", assign_to="bob", priority="critical")
    await create(env, "beth", TENANT_B, assign_to="alice")  # tenant B's alice is not ours

    async with tx(env.pool, "olivia") as conn:
        load = {row["agent_id"]: row for row in await tasks.workload(conn)}
        members = await tasks.workload(conn, env.ws_a)
        stats = await tasks.statistics(conn)
    assert set(load) == {"alice", "bob"}
    assert load["alice"]["active_tasks"] == 1 and load["alice"]["completed_24h"] == 1
    assert load["alice"]["pending_tasks"] == 0 and isinstance(load["alice"]["avg_task_duration_s"], float)
    assert load["bob"] == {
        "agent_id": "bob", "pending_tasks": 2, "active_tasks": 0, "completed_24h": 0, "avg_task_duration_s": None
    }
    assert [row["agent_id"] for row in members] == sorted(a for a in ROLES if a != "beth")
    assert next(r for r in members if r["agent_id"] == "dave")["pending_tasks"] == 0

    by_key = {(r["status"], r["priority"]): r for r in stats}
    assert set(by_key) == {("completed", "normal"), ("in_progress", "normal"), ("assigned", "normal"),
                           ("assigned", "critical")}  # fmt: skip
    assert by_key[("assigned", "normal")]["count"] == 1
    completed = by_key[("completed", "normal")]
    assert completed["count"] == 1 and isinstance(completed["avg_duration_s"], float)
    assert isinstance(completed["p95_duration_s"], float) and by_key[("assigned", "normal")]["avg_duration_s"] is None
    for row in [*stats, *load.values(), *members]:
        assert all(v is None or type(v) in (str, int, float) for v in row.values())

    async with tx(env.pool, "beth", TENANT_B) as conn:
        assert [r["agent_id"] for r in await tasks.workload(conn)] == ["alice"]
        assert [(r["status"], r["count"]) for r in await tasks.statistics(conn)] == [("assigned", 1)]
        assert await tasks.workload(conn, env.ws_a) == []


# --- audit -----------------------------------------------------------------------------------------


async def test_every_change_is_audited_with_the_acting_agent_and_client_address(env) -> None:
    task = await create(env, "olivia")
    await act(env, "bob", task.task_id, "assign", to_agent_id="bob")
    change = await act(env, "bob", task.task_id, "delegate", to_agent_id="carl", reason="on leave")
    await act(env, "olivia", task.task_id, "cancel")
    assert change.delegation is not None

    rows = await env.admin.fetch(
        "SELECT table_name, record_id, action, changed_by, host(ip_address) AS ip, new_data->>'status' AS status"
        " FROM audit_log WHERE tenant_id = $1 AND table_name IN ('tasks', 'task_delegations')"
        " ORDER BY changed_at, table_name DESC",
        TENANT_A,
    )
    assert [(r["table_name"], r["action"], r["changed_by"], r["status"]) for r in rows] == [
        ("tasks", "INSERT", "olivia", "pending"),
        ("tasks", "UPDATE", "bob", "assigned"),
        ("tasks", "UPDATE", "bob", "assigned"),
        ("task_delegations", "INSERT", "bob", None),
        ("tasks", "UPDATE", "olivia", "cancelled"),
    ]
    assert {r["ip"] for r in rows} == {CLIENT_IP}
    assert rows[3]["record_id"] == change.delegation.delegation_id
