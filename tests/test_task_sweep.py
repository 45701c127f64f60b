"""The task timeout sweep (server/workspaces/tasks.py `overdue_tenants`, `sweep_timeouts`; migration 0021)
against real PostgreSQL, as the application role: each overdue task times out exactly once
whatever the number of concurrent sweepers, and a sweep acts only on its own tenant.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from server.core.errors import ErrorCode
from server.db import store
from server.workspaces import tasks
from tests.conftest import TENANT_A, TENANT_B
from tests.task_helpers import (  # noqa: F401  (env: the fixture)
    Env,
    act,
    audit_count,
    create,
    env,
    get,
    refused,
    request,
    started,
    tx,
    walk,
)

Swept = list[tuple[uuid.UUID, uuid.UUID, uuid.UUID | None]]


async def sweep(env: Env, sweepers: int, max_rows: int) -> Swept:
    """`sweepers` concurrent sweeps as a node runs them: the tenants with overdue tasks first
    (no tenant set), then each tenant's tasks in a transaction of that tenant."""

    async def one() -> Swept:
        async with env.pool.acquire() as conn:
            tenants = await tasks.overdue_tenants(conn, max_rows)
        swept: Swept = []
        for tenant in tenants:
            async with store.tenant_transaction(env.pool, tenant) as conn:
                swept += [(t, tenant, w) for t, w in await tasks.sweep_timeouts(conn, max_rows)]
        return swept

    return [row for rows in await asyncio.gather(*(one() for _ in range(sweepers))) for row in rows]


async def test_concurrent_sweeps_time_each_overdue_task_out_exactly_once_across_tenants(env) -> None:
    overdue_a = await create(env, "olivia", timeout_s=1)
    overdue_b = await create(env, "beth", TENANT_B, timeout_s=1, assign_to="beth")
    fresh = await create(env, "olivia", timeout_s=3600)
    for task in (overdue_a, fresh):
        await walk(env, task.task_id, *started("alice"))
    for action in ("accept", "start"):
        await act(env, "beth", overdue_b.task_id, action, TENANT_B)
    # Behind the app's back: two tasks started an hour ago (no sleeping until they are overdue),
    # the fresh one ten minutes ago, well within its hour.
    await env.admin.execute(
        "UPDATE tasks SET started_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])",
        [overdue_a.task_id, overdue_b.task_id],
    )
    await env.admin.execute("UPDATE tasks SET started_at = now() - interval '10 minutes' WHERE id = $1", fresh.task_id)
    fresh_audits = await audit_count(env, fresh.task_id)

    swept = await sweep(env, sweepers=2, max_rows=10)
    assert Counter(row[0] for row in swept) == {overdue_a.task_id: 1, overdue_b.task_id: 1}
    assert sorted(swept) == sorted([(overdue_a.task_id, TENANT_A, env.ws_a), (overdue_b.task_id, TENANT_B, env.ws_b)])
    assert await sweep(env, sweepers=2, max_rows=10) == []

    for task_id in (overdue_a.task_id, overdue_b.task_id):
        marks = await env.admin.fetchval(
            "SELECT count(*) FROM audit_log WHERE record_id = $1 AND action = 'UPDATE'"
            " AND new_data->>'status' = 'timeout' AND old_data->>'status' = 'in_progress'",
            task_id,
        )
        assert marks == 1
    assert await audit_count(env, fresh.task_id) == fresh_audits

    timed_out = await get(env, overdue_a.task_id)
    assert timed_out.status == "timeout" and timed_out.completed_at is not None
    assert timed_out.error == "timed out after 1 s" and timed_out.assigned_to == "alice"
    assert (await get(env, overdue_b.task_id, TENANT_B)).status == "timeout"
    assert (await get(env, fresh.task_id)).status == "in_progress"

    # Swept across tenants, yet tenant A still cannot read tenant B's task.
    await refused(get(env, overdue_b.task_id), ErrorCode.NOT_FOUND)
    async with tx(env.pool, "olivia") as conn:
        assert await conn.fetchval("SELECT count(*) FROM tasks WHERE id = $1", overdue_b.task_id) == 0

    # Failover: the creator hands the timed-out task to another worker.
    failover = await act(env, "olivia", overdue_a.task_id, "delegate", to_agent_id="bob", delegation_type="failover")
    assert (failover.task.status, failover.task.assigned_to, failover.task.completed_at) == ("assigned", "bob", None)
    assert failover.delegation is not None and failover.delegation.from_agent_id == "alice"


async def test_the_sweep_marks_only_the_current_tenants_tasks(env) -> None:
    overdue_a = await create(env, "olivia", timeout_s=1)
    await walk(env, overdue_a.task_id, *started("alice"))
    await env.admin.execute("UPDATE tasks SET started_at = now() - interval '1 hour' WHERE id = $1", overdue_a.task_id)
    audits = await audit_count(env, overdue_a.task_id)

    # The app role with tenant B set, through the data layer and through the function itself.
    async with tx(env.pool, "beth", TENANT_B) as conn:
        assert await tasks.sweep_timeouts(conn, 10) == []
        assert await conn.fetch("SELECT * FROM sweep_task_timeouts(10)") == []
    # With no tenant set at all.
    async with env.pool.acquire() as conn, conn.transaction():
        assert await conn.fetch("SELECT * FROM sweep_task_timeouts(10)") == []
        # The one cross-tenant step tells tenant ids, nothing of the tasks.
        assert await tasks.overdue_tenants(conn, 10) == [TENANT_A]
    assert (await get(env, overdue_a.task_id)).status == "in_progress"
    assert await audit_count(env, overdue_a.task_id) == audits

    async with tx(env.pool, "olivia") as conn:
        assert await tasks.sweep_timeouts(conn, 10) == [(overdue_a.task_id, env.ws_a)]
    assert (await get(env, overdue_a.task_id)).status == "timeout"


async def test_many_sweepers_share_many_overdue_tasks_without_doubles(env) -> None:
    async with tx(env.pool, "olivia") as conn:
        ids = [
            (await tasks.create_task(conn, "olivia", "owner", request("task.create", workspace_id=env.ws_a, title=f"t{i}", timeout_s=1))).task_id
            for i in range(20)
        ]
    await env.admin.execute(
        "UPDATE tasks SET status = 'in_progress', assigned_to = 'alice', started_at = now() - interval '1 hour'"
        " WHERE id = ANY($1::uuid[])",
        ids,
    )
    swept = await sweep(env, sweepers=4, max_rows=3)
    assert len(swept) == len({row[0] for row in swept}) and len(swept) <= 12
    for _ in range(20):  # bounded: each round marks at least one while any is left
        if not (more := await sweep(env, sweepers=4, max_rows=3)):
            break
        swept += more
    assert Counter(row[0] for row in swept) == Counter(ids)
