"""Tasks end to end on one node (docs/protocol.md section 12.4): walked through their transition
table over the wire (server/workspaces/task_rules.py) with their events, listed and counted, and
timed out by the sweep.

Each module has one server (every test makes its own workspaces and agents), started with a fast
task sweep and a short lock release grace period (tests/e2e/coordination_peers.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.e2e.coordination_peers import (  # noqa: F401  (the fixtures the tests take)
    SWEEP_INTERVAL_S,
    Connect,
    Frame,
    Peer,
    connect,
    server,
    workspace,
)

# --- tasks -------------------------------------------------------------------------------------


def changed(task_id: str, action: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == "task.changed" and f["task"]["task_id"] == task_id and f["action"] == action


async def told(peers: tuple[Peer, ...], task: Frame, action: str, by: Peer) -> list[Frame]:
    """Each of `peers` gets one task.changed for `action` on `task`, carrying the task as the
    actor's reply had it."""
    events = [await peer.take(changed(task["task_id"], action)) for peer in peers]
    for event in events:
        assert event["task"]["status"] == task["status"], event
        assert event["task"]["assigned_to"] == task["assigned_to"], event
        assert event["agent_id"] == by.id
    return events


async def act(actor: Peer, action: str, task_id: str, **fields: Any) -> Frame:
    reply = await actor.request(f"task.{action}", task_id=task_id, **fields)
    assert reply["type"] == f"task.{action}.ok"
    return reply["task"]


async def test_task_walk_over_the_wire(connect: Connect) -> None:
    owner, worker, third, helper, outsider = [
        await connect(n) for n in ("owner", "worker", "third", "helper", "outsider")
    ]
    ws_id = await workspace(owner, worker, third, helper)  # the outsider is connected, never joins
    watchers = (owner, worker, third)  # creator, assignee, a third joined member

    # Created without an assignee: pending. Then every action of the table in a legal order.
    created = (await owner.request("task.create", workspace_id=ws_id, title="Walk", priority="high"))["task"]
    assert (created["status"], created["assigned_to"], created["created_by"]) == ("pending", None, owner.id)
    assert created["workspace_id"] == ws_id
    t1 = created["task_id"]
    await told(watchers, created, "create", owner)
    steps: list[tuple[Peer, str, dict[str, Any], str]] = [
        (owner, "assign", {"agent_id": worker.id}, "assigned"),
        (worker, "accept", {}, "accepted"),
        (worker, "reject", {"reason": "busy"}, "rejected"),
        (owner, "assign", {"agent_id": worker.id}, "assigned"),  # reassign after the rejection
        (worker, "accept", {}, "accepted"),
        (worker, "start", {}, "in_progress"),
        (worker, "complete", {"result": {"answer": 42}}, "completed"),
    ]
    for actor, action, fields, status in steps:
        task = await act(actor, action, t1, **fields)
        assert task["status"] == status, (action, task)
        await told(watchers, task, action, actor)
    assert task["assigned_to"] == worker.id
    assert task["result"] == {"answer": 42}
    assert task["started_at"] is not None and task["completed_at"] is not None

    # Illegal: starting a completed task; a non-assignee accepting; a mere assignee cancelling.
    error = await worker.error("task.start", task_id=t1)
    assert error["code"] == "invalid_transition"
    assert error["details"] == {"status": "completed", "action": "start"}
    t2_task = (await owner.request("task.create", workspace_id=ws_id, title="Assigned", assign_to=worker.id))["task"]
    assert (t2_task["status"], t2_task["assigned_to"]) == ("assigned", worker.id)
    t2 = t2_task["task_id"]
    await told(watchers, t2_task, "create", owner)
    error = await third.error("task.accept", task_id=t2)
    assert (error["code"], error["details"]) == ("invalid_transition", {"status": "assigned", "action": "accept"})
    assert (await worker.error("task.cancel", task_id=t2))["code"] == "invalid_transition"
    assert (await owner.request("task.get", task_id=t2))["task"]["status"] == "assigned"

    # Failure with a retry left: back to pending, unassigned, retry_count + 1; the last one fails.
    t3_task = (await owner.request("task.create", workspace_id=ws_id, title="Flaky", assign_to=worker.id, max_retries=1))["task"]
    t3 = t3_task["task_id"]
    await act(worker, "accept", t3)
    await act(worker, "start", t3)
    retried = await act(worker, "fail", t3, error="first try broke")
    assert (retried["status"], retried["retry_count"], retried["assigned_to"]) == ("pending", 1, None)
    assert retried["error"] == "first try broke"
    # The worker was the assignee before the failure: it hears of it, like the creator and the workspace.
    await told(watchers, retried, "fail", worker)
    await act(owner, "assign", t3, agent_id=worker.id)
    await act(worker, "accept", t3)
    await act(worker, "start", t3)
    failed = await act(worker, "fail", t3, error="second try broke")
    assert (failed["status"], failed["retry_count"], failed["error"]) == ("failed", 1, "second try broke")
    await told(watchers, failed, "fail", worker)

    # Cancel a pending task.
    t4 = (await owner.request("task.create", workspace_id=ws_id, title="Dropped"))["task"]["task_id"]
    cancelled = await act(owner, "cancel", t4, reason="not needed")
    assert cancelled["status"] == "cancelled"
    await told(watchers, cancelled, "cancel", owner)

    # An assignee that has not joined the workspace still hears of its task.
    t5_task = (await owner.request("task.create", workspace_id=ws_id, title="For the outsider", assign_to=outsider.id))["task"]
    await told((owner, outsider, third), t5_task, "create", owner)

    # Delegation chain worker -> third -> helper -> outsider, started by the creator handing the
    # unassigned task to the worker; one delegation type each, recorded in order.
    t6 = (await owner.request("task.create", workspace_id=ws_id, title="Passed on"))["task"]["task_id"]
    chain = [
        (owner, worker, "manual"),
        (worker, third, "automatic"),
        (third, helper, "failover"),
        (helper, outsider, "load_balance"),
    ]
    for actor, target, kind in chain:
        task = await act(actor, "delegate", t6, agent_id=target.id, delegation_type=kind, reason=f"to {target.id}")
        assert (task["status"], task["assigned_to"]) == ("assigned", target.id)
        # The creator, the new assignee (the outsider too) and the workspace hear of it.
        for peer in dict.fromkeys((owner, target, third)):  # each once (the third may be the target)
            to = target.id
            event = await peer.take(lambda f, to=to: changed(t6, "delegate")(f) and f["task"]["assigned_to"] == to)
            assert event["delegation"]["to_agent_id"] == target.id
            assert event["delegation"]["delegation_type"] == kind
            assert event["task"]["assigned_to"] == target.id
    got = await owner.request("task.get", task_id=t6)
    assert got["task"]["assigned_to"] == outsider.id
    assert [(d["from_agent_id"], d["to_agent_id"], d["delegation_type"]) for d in got["delegations"]] == [
        (actor.id, target.id, kind) for actor, target, kind in chain
    ]
    assert all(d["task_id"] == t6 for d in got["delegations"])

    # Nothing about this workspace's tasks reached the outsider except its own task's events.
    assert {f["task"]["task_id"] for f in outsider.received(lambda f: f["type"] == "task.changed")} <= {t5_task["task_id"], t6}


async def test_task_list_filters_and_stats(connect: Connect) -> None:
    owner, worker, other = [await connect(n) for n in ("owner", "worker", "other")]
    ws_id = await workspace(owner, worker, other)

    async def create(title: str, **fields: Any) -> str:
        return (await owner.request("task.create", workspace_id=ws_id, title=title, **fields))["task"]["task_id"]

    parent = await create("parent", priority="high", assign_to=worker.id)
    child_low = await create("child low", priority="low", parent_task_id=parent)
    child_critical = await create("child critical", priority="critical", parent_task_id=parent, assign_to=other.id)
    done = await create("done", assign_to=worker.id)
    for action in ("accept", "start"):
        await act(worker, action, done)
    await act(worker, "complete", done, result={"ok": True})

    async def listed(**filters: Any) -> list[str]:
        reply = await owner.request("task.list", workspace_id=ws_id, **filters)
        assert reply["truncated"] is False
        return [t["task_id"] for t in reply["tasks"]]

    assert set(await listed()) == {parent, child_low, child_critical, done}
    assert set(await listed(assigned_to=worker.id)) == {parent, done}
    assert await listed(status=["completed"]) == [done]
    assert set(await listed(status=["pending", "assigned"])) == {parent, child_low, child_critical}
    assert await listed(priority=["critical", "high"]) == [child_critical, parent]  # critical first
    assert set(await listed(parent_task_id=parent)) == {child_low, child_critical}
    assert await listed(parent_task_id=parent, assigned_to=other.id) == [child_critical]
    assert await listed(created_by=worker.id) == []
    cut = await owner.request("task.list", workspace_id=ws_id, limit=1)
    assert (len(cut["tasks"]), cut["truncated"]) == (1, True)

    stats = await owner.request("task.stats", workspace_id=ws_id)
    workload = {row["agent_id"]: row for row in stats["workload"]}
    assert set(workload) == {owner.id, worker.id, other.id}  # each member, idle ones as zeros
    assert (workload[worker.id]["pending_tasks"], workload[worker.id]["completed_24h"]) == (1, 1)
    assert (workload[other.id]["pending_tasks"], workload[owner.id]["pending_tasks"]) == (1, 0)
    assert stats["statistics"], stats
    completed = [r for r in stats["statistics"] if (r["status"], r["priority"]) == ("completed", "normal")]
    assert completed and completed[0]["count"] >= 1 and completed[0]["avg_duration_s"] is not None


async def test_started_task_past_its_timeout_becomes_timeout(connect: Connect) -> None:
    owner, worker = await connect("owner"), await connect("worker")
    ws_id = await workspace(owner, worker)
    task_id = (await owner.request("task.create", workspace_id=ws_id, title="Slow", assign_to=worker.id, timeout_s=1))["task"]["task_id"]
    await act(worker, "accept", task_id)
    started = await act(worker, "start", task_id)
    assert (started["status"], started["timeout_s"]) == ("in_progress", 1)

    event = await owner.take(changed(task_id, "timeout"), timeout_s=15)
    assert (event["task"]["status"], event["agent_id"]) == ("timeout", "system")
    assert (await owner.request("task.get", task_id=task_id))["task"]["status"] == "timeout"
    # Proving a second event does NOT come needs a bounded wait: several sweep periods.
    await asyncio.sleep(5 * SWEEP_INTERVAL_S)
    assert owner.received(changed(task_id, "timeout")) == []
