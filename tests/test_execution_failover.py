"""Failover of workflow step tasks (server/workspaces/execution_failover.py, docs/protocol.md
section 12.9) against real PostgreSQL as the application role: a gone or out-of-service
holder's open step tasks go back to `assigned`, to another capable agent, with one `failover`
delegation each; two sweeps at once never move one task twice (the second skips the rows the
first holds); what must stay stays. The superuser connection only ages an agent's heartbeat.
"""

# ruff: noqa: F811  (each test takes the imported `env` fixture as its parameter)

from __future__ import annotations

from server.core.errors import ErrorCode
from server.workspaces import agents, execution_failover, tasks
from tests.conftest import TENANT_A
from tests.execution_helpers import SEEN_S, act, define, register, start, step
from tests.task_helpers import env, refused, tx  # noqa: F401  (env: the fixture the tests take)

GRACE_S = 30.0


async def gone(env, agent: str) -> None:
    """No node stamped `agent` for an hour."""
    await env.admin.execute(
        "UPDATE agents SET last_seen_at = CURRENT_TIMESTAMP - interval '1 hour' WHERE agent_id = $1",
        agent,
    )


async def fail_over(env, max_rows: int = 100) -> list[execution_failover.Failover]:
    async with tx(env.pool, "olivia") as conn:
        return await execution_failover.fail_over(conn, GRACE_S, SEEN_S, max_rows)


async def history(env, task) -> list[tasks.Delegation]:
    async with tx(env.pool, "olivia") as conn:
        return await tasks.delegations(conn, task.task_id, 100)


async def test_a_gone_holders_tasks_move_once_even_when_two_sweeps_overlap(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "one", {"type": "sequential", "steps": [step("draft")]})
    given = [(await start(env, flow)).tasks[0][0] for _ in range(3)]
    assert {t.assigned_to for t in given} == {"alice"}
    await act(env, "alice", given[1].task_id, "accept")
    await act(env, "alice", given[2].task_id, "accept")
    await act(
        env, "alice", given[2].task_id, "start"
    )  # assigned, accepted and in progress
    await register(env, "carl", ["write"])
    await gone(env, "alice")

    async with tx(env.pool, "olivia") as first:
        moved = await execution_failover.fail_over(first, GRACE_S, SEEN_S, 100)
        assert (
            await fail_over(env) == []
        )  # a second sweep meanwhile skips the locked rows
    assert sorted(m.task.task_id for m in moved) == sorted(t.task_id for t in given)
    assert await fail_over(env) == []  # and after the commit nothing is left to move

    for one in moved:
        assert (one.previous, one.task.assigned_to, one.task.status) == (
            "alice",
            "carl",
            "assigned",
        )
        assert one.task.started_at is None and one.task.attempt == 1
        [*_, last] = await history(env, one.task)
        assert (last.delegation_type, last.from_agent_id, last.to_agent_id) == (
            "failover",
            "alice",
            "carl",
        )
        assert (
            last.reason
            == f"alice is gone for over {GRACE_S:g} s; step draft needs write"
        )
    # the old holder no longer may move it; the new one does
    await refused(
        act(env, "alice", moved[2].task.task_id, "complete", result={}),
        ErrorCode.INVALID_TRANSITION,
    )
    await act(env, "carl", moved[0].task.task_id, "accept")


async def test_maintenance_moves_at_once_and_what_must_stay_stays(env) -> None:
    await register(env, "alice", ["write"])
    await register(env, "bob", ["write"], slots=1)
    flow = await define(env, "mixed", {"type": "parallel", "steps": [
        step("free"), step("named", agent="alice"),
    ]})  # fmt: skip
    out = await start(env, flow)
    by_step = {t.step_id: t for t, _, _ in out.tasks}
    assert (
        by_step["free"].assigned_to == "alice"
        and by_step["named"].assigned_to == "alice"
    )
    assert await fail_over(env) == []  # alice is alive and active: nothing moves

    async with tx(env.pool, "alice") as conn:
        await agents.set_status(conn, "alice", "maintenance", SEEN_S)
    [moved] = await fail_over(
        env
    )  # at once, whatever the grace; the named step stays with alice
    assert (moved.task.step_id, moved.task.assigned_to) == ("free", "bob")
    assert "alice is maintenance" in (moved.delegation.reason or "")

    # bob has no free slot left and nobody else has the capability: the task waits with its holder
    second = (
        await start(
            env, await define(env, "solo", {"type": "sequential", "steps": [step("x")]})
        )
    ).tasks[0][0]
    assert second.assigned_to is None  # bob is full, alice in maintenance: pending
    async with tx(env.pool, "bob") as conn:
        await agents.set_status(conn, "bob", "error", SEEN_S)
    assert (
        await fail_over(env) == []
    )  # bob's task has nowhere to go: it stays, tried again later
    async with tx(env.pool, "alice") as conn:
        await agents.set_status(conn, "alice", "active", SEEN_S)
    [back] = await fail_over(env)
    assert (back.task.task_id, back.previous, back.task.assigned_to) == (
        moved.task.task_id,
        "bob",
        "alice",
    )


async def test_the_sweeps_tenant_list_holds_tenants_with_held_or_waiting_step_tasks_only(
    env,
) -> None:
    async with env.pool.acquire() as conn:
        assert await execution_failover.open_step_tenants(conn, None, 10) == []
    await register(env, "alice", ["write"], slots=1)
    flow = await define(env, "one", {"type": "sequential", "steps": [step("draft")]})
    held = (await start(env, flow)).tasks[0][0]
    waiting = (await start(env, flow)).tasks[0][0]
    assert (held.assigned_to, waiting.assigned_to) == ("alice", None)
    async with env.pool.acquire() as conn:
        assert await execution_failover.open_step_tenants(conn, None, 10) == [TENANT_A]
        assert (
            await execution_failover.open_step_tenants(conn, TENANT_A, 10) == []
        )  # in turn, after A
    await act(env, "alice", held.task_id, "accept")
    await act(env, "alice", held.task_id, "start")
    out = await act(env, "alice", held.task_id, "complete", result={})
    assert [(t.task_id, t.assigned_to) for t, _, _ in out.tasks] == [
        (waiting.task_id, "alice")
    ]
    await act(env, "alice", waiting.task_id, "accept")
    await act(env, "alice", waiting.task_id, "start")
    await act(env, "alice", waiting.task_id, "complete", result={})
    async with env.pool.acquire() as conn:
        assert (
            await execution_failover.open_step_tenants(conn, None, 10) == []
        )  # nothing open
