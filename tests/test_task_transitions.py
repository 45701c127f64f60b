"""Task transitions (server/workspaces/tasks.py) against real PostgreSQL, as the application role:
every (status, action) pair against the table, who may act, retries and delegation
(docs/protocol.md section 12.4).
"""

from __future__ import annotations

import asyncio

from server.core.errors import ErrorCode, TandemError
from server.workspaces import tasks
from server.workspaces.task_rules import TRANSITIONS, Action, Status
from tests.conftest import TENANT_A
from tests.task_helpers import (
    LIMIT,
    act,
    audit_count,
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

# --- every (status, action) pair ---------------------------------------------------------------


async def test_every_status_action_pair_in_the_database_follows_the_table(env) -> None:
    """olivia is creator, assignee and owner of each task, so only the table decides."""
    pairs = [(s, a) for s in Status for a in Action if a is not Action.TIMEOUT]  # the sweep's alone
    async with tx(env.pool, "olivia") as conn:
        ids = [
            (await tasks.create_task(conn, "olivia", "owner", request("task.create", workspace_id=env.ws_a, title=f"{s} {a}"))).task_id
            for s, a in pairs
        ]
    await env.admin.execute(
        "UPDATE tasks t SET status = u.status::task_status, assigned_to = 'olivia'"
        " FROM unnest($1::uuid[], $2::text[]) AS u(id, status) WHERE t.id = u.id",
        ids, [s.value for s, _ in pairs],
    )  # fmt: skip
    for (status, action), task_id in zip(pairs, ids, strict=True):
        target = TRANSITIONS.get((status, action))
        before, audits = await get(env, task_id), await audit_count(env, task_id)
        call = act(env, "olivia", task_id, action, to_agent_id="bob", error="boom", result={"ok": True})
        if target is None:
            error = await refused(call, ErrorCode.INVALID_TRANSITION)
            assert error.details == {"status": status.value, "action": action.value}
            assert await get(env, task_id) == before, (status, action)
            assert await audit_count(env, task_id) == audits
        else:
            change = await call
            want = Status.PENDING if action is Action.FAIL else target  # retries are left (0 of 3 used)
            assert change.task.status == want, (status, action)
            assert change.previous == before and change.action == action.value
            assert await audit_count(env, task_id) == audits + 1  # the delegation row has its own id


async def test_the_happy_path_stamps_each_step(env) -> None:
    task = await create(env, "olivia")
    assign = await act(env, "olivia", task.task_id, "assign", to_agent_id="alice")
    assert (assign.task.status, assign.task.assigned_to) == ("assigned", "alice")
    assert assign.task.assigned_at is not None and assign.notify == {"olivia", "alice"}
    assert assign.delegation is None

    accept = await act(env, "alice", task.task_id, "accept")
    assert accept.task.status == "accepted" and accept.task.started_at is None
    start = await act(env, "alice", task.task_id, "start")
    assert start.task.status == "in_progress" and start.task.started_at is not None
    assert start.task.assigned_at == assign.task.assigned_at

    done = await act(env, "alice", task.task_id, "complete", result={"verdict": "ship it", "score": 0.9})
    assert done.task.status == "completed" and done.task.completed_at is not None
    assert done.task.result == {"verdict": "ship it", "score": 0.9}
    assert done.previous.status == "in_progress" and done.notify == {"olivia", "alice"}
    assert done.to_wire()["task"]["result"] == {"verdict": "ship it", "score": 0.9}
    assert done.to_wire()["previous_status"] == "in_progress"
    assert (await get(env, task.task_id)) == done.task

    await refused(act(env, "alice", task.task_id, "fail", error="late"), ErrorCode.INVALID_TRANSITION)


async def test_start_from_assigned_accepts_and_starts_in_one_change(env) -> None:
    """The worker's short path: one transition, one audit row, stamped as a start after accept."""
    task = await create(env, "olivia", assign_to="alice")
    audits = await audit_count(env, task.task_id)
    start = await act(env, "alice", task.task_id, "start")
    assert (start.action, start.previous.status, start.task.status) == ("start", "assigned", "in_progress")
    assert start.task.started_at is not None and start.task.assigned_at == task.assigned_at
    assert start.to_wire()["previous_status"] == "assigned"
    assert await audit_count(env, task.task_id) == audits + 1
    # Only the assignee may: the creator starting it is refused and changes nothing.
    other = await create(env, "olivia", assign_to="alice")
    error = await refused(act(env, "olivia", other.task_id, "start"), ErrorCode.INVALID_TRANSITION)
    assert error.details == {"status": "assigned", "action": "start"}
    assert await get(env, other.task_id) == other


async def test_complete_and_fail_count_on_the_assignees_registry_entry_in_the_same_change(env) -> None:
    """The health counters move in the transition's own statement; an unregistered assignee
    (bob) has no entry and its outcomes count nowhere."""
    await env.admin.execute("INSERT INTO agents (tenant_id, agent_id, name) VALUES ($1, 'alice', 'Alice')", TENANT_A)
    counters = "SELECT tasks_completed, tasks_failed, consecutive_failures FROM agents WHERE agent_id = $1"
    for outcome, kwargs in (("fail", {"error": "boom"}), ("fail", {"error": "again"}), ("complete", {"result": {}})):
        task = await create(env, "olivia", assign_to="alice", max_retries=0)
        await act(env, "alice", task.task_id, "start")
        await act(env, "alice", task.task_id, outcome, **kwargs)
        if outcome == "fail":
            failed = tuple(await env.admin.fetchrow(counters, "alice"))
    assert failed == (0, 2, 2)
    assert tuple(await env.admin.fetchrow(counters, "alice")) == (1, 2, 0)  # a completion ends the run
    task = await create(env, "olivia", assign_to="bob")
    await act(env, "bob", task.task_id, "start")
    assert (await act(env, "bob", task.task_id, "complete", result={})).task.status == "completed"
    assert await env.admin.fetchval("SELECT count(*) FROM agents WHERE agent_id = 'bob'") == 0


async def test_reject_then_reassign_then_cancel(env) -> None:
    task = await create(env, "alice", assign_to="bob")
    rejected = await act(env, "bob", task.task_id, "reject", reason="busy")
    assert rejected.task.status == "rejected"
    reassigned = await act(env, "alice", task.task_id, "assign", to_agent_id="carl")
    assert (reassigned.task.status, reassigned.task.assigned_to) == ("assigned", "carl")
    assert reassigned.notify == {"alice", "bob", "carl"}
    cancelled = await act(env, "alice", task.task_id, "cancel")
    assert cancelled.task.status == "cancelled" and cancelled.task.completed_at is not None
    for agent, action in (("carl", "accept"), ("alice", "assign"), ("olivia", "cancel")):
        await refused(act(env, agent, task.task_id, action, to_agent_id="dave"), ErrorCode.INVALID_TRANSITION)


async def test_complete_refuses_a_result_that_is_not_an_object(env) -> None:
    task = await create(env)
    await walk(env, task.task_id, *started("alice"))
    error = await refused(act(env, "alice", task.task_id, "complete", result=[1, 2]), ErrorCode.INVALID_MESSAGE)
    assert field_of(error) == "result"
    assert (await get(env, task.task_id)).status == "in_progress"


async def test_bad_arguments_are_invalid_messages_naming_the_field(env) -> None:
    task = await create(env)
    for kwargs, action, field in (
        ({}, "assign", "agent_id"),
        ({}, "delegate", "agent_id"),
        ({"to_agent_id": "bob", "delegation_type": "sideways"}, "delegate", "delegation_type"),
        ({"error": ""}, "fail", "error"),
    ):
        error = await refused(act(env, "olivia", task.task_id, action, **kwargs), ErrorCode.INVALID_MESSAGE)
        assert field_of(error) == field
    for action in ("explode", "timeout"):  # no agent times a task out: the sweep does
        await refused(act(env, "olivia", task.task_id, action), ErrorCode.UNKNOWN_TYPE)


# --- who may act -------------------------------------------------------------------------------


async def test_only_the_assignee_accepts_starts_completes_and_fails(env) -> None:
    task = await create(env, "olivia", assign_to="alice")
    for agent in ("bob", "olivia", "adam"):
        await refused(act(env, agent, task.task_id, "accept"), ErrorCode.INVALID_TRANSITION)
        await refused(act(env, agent, task.task_id, "reject"), ErrorCode.INVALID_TRANSITION)
    await act(env, "alice", task.task_id, "accept")
    await refused(act(env, "bob", task.task_id, "start"), ErrorCode.INVALID_TRANSITION)
    await act(env, "alice", task.task_id, "start")
    for agent in ("bob", "olivia"):
        await refused(act(env, agent, task.task_id, "complete", result={}), ErrorCode.INVALID_TRANSITION)
        await refused(act(env, agent, task.task_id, "fail", error="no"), ErrorCode.INVALID_TRANSITION)
    assert (await get(env, task.task_id)).status == "in_progress"


async def test_a_member_cannot_cancel_or_assign_anothers_task_but_may_claim_it(env) -> None:
    task = await create(env, "alice")
    await refused(act(env, "bob", task.task_id, "cancel"), ErrorCode.INVALID_TRANSITION)
    await refused(act(env, "bob", task.task_id, "assign", to_agent_id="carl"), ErrorCode.INVALID_TRANSITION)
    claim = await act(env, "bob", task.task_id, "assign", to_agent_id="bob")
    assert (claim.task.status, claim.task.assigned_to) == ("assigned", "bob")
    assert claim.notify == {"alice", "bob"}
    # Claimed: a second claim is not an assignment the status allows any more.
    await refused(act(env, "carl", task.task_id, "assign", to_agent_id="carl"), ErrorCode.INVALID_TRANSITION)
    await refused(act(env, "bob", task.task_id, "cancel"), ErrorCode.INVALID_TRANSITION)


async def test_managers_and_the_creator_cancel_and_assign(env) -> None:
    for manager in ("olivia", "adam"):
        task = await create(env, "alice", assign_to="bob")
        assert (await act(env, manager, task.task_id, "cancel")).task.status == "cancelled"
    task = await create(env, "alice")
    assert (await act(env, "adam", task.task_id, "assign", to_agent_id="carl")).task.assigned_to == "carl"
    assert (await act(env, "alice", task.task_id, "cancel")).task.status == "cancelled"


async def test_concurrent_claims_of_one_task_leave_exactly_one_winner(env) -> None:
    task = await create(env, "olivia")
    claimants = ["alice", "bob", "carl", "dave"]
    outcomes = await asyncio.gather(
        *(act(env, agent, task.task_id, "assign", to_agent_id=agent) for agent in claimants), return_exceptions=True
    )
    winners = [o.task.assigned_to for o in outcomes if isinstance(o, tasks.TaskChange)]
    losers = [o for o in outcomes if isinstance(o, TandemError)]
    assert len(winners) == 1 and len(losers) == len(claimants) - 1
    assert all(e.code is ErrorCode.INVALID_TRANSITION for e in losers)
    assert (await get(env, task.task_id)).assigned_to == winners[0]


# --- retries -----------------------------------------------------------------------------------


async def test_fail_with_retries_left_requeues_and_at_the_limit_fails(env) -> None:
    task = await create(env, "olivia", max_retries=2)
    for attempt, worker in enumerate(("alice", "bob"), start=1):
        await walk(env, task.task_id, *started(worker))
        failed = await act(env, worker, task.task_id, "fail", error=f"crash {attempt}")
        assert failed.task.status == "pending"
        assert failed.task.retry_count == attempt
        assert failed.task.assigned_to is None and failed.task.assigned_at is None
        assert failed.task.started_at is None and failed.task.completed_at is None
        assert failed.task.error == f"crash {attempt}"
        assert failed.notify == {"olivia", worker}
    await walk(env, task.task_id, *started("carl"))
    final = await act(env, "carl", task.task_id, "fail", error="crash 3")
    assert (final.task.status, final.task.retry_count, final.task.error) == ("failed", 2, "crash 3")
    assert final.task.completed_at is not None and final.task.assigned_to == "carl"


async def test_no_retries_fails_at_once(env) -> None:
    task = await create(env, "olivia", max_retries=0)
    await walk(env, task.task_id, *started("alice"))
    assert (await act(env, "alice", task.task_id, "fail", error="no")).task.status == "failed"


# --- delegation ----------------------------------------------------------------------------------


async def test_delegation_chain_is_recorded_in_order_with_types(env) -> None:
    task = await create(env, "olivia", assign_to="alice")
    chain = [("alice", "bob", "manual"), ("bob", "carl", "automatic"), ("carl", "dave", "load_balance")]
    for source, target, kind in chain:
        change = await act(env, source, task.task_id, "delegate", to_agent_id=target, delegation_type=kind,
                           reason=f"{source} hands over")  # fmt: skip
        assert (change.task.status, change.task.assigned_to) == ("assigned", target)
        assert change.notify == {"olivia", source, target}
        assert change.delegation is not None
        assert (change.delegation.from_agent_id, change.delegation.to_agent_id) == (source, target)
        assert change.to_wire()["delegation"]["delegation_type"] == kind

    async with tx(env.pool, "dave") as conn:
        history = await tasks.delegations(conn, task.task_id, LIMIT)
        first_two = await tasks.delegations(conn, task.task_id, 2)
    assert [(d.from_agent_id, d.to_agent_id, d.delegation_type) for d in history] == chain
    assert [d.reason for d in history] == ["alice hands over", "bob hands over", "carl hands over"]
    assert history[:2] == first_two
    assert history[0].delegated_at < history[1].delegated_at < history[2].delegated_at
    wire = history[0].to_wire()
    assert list(wire) == [
        "delegation_id", "task_id", "from_agent_id", "to_agent_id", "delegation_type", "reason", "delegated_at"
    ]
    assert wire["task_id"] == str(task.task_id) and wire["delegated_at"].endswith("Z")


async def test_delegating_an_unassigned_task_comes_from_the_actor(env) -> None:
    task = await create(env, "alice")
    change = await act(env, "alice", task.task_id, "delegate", to_agent_id="bob")
    assert change.delegation is not None and change.delegation.from_agent_id == "alice"
    assert change.delegation.delegation_type == "manual"
    # An in-progress task delegated by its creator restarts with the new assignee.
    await walk(env, task.task_id, ("bob", "accept", {}), ("bob", "start", {}))
    moved = await act(env, "alice", task.task_id, "delegate", to_agent_id="carl")
    assert moved.delegation is not None and moved.delegation.from_agent_id == "bob"
    assert moved.task.started_at is None and moved.task.status == "assigned"
    # Neither the creator, the assignee nor a manager: refused.
    await refused(act(env, "dave", task.task_id, "delegate", to_agent_id="dave"), ErrorCode.INVALID_TRANSITION)
