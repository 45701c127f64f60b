"""Tasks and delegations (server/workspaces/tasks.py) against real PostgreSQL, as the application role.

Every call but the sweep's listing of tenants runs inside `store.tenant_transaction`, so RLS
applies as in the server; the superuser connection (`admin`) only moves clocks and statuses
behind the app's back and reads the audit trail. The rules are docs/protocol.md section 12.4.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from server.db import store

from server.wire import protocol

from server.workspaces import tasks
from server.wire import protocol_coordination as pc
from server.workspaces import directory as ws
from server.db.database import create_pool
from server.core.errors import ErrorCode, TandemError
from server.workspaces.task_rules import TRANSITIONS, Action, Status
from tests.conftest import TENANT_A, TENANT_B

# Tenant A's workspace: olivia owns it, adam administers it, vera only reads. beth owns tenant B's.
ROLES = {
    "olivia": "owner", "adam": "admin", "alice": "member", "bob": "member", "carl": "member",
    "dave": "member", "vera": "viewer", "beth": "owner",
}  # fmt: skip
CLIENT_IP = "198.51.100.7"
LIMIT = 100


@dataclass
class Env:
    pool: asyncpg.Pool
    admin: asyncpg.Connection
    ws_a: uuid.UUID
    ws_b: uuid.UUID


@pytest.fixture
async def env(db, admin) -> AsyncIterator[Env]:
    pool = await create_pool(db.app_url, min_size=1, max_size=8)
    try:
        async with tx(pool, "olivia") as conn:
            ws_a = (await ws.create_workspace(conn, TENANT_A, "olivia", "Build", visibility="team")).workspace_id
            for agent, role in ROLES.items():
                if agent not in ("olivia", "beth"):
                    await ws.add_member(conn, ws_a, agent, role)
        async with tx(pool, "beth", TENANT_B) as conn:
            ws_b = (await ws.create_workspace(conn, TENANT_B, "beth", "Other")).workspace_id
        yield Env(pool, admin, ws_a, ws_b)
    finally:
        await pool.close()


def tx(pool: asyncpg.Pool, agent: str, tenant: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant, agent, CLIENT_IP)


def request(kind: str, **fields: Any) -> Any:
    """`fields` read off the wire as the server reads them (server/wire/protocol.py, where task input
    is validated): the message, or the typed error the session would send."""
    message = protocol.parse(json.dumps({"type": kind, **fields}, default=str), 1 << 20)
    if isinstance(message, protocol.ProtocolError):
        raise TandemError(message.code, details=message.details)
    return message


async def create(env: Env, agent: str = "olivia", tenant: uuid.UUID = TENANT_A, **kwargs: Any) -> tasks.Task:
    kwargs.setdefault("workspace_id", env.ws_a if tenant == TENANT_A else env.ws_b)
    kwargs.setdefault("title", "Review the plan")
    async with tx(env.pool, agent, tenant) as conn:
        return await tasks.create_task(conn, agent, ROLES.get(agent), request("task.create", **kwargs))


async def act(
    env: Env, agent: str, task_id: uuid.UUID, action: str, tenant: uuid.UUID = TENANT_A, **kwargs: Any
) -> tasks.TaskChange:
    """`action` with those of `kwargs` its message takes (`to_agent_id` is its `agent_id`)."""
    if "to_agent_id" in kwargs:
        kwargs["agent_id"] = kwargs.pop("to_agent_id")
    model = pc.TASK_ACTIONS.get(action)
    if model is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in model.model_fields}
    message = request(f"task.{action}", task_id=task_id, **kwargs)
    async with tx(env.pool, agent, tenant) as conn:
        return await tasks.transition(conn, agent, ROLES.get(agent), message)


async def get(env: Env, task_id: uuid.UUID, tenant: uuid.UUID = TENANT_A) -> tasks.Task:
    async with tx(env.pool, "olivia", tenant) as conn:
        return await tasks.get_task(conn, task_id)


async def refused(call: Awaitable[Any], code: ErrorCode) -> TandemError:
    with pytest.raises(TandemError) as info:
        await call
    assert info.value.code is code, info.value
    return info.value


def field_of(error: TandemError) -> str:
    assert error.details is not None
    return error.details["errors"][0]["field"]


async def audit_count(env: Env, record_id: uuid.UUID) -> int:
    return await env.admin.fetchval("SELECT count(*) FROM audit_log WHERE record_id = $1", record_id)


async def walk(env: Env, task_id: uuid.UUID, *steps: tuple[str, str, dict[str, Any]]) -> tasks.Task:
    """Apply (agent, action, kwargs) steps in order; returns the task after the last."""
    change = None
    for agent, action, kwargs in steps:
        change = await act(env, agent, task_id, action, **kwargs)
    assert change is not None
    return change.task


def started(assignee: str) -> list[tuple[str, str, dict[str, Any]]]:
    """From pending: olivia assigns `assignee`, who accepts and starts."""
    return [("olivia", "assign", {"to_agent_id": assignee}), (assignee, "accept", {}), (assignee, "start", {})]


# --- create ----------------------------------------------------------------------------------


async def test_create_returns_the_task_with_defaults_and_wire_shape(env) -> None:
    task = await create(env, "alice", parameters={"repo": "tandem", "depth": 2}, description="look closely")
    assert (task.status, task.priority, task.task_type, task.created_by) == ("pending", "normal", "general", "alice")
    assert (task.assigned_to, task.assigned_at, task.started_at, task.completed_at) == (None, None, None, None)
    assert (task.max_retries, task.retry_count, task.timeout_s) == (3, 0, 3600)
    assert task.parameters == {"repo": "tandem", "depth": 2} and task.result is None
    assert task.workspace_id == env.ws_a

    wire = task.to_wire()
    assert list(wire) == [
        "task_id", "workspace_id", "title", "task_type", "description", "status", "priority", "created_by",
        "assigned_to", "parent_task_id", "parameters", "result", "error", "max_retries", "retry_count",
        "timeout_s", "created_at", "assigned_at", "started_at", "completed_at", "updated_at",
    ]  # fmt: skip
    assert wire["task_id"] == str(task.task_id) and wire["workspace_id"] == str(env.ws_a)
    assert wire["created_at"].endswith("Z") and datetime.fromisoformat(wire["created_at"]) == task.created_at
    assert wire["assigned_at"] is None and wire["parent_task_id"] is None


async def test_create_with_assign_to_starts_assigned(env) -> None:
    task = await create(env, "olivia", assign_to="alice", priority="high", task_type="review", timeout_s=60)
    assert (task.status, task.assigned_to, task.priority, task.task_type, task.timeout_s) == (
        "assigned", "alice", "high", "review", 60
    )
    assert task.assigned_at is not None and task.to_wire()["assigned_at"].endswith("Z")
    assert await get(env, task.task_id) == task


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"title": "  "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"task_type": "t" * 101}, "task_type"),
        ({"priority": "urgent"}, "priority"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"parameters": ["not", "an", "object"]}, "parameters"),
        ({"parameters": {"nan": float("nan")}}, "parameters"),
    ],
)
async def test_create_refuses_values_the_schema_refuses_naming_the_field(env, kwargs, field) -> None:
    error = await refused(create(env, **kwargs), ErrorCode.INVALID_MESSAGE)
    assert field_of(error) == field


async def test_create_refuses_an_int_beyond_the_column(env) -> None:
    error = await refused(create(env, timeout_s=2**40), ErrorCode.INVALID_MESSAGE)
    assert field_of(error) == "timeout_s"


async def test_create_needs_a_live_workspace_of_this_tenant_and_a_parent_of_it(env) -> None:
    await refused(create(env, workspace_id=uuid.uuid4()), ErrorCode.NOT_FOUND)
    await refused(create(env, workspace_id=env.ws_b), ErrorCode.NOT_FOUND)  # tenant B's
    await refused(create(env, parent_task_id=uuid.uuid4()), ErrorCode.NOT_FOUND)

    async with tx(env.pool, "olivia") as conn:
        other_ws = (await ws.create_workspace(conn, TENANT_A, "olivia", "Elsewhere")).workspace_id
    foreign_parent = await create(env, workspace_id=other_ws)
    await refused(create(env, parent_task_id=foreign_parent.task_id), ErrorCode.NOT_FOUND)
    b_parent = await create(env, "beth", TENANT_B)
    await refused(create(env, parent_task_id=b_parent.task_id), ErrorCode.NOT_FOUND)

    parent = await create(env)
    child = await create(env, parent_task_id=parent.task_id, title="Part one")
    assert child.parent_task_id == parent.task_id
    assert child.to_wire()["parent_task_id"] == str(parent.task_id)

    async with tx(env.pool, "olivia") as conn:
        assert await conn.fetchval("SELECT soft_delete_task($1)", parent.task_id)
    await refused(create(env, parent_task_id=parent.task_id), ErrorCode.NOT_FOUND)
    await env.admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", other_ws)
    await refused(create(env, workspace_id=other_ws), ErrorCode.NOT_FOUND)


async def test_create_needs_a_writing_member(env) -> None:
    await refused(create(env, "vera"), ErrorCode.FORBIDDEN)
    await refused(create(env, "stranger"), ErrorCode.NOT_MEMBER)


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
