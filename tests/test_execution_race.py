"""Exactly once under concurrency (docs/protocol.md section 12.9): two transactions complete
the last two parallel tasks of an execution at the same time, 100 times; the join step's task
is created once each time. Both transactions hold their own task's row lock and wait for each
other before the transition (whose statement also locks the execution's row, as a node's
`task.complete` does), so both reach the execution's row lock while the other is open.
"""

# ruff: noqa: F811  (each test takes the imported `env` fixture as its parameter)

from __future__ import annotations

import asyncio

from server.workspaces import executions, tasks
from tests.execution_helpers import SEEN_S, act, define, register, start, step
from tests.task_helpers import ROLES, env, request, tx  # noqa: F401  (env: the fixture the tests take)

ROUNDS = 100
BARRIER_TIMEOUT_S = 30.0  # a bound on the wait, never a measurement


async def test_two_transactions_completing_the_last_two_branches_create_the_join_once(
    env,
) -> None:
    await register(env, "alice", ["left"], slots=ROUNDS * 2)
    await register(env, "bob", ["right"], slots=ROUNDS * 2)
    flow = await define(env, "race", {"type": "parallel", "steps": [
        step("a", capability="left"), step("b", capability="right"), step("join", depends_on=["a", "b"], agent="carl"),
    ]})  # fmt: skip

    async def complete(
        task: tasks.Task, barrier: asyncio.Barrier
    ) -> executions.Outcome | None:
        agent = task.assigned_to
        async with tx(env.pool, agent) as conn:
            message = request(
                "task.complete", task_id=task.task_id, result={"by": agent}
            )
            locked = await tasks.lock_task(conn, task.task_id)
            async with asyncio.timeout(BARRIER_TIMEOUT_S):
                await (
                    barrier.wait()
                )  # both transactions are open and past their task's lock
            change = await tasks.transition(conn, agent, ROLES[agent], message, locked)
            return await executions.after_task(conn, change, SEEN_S)

    for _ in range(ROUNDS):
        out = await start(env, flow)
        branch = [t for t, _, _ in out.tasks]
        for task in branch:
            await act(env, task.assigned_to, task.task_id, "accept")
            await act(env, task.assigned_to, task.task_id, "start")
        barrier = asyncio.Barrier(2)
        outcomes = await asyncio.gather(*(complete(t, barrier) for t in branch))
        joins = [t for o in outcomes for t, action, _ in o.tasks if action == "create"]
        assert [t.step_id for t in joins] == ["join"]
        count = await env.admin.fetchval(
            "SELECT count(*) FROM tasks WHERE execution_id = $1 AND step_id = 'join'",
            out.execution.execution_id,
        )
        assert count == 1
        async with tx(env.pool, "olivia") as conn:
            ex, _ = await executions.get(conn, env.ws_a, out.execution.execution_id, 10)
        assert ex.step_results == {"a": {"by": "alice"}, "b": {"by": "bob"}}
        assert ex.step_states["join"]["status"] == "running"


async def test_two_transactions_starting_steps_for_an_agent_with_one_free_slot_give_it_one(
    env,
) -> None:
    # Each start counts the agent's open tasks in its own snapshot; without a lock between the
    # count and the commit both see the free slot and the agent gets two tasks for one slot.
    await register(env, "alice", ["solo"], slots=1)
    flow = await define(env, "one slot", {"type": "sequential", "steps": [step("a", capability="solo")]})

    async def start_and_wait(barrier: asyncio.Barrier) -> executions.Outcome:
        async with tx(env.pool, "olivia") as conn:
            async with asyncio.timeout(BARRIER_TIMEOUT_S):
                await barrier.wait()  # both transactions are open before either picks
            return await executions.start(
                conn, "olivia", ROLES["olivia"], env.ws_a, flow, None, {}, {},
                max_input_bytes=1 << 20, seen_within_s=SEEN_S,
            )  # fmt: skip

    barrier = asyncio.Barrier(2)
    await asyncio.gather(start_and_wait(barrier), start_and_wait(barrier))
    rows = await env.admin.fetch("SELECT assigned_to, status FROM tasks WHERE step_id = 'a' ORDER BY created_at")
    assert sorted((r["status"], r["assigned_to"] or "") for r in rows) == [("assigned", "alice"), ("pending", "")]


async def test_a_start_does_not_wait_for_another_giving_a_task_to_a_different_agent(
    env,
) -> None:
    # The slot a transaction fills is locked per agent: while the first start holds alice's
    # (uncommitted), a second one gives its task to bob at once, and commits first.
    await register(env, "alice", ["pair"], slots=1)
    await register(env, "bob", ["pair"], slots=1)
    flow = await define(
        env, "pair", {"type": "sequential", "steps": [step("a", capability="pair")]}
    )

    async def one() -> executions.Outcome:
        async with tx(env.pool, "olivia") as conn:
            return await executions.start(
                conn, "olivia", ROLES["olivia"], env.ws_a, flow, None, {}, {},
                max_input_bytes=1 << 20, seen_within_s=SEEN_S,
            )  # fmt: skip

    async with tx(env.pool, "olivia") as conn:
        first = await executions.start(
            conn, "olivia", ROLES["olivia"], env.ws_a, flow, None, {}, {},
            max_input_bytes=1 << 20, seen_within_s=SEEN_S,
        )  # fmt: skip
        async with asyncio.timeout(BARRIER_TIMEOUT_S):
            second = await one()  # committed while the first is still open
    assert first.tasks[0][0].assigned_to == "alice"
    assert second.tasks[0][0].assigned_to == "bob"


async def test_a_transaction_holding_an_agent_leaves_a_step_waiting_rather_than_wait_itself(
    env,
) -> None:
    # Waiting while holding an agent's lock could close a cycle with another transaction: the
    # second pick of a transaction that holds one, when every free agent is being given a task
    # elsewhere, leaves its step waiting for a slot (given out when one frees).
    await register(env, "alice", ["solo"], slots=1)
    await register(env, "bob", ["other"], slots=5)
    solo = await define(
        env, "solo", {"type": "sequential", "steps": [step("a", capability="solo")]}
    )
    both = await define(env, "both", {"type": "parallel", "steps": [
        step("x", capability="other"), step("y", capability="solo"),
    ]})  # fmt: skip
    async with tx(env.pool, "olivia") as conn:
        held = await executions.start(
            conn, "olivia", ROLES["olivia"], env.ws_a, solo, None, {}, {},
            max_input_bytes=1 << 20, seen_within_s=SEEN_S,
        )  # fmt: skip
        async with asyncio.timeout(BARRIER_TIMEOUT_S):
            out = await start(env, both)  # holds bob's lock, finds alice's taken
    assert held.tasks[0][0].assigned_to == "alice"
    assert {t.step_id: (t.status, t.assigned_to) for t, _, _ in out.tasks} == {
        "x": ("assigned", "bob"),
        "y": ("pending", None),
    }
