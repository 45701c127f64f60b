"""Coordination on one node end to end (docs/protocol.md section 12): tasks walked through
their transition table over the wire (server/workspaces/task_rules.py) with their events, the timeout sweep,
bad input with its documented codes, leased locks with fences (on the node's view and in the write
path), a disconnected holder's locks, and member management applied to open sessions.

One server serves the whole module (every test makes its own workspaces and agents), started with
a fast task sweep and a short lock release grace period so those tests stay quick.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import (
    Tandem,
    admin_fetch,
    eventually,
    log_events,
    operation_count,
    replayed_text,
    shared_doc,
)

Frame = dict[str, Any]

SWEEP_INTERVAL_S = 0.2
RELEASE_GRACE_S = 0.5


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start(
        TANDEM_TASK_SWEEP_INTERVAL_S=str(SWEEP_INTERVAL_S),
        TANDEM_LOCK_RELEASE_GRACE_S=str(RELEASE_GRACE_S),
    )
    yield module_tandem


# --- agents that keep every event --------------------------------------------------------------


class Peer:
    """A connected agent, its id, and the events it received but no check has taken yet.

    `take` consumes the first matching event and keeps the others, so checks made in any order
    never drop an event another check needs (wsclient's `Agent.event` drops what it skips).
    """

    def __init__(self, agent: wsclient.Agent) -> None:
        assert agent.hello is not None
        self.agent = agent
        self.id: str = agent.hello["agent_id"]
        self.session_id: str = agent.hello["session_id"]
        self.kept: list[Frame] = []

    async def reply(self, type_: str, **fields: Any) -> Frame:
        """The reply to a request, error or not. Sent through `send_request` because
        `Agent.request` takes `timeout_s` as its own argument, and task.create has that field."""
        _, future = await self.agent.send_request(type_, **fields)
        return await asyncio.wait_for(future, 30)

    async def request(self, type_: str, **fields: Any) -> Frame:
        frame = await self.reply(type_, **fields)
        if frame["type"] == "error":
            raise wsclient.ReplyError(frame)
        return frame

    async def error(self, type_: str, **fields: Any) -> Frame:
        frame = await self.reply(type_, **fields)
        assert frame["type"] == "error", f"{type_} succeeded: {frame}"
        return frame

    def _drain(self) -> None:
        while not self.agent.events.empty():
            self.kept.append(self.agent.events.get_nowait())

    async def take(self, predicate: Callable[[Frame], bool], timeout_s: float = 10) -> Frame:
        self._drain()
        for i, frame in enumerate(self.kept):
            if predicate(frame):
                return self.kept.pop(i)
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.agent.events.get()
                if predicate(frame):
                    return frame
                self.kept.append(frame)

    def received(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """What arrived so far and matches (not consumed)."""
        self._drain()
        return [f for f in self.kept if predicate(f)]


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect(server: Tandem) -> AsyncIterator[Connect]:
    """`await connect("name", tenant=TENANT_A)`: a connected Peer with an agent id unique to this
    test (`agent_id="..."` to choose one); all closed at teardown."""
    tag = uuid.uuid4().hex[:8]
    agents: list[wsclient.Agent] = []

    async def make(name: str, tenant: uuid.UUID = TENANT_A, agent_id: str | None = None) -> Peer:
        agent = await server.agent(tenant, agent_id or f"{name}-{tag}").connect()
        agents.append(agent)
        return Peer(agent)

    yield make
    for agent in agents:
        await agent.close()


async def workspace(owner: Peer, *others: Peer, visibility: str = "team") -> str:
    """`owner` creates a workspace; it and `others` join it."""
    ws_id = (await owner.request("workspace.create", name="Coordination", visibility=visibility))["workspace"]["workspace_id"]
    for peer in (owner, *others):
        await peer.request("workspace.join", workspace_id=ws_id)
    return ws_id


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


# --- bad input ---------------------------------------------------------------------------------


def without_re(frame: Frame) -> Frame:
    return {k: v for k, v in frame.items() if k != "re"}


async def test_unknown_and_other_tenants_task_ids_get_not_found(connect: Connect) -> None:
    owner = await connect("owner")
    ws_id = await workspace(owner)
    theirs_owner = await connect("theirs", tenant=TENANT_B)
    theirs_ws = await workspace(theirs_owner)
    theirs = (await theirs_owner.request("task.create", workspace_id=theirs_ws, title="Tenant B's"))["task"]["task_id"]
    unknown = str(uuid.uuid4())
    for type_, fields in (
        ("task.get", {}),
        ("task.start", {}),
        ("task.cancel", {}),
        ("task.assign", {"agent_id": owner.id}),
        ("task.delegate", {"agent_id": owner.id}),
    ):
        replies = [await owner.error(type_, task_id=task_id, **fields) for task_id in (theirs, unknown)]
        assert replies[0]["code"] == "not_found", (type_, replies)
        assert without_re(replies[0]) == without_re(replies[1])  # "theirs" and "unknown" look alike
    # Tenant B's task is untouched.
    assert (await theirs_owner.request("task.get", task_id=theirs))["task"]["status"] == "pending"
    mine = (await owner.request("task.create", workspace_id=ws_id, title="Pending"))["task"]["task_id"]
    error = await owner.error("task.complete", task_id=mine, result={})
    assert (error["code"], error["details"]) == ("invalid_transition", {"status": "pending", "action": "complete"})


async def state_row(server: Tandem, ws_id: str) -> tuple[int, Any]:
    rows = await admin_fetch(server.db, "SELECT coalesce(state_version, 1), state::text FROM workspaces WHERE id = $1", uuid.UUID(ws_id))
    return rows[0][0], rows[0][1]


async def test_bad_state_updates_get_invalid_patch_and_invalid_state(server: Tandem, connect: Connect) -> None:
    owner = await connect("owner")
    ws_id = await workspace(owner)
    version = (await owner.request("state.get", workspace_id=ws_id))["version"]
    ok = await owner.request("state.update", workspace_id=ws_id, expected_version=version, mode="replace", value={"a": 2})
    version = ok["version"]
    before = await state_row(server, ws_id)
    assert before[0] == version

    failing_test = [{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 3}]
    error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="patch", patch=failing_test)
    assert error["code"] == "invalid_patch", error
    for value in (5, [1]):
        error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="replace", value=value)
        assert error["code"] == "invalid_state", (value, error)
    root_to_string = [{"op": "replace", "path": "", "value": "not an object"}]
    error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="patch", patch=root_to_string)
    assert error["code"] == "invalid_state", error

    assert await state_row(server, ws_id) == before
    got = await owner.request("state.get", workspace_id=ws_id)
    assert (got["version"], got["state"]) == (version, {"a": 2})


async def test_bad_lock_requests_get_invalid_message(connect: Connect) -> None:
    owner = await connect("owner")
    ws_id, doc_id = await shared_doc(owner.agent)
    for fields in ({"doc_id": doc_id, "name": "deploy"}, {}, {"name": "deploy", "ttl_ms": 5}, {"doc_id": doc_id, "ttl_ms": 5}):
        error = await owner.error("lock.acquire", workspace_id=ws_id, **fields)
        assert error["code"] == "invalid_message", (fields, error)
    assert (await owner.request("lock.list", workspace_id=ws_id))["locks"] == []


async def lock_columns(server: Tandem, doc_id: str) -> tuple[Any, ...]:
    rows = await admin_fetch(
        server.db,
        "SELECT is_locked, locked_by, locked_at, lock_expires_at, lock_fence FROM shared_documents WHERE id = $1",
        uuid.UUID(doc_id),
    )
    return tuple(rows[0])


async def test_viewer_writes_are_forbidden_and_nothing_is_stored(server: Tandem, connect: Connect) -> None:
    owner = await connect("owner")
    viewer = await connect("viewer")
    ws_id, doc_id = await shared_doc(owner.agent, visibility="private")
    added = await owner.request("member.add", workspace_id=ws_id, agent_id=viewer.id, role="viewer")
    assert added["member"]["role"] == "viewer"
    joined = await viewer.request("workspace.join", workspace_id=ws_id)
    assert joined["role"] == "viewer"
    writing = await owner.agent.open(doc_id)
    await writing.edit(lambda t: t.insert(0, "owner's text."))
    reading = await viewer.agent.open(doc_id)
    assert str(reading.text) == "owner's text."

    rows, state, locks = await operation_count(server.db, doc_id), await state_row(server, ws_id), await lock_columns(server, doc_id)
    tasks_before = await admin_fetch(server.db, "SELECT count(*) FROM tasks WHERE workspace_id = $1", uuid.UUID(ws_id))

    update = wsclient.b64(reading.local_update(lambda t: t.insert(0, "viewer was here. ")))
    attempts = [
        ("doc.update", {"doc_id": doc_id, "update": update}),
        ("state.update", {"workspace_id": ws_id, "expected_version": state[0], "mode": "replace", "value": {"v": 1}}),
        ("lock.acquire", {"workspace_id": ws_id, "doc_id": doc_id}),
        ("lock.acquire", {"workspace_id": ws_id, "name": "deploy"}),
        ("task.create", {"workspace_id": ws_id, "title": "Viewer's task"}),
    ]
    for type_, fields in attempts:
        error = await viewer.error(type_, **fields)
        assert error["code"] == "forbidden", (type_, error)

    assert await operation_count(server.db, doc_id) == rows
    assert await state_row(server, ws_id) == state
    assert await lock_columns(server, doc_id) == locks
    assert await admin_fetch(server.db, "SELECT count(*) FROM tasks WHERE workspace_id = $1", uuid.UUID(ws_id)) == tasks_before
    assert await admin_fetch(server.db, "SELECT count(*) FROM workspace_locks WHERE workspace_id = $1", uuid.UUID(ws_id)) == [(0,)]
    assert (await owner.request("lock.list", workspace_id=ws_id))["locks"] == []
    assert "viewer was here" not in await replayed_text(server.db, doc_id)


# --- locks on one node -------------------------------------------------------------------------


def scratch_update(doc: wsclient.SyncedDoc, fn: Callable[[Text], Any]) -> str:
    """An edit made on a copy of `doc` (b64): when the server refuses it, `doc` stays exactly
    what the server holds, so later edits from it are sound."""
    copy = Doc()
    copy.apply_update(doc.doc.get_update())
    text = copy.get("content", type=Text)
    before = copy.get_state()
    fn(text)
    return wsclient.b64(copy.get_update(before))


async def fenced_edit(doc: wsclient.SyncedDoc, fn: Callable[[Text], Any], fence: int) -> Frame:
    """Apply `fn` locally and send it with the lock's `fence`; returns the ack."""
    assert doc.agent is not None
    update = doc.local_update(fn)
    return await doc.agent.request("doc.update", doc_id=doc.doc_id, update=wsclient.b64(update), fence=fence)


def lock_event(type_: str, holder: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == type_ and f["lock"]["holder"] == holder


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_document_lock_refuses_other_writers_until_released(server: Tandem, connect: Connect) -> None:
    a, b, c = await connect("a"), await connect("b"), await connect("c")
    ws_id, doc_id = await shared_doc(a.agent, b.agent, c.agent)
    da, db_ = await a.agent.open(doc_id), await b.agent.open(doc_id)
    await da.edit(lambda t: t.insert(0, "start."))
    await db_.wait_for(lambda d: str(d.text) == "start.")

    lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=30_000))["lock"]
    assert (lock["holder"], lock["doc_id"], lock["name"], lock["workspace_id"]) == (a.id, doc_id, None, ws_id)
    assert lock["fence"] >= 1 and when(lock["expires_at"]) > when(lock["locked_at"])
    for peer in (b, c):  # every joined session hears of it
        assert (await peer.take(lock_event("lock.acquired", a.id)))["lock"] == lock

    error = await b.error("lock.acquire", workspace_id=ws_id, doc_id=doc_id)
    assert (error["code"], error["details"]["holder"]) == ("locked", a.id)
    rows = await operation_count(server.db, doc_id)
    error = await b.error("doc.update", doc_id=doc_id, update=scratch_update(db_, lambda t: t.insert(0, "B while locked. ")))
    assert (error["code"], error["details"]["holder"]) == ("locked", a.id)
    assert await operation_count(server.db, doc_id) == rows

    ack = await fenced_edit(da, lambda t: t.insert(len(t), " A holds it."), lock["fence"])
    assert ack["seq"] == rows + 1
    await db_.wait_for(lambda d: str(d.text) == "start. A holds it.")

    released = await a.request("lock.release", workspace_id=ws_id, doc_id=doc_id, fence=lock["fence"])
    assert released["lock"]["holder"] == a.id
    event = await b.take(lock_event("lock.released", a.id))
    assert (event["reason"], event["lock"]["fence"]) == ("released", lock["fence"])
    await db_.edit(lambda t: t.insert(0, "B after. "))
    await da.wait_for(lambda d: str(d.text) == "B after. start. A holds it.")
    await da.edit(lambda t: t.insert(len(t), " A again."))  # anyone, the old holder too, without a fence
    await db_.wait_for(lambda d: str(d.text) == str(da.text))
    assert await replayed_text(server.db, doc_id) == "B after. start. A holds it. A again."
    assert (await a.request("lock.list", workspace_id=ws_id))["locks"] == []


async def test_renew_extends_and_reacquire_makes_the_old_fence_stale(server: Tandem, connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)
    da, db_ = await a.agent.open(doc_id), await b.agent.open(doc_id)

    first = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=10_000))["lock"]
    renewed = (await a.request("lock.renew", workspace_id=ws_id, doc_id=doc_id, fence=first["fence"], ttl_ms=60_000))["lock"]
    assert renewed["fence"] == first["fence"]
    assert when(renewed["expires_at"]) > when(first["expires_at"])
    assert (await b.take(lock_event("lock.renewed", a.id)))["lock"]["expires_at"] == renewed["expires_at"]

    second = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=30_000))["lock"]
    assert second["fence"] > first["fence"]
    rows = await operation_count(server.db, doc_id)
    error = await a.error("doc.update", doc_id=doc_id, update=scratch_update(da, lambda t: t.insert(0, "old fence ")), fence=first["fence"])
    assert error["code"] == "stale_fence", error
    assert await operation_count(server.db, doc_id) == rows
    for type_ in ("lock.renew", "lock.release"):
        error = await a.error(type_, workspace_id=ws_id, doc_id=doc_id, fence=first["fence"])
        assert error["code"] == "stale_fence", (type_, error)
    error = await b.error("lock.renew", workspace_id=ws_id, doc_id=doc_id, fence=second["fence"])  # not b's
    assert error["code"] == "stale_fence"

    await fenced_edit(da, lambda t: t.insert(0, "new fence."), second["fence"])
    await db_.wait_for(lambda d: str(d.text) == "new fence.")
    assert await replayed_text(server.db, doc_id) == "new fence."


async def test_named_lock_has_the_same_semantics_and_lock_list_shows_both(connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)

    doc_lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id))["lock"]
    deploy = (await a.request("lock.acquire", workspace_id=ws_id, name="deploy", ttl_ms=10_000))["lock"]
    assert (deploy["name"], deploy["doc_id"], deploy["holder"]) == ("deploy", None, a.id)
    assert deploy["fence"] > doc_lock["fence"]  # one growing sequence for both kinds
    assert (await b.take(lambda f: f["type"] == "lock.acquired" and f["lock"]["name"] == "deploy"))["lock"] == deploy
    error = await b.error("lock.acquire", workspace_id=ws_id, name="deploy")
    assert (error["code"], error["details"]["holder"]) == ("locked", a.id)

    listed = (await b.request("lock.list", workspace_id=ws_id))["locks"]
    assert len(listed) == 2
    assert {(lk["doc_id"], lk["name"], lk["holder"], lk["fence"]) for lk in listed} == {
        (doc_id, None, a.id, doc_lock["fence"]),
        (None, "deploy", a.id, deploy["fence"]),
    }

    renewed = (await a.request("lock.renew", workspace_id=ws_id, name="deploy", fence=deploy["fence"], ttl_ms=60_000))["lock"]
    assert renewed["fence"] == deploy["fence"] and when(renewed["expires_at"]) > when(deploy["expires_at"])
    again = (await a.request("lock.acquire", workspace_id=ws_id, name="deploy"))["lock"]
    assert again["fence"] > deploy["fence"]
    error = await a.error("lock.release", workspace_id=ws_id, name="deploy", fence=deploy["fence"])
    assert error["code"] == "stale_fence"
    assert (await b.error("lock.release", workspace_id=ws_id, name="deploy", fence=again["fence"]))["code"] == "stale_fence"
    await a.request("lock.release", workspace_id=ws_id, name="deploy", fence=again["fence"])
    event = await b.take(lambda f: f["type"] == "lock.released" and f["lock"]["name"] == "deploy")
    assert event["reason"] == "released"

    taken = (await b.request("lock.acquire", workspace_id=ws_id, name="deploy"))["lock"]
    assert (taken["holder"], taken["fence"] > again["fence"]) == (b.id, True)
    listed = (await a.request("lock.list", workspace_id=ws_id))["locks"]
    assert {(lk["name"], lk["holder"]) for lk in listed} == {(None, a.id), ("deploy", b.id)}


async def test_expired_lock_goes_to_another_agent_and_the_old_fence_is_stale(server: Tandem, connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)
    da, db_ = await a.agent.open(doc_id), await b.agent.open(doc_id)
    old = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=300))["lock"]
    await fenced_edit(da, lambda t: t.insert(0, "A's."), old["fence"])
    await db_.wait_for(lambda d: str(d.text) == "A's.")

    expires_at = when(old["expires_at"])
    await eventually(lambda: datetime.now(UTC) > expires_at, timeout_s=5)
    new = (await b.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=30_000))["lock"]
    assert (new["holder"], new["fence"] > old["fence"]) == (b.id, True)
    await a.take(lock_event("lock.acquired", b.id))

    rows = await operation_count(server.db, doc_id)
    error = await a.error("doc.update", doc_id=doc_id, update=scratch_update(da, lambda t: t.insert(0, "late A ")), fence=old["fence"])
    assert error["code"] == "stale_fence", error
    assert await operation_count(server.db, doc_id) == rows
    await fenced_edit(db_, lambda t: t.insert(len(t), " B's."), new["fence"])
    await da.wait_for(lambda d: str(d.text) == "A's. B's.")
    assert await replayed_text(server.db, doc_id) == "A's. B's."


# --- a disconnected holder ---------------------------------------------------------------------


async def test_disconnected_holders_lock_is_released_after_the_grace_period(connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)
    lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=60_000))["lock"]
    await b.take(lock_event("lock.acquired", a.id))

    await a.agent.close()
    event = await b.take(lock_event("lock.released", a.id), timeout_s=10)
    assert (event["reason"], event["lock"]["fence"], event["lock"]["doc_id"]) == ("disconnected", lock["fence"], doc_id)
    taken = (await b.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id))["lock"]
    assert (taken["holder"], taken["fence"] > lock["fence"]) == (b.id, True)


async def test_holder_that_reconnects_and_renews_keeps_its_lock(server: Tandem, connect: Connect) -> None:
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)
    lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=60_000))["lock"]
    await b.take(lock_event("lock.acquired", a.id))
    # The holder's next session connects and joins first: the grace period (0.5 s) is short, and
    # the check is that a renewal within it keeps the lock, not how fast a reconnect is.
    again = await connect("a", agent_id=a.id)
    await again.request("workspace.join", workspace_id=ws_id)

    await a.agent.close()
    assert server.server is not None
    # Renew only once the server has ended the old session (its locks are then due for release).
    await eventually(lambda: log_events(server.server, "session.ended", conn_id=a.session_id), timeout_s=5)
    renewed = (await again.request("lock.renew", workspace_id=ws_id, doc_id=doc_id, fence=lock["fence"], ttl_ms=60_000))["lock"]
    assert (renewed["holder"], renewed["fence"]) == (a.id, lock["fence"])

    # Proving the release does NOT come needs a bounded wait: three grace periods.
    await asyncio.sleep(3 * RELEASE_GRACE_S)
    assert b.received(lambda f: f["type"] == "lock.released") == []
    listed = (await b.request("lock.list", workspace_id=ws_id))["locks"]
    assert [(lk["doc_id"], lk["holder"], lk["fence"], lk["expires_at"]) for lk in listed] == [
        (doc_id, a.id, lock["fence"], renewed["expires_at"])
    ]
    error = await b.error("lock.acquire", workspace_id=ws_id, doc_id=doc_id)
    assert (error["code"], error["details"]["holder"]) == ("locked", a.id)


# --- the write path is the authority -----------------------------------------------------------


async def test_write_path_refuses_a_lock_the_node_does_not_know(server: Tandem, connect: Connect) -> None:
    a, b, c = await connect("a"), await connect("b"), await connect("c")
    _, doc_id = await shared_doc(a.agent, b.agent, c.agent)
    da, db_ = await a.agent.open(doc_id), await b.agent.open(doc_id)  # the room is loaded
    await da.edit(lambda t: t.insert(0, "first."))
    await db_.wait_for(lambda d: str(d.text) == "first.")

    # Locked behind the node's back: no lock event, the room's view still says "free".
    await admin_fetch(
        server.db,
        "UPDATE shared_documents SET is_locked = true, locked_by = $2, locked_at = now(),"
        " lock_expires_at = now() + interval '1 minute', lock_fence = nextval('lock_fence_seq') WHERE id = $1",
        uuid.UUID(doc_id),
        a.id,
    )
    rows = await operation_count(server.db, doc_id)
    error = await b.error("doc.update", doc_id=doc_id, update=scratch_update(db_, lambda t: t.insert(len(t), " REFUSED")))
    assert (error["code"], error["details"]["holder"]) == ("locked", a.id)
    assert await operation_count(server.db, doc_id) == rows
    # Refused by the write path after the room applied it: the room rebuilds itself from the log.
    assert server.server is not None
    await eventually(lambda: log_events(server.server, "room.repaired", doc_id=doc_id), timeout_s=10)

    await admin_fetch(
        server.db,
        "UPDATE shared_documents SET is_locked = false, locked_by = NULL, locked_at = NULL, lock_expires_at = NULL WHERE id = $1",
        uuid.UUID(doc_id),
    )
    await db_.edit(lambda t: t.insert(0, "B. "))
    await da.edit(lambda t: t.insert(len(t), " A."))
    expected = "B. first. A."
    await da.wait_for(lambda d: str(d.text) == expected)
    await db_.wait_for(lambda d: str(d.text) == expected)

    log_text = await replayed_text(server.db, doc_id)
    assert log_text == expected
    dc = await c.agent.open(doc_id)  # a fresh copy from the room in memory
    assert str(dc.text) == log_text
    assert "REFUSED" not in str(dc.text)
    await dc.edit(lambda t: t.insert(len(t), " C."))
    for doc in (da, db_):
        await doc.wait_for(lambda d: str(d.text) == expected + " C.")
    assert await replayed_text(server.db, doc_id) == expected + " C."


# --- members -----------------------------------------------------------------------------------


def member_changed(agent_id: str, change: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == "member.changed" and f["member"]["agent_id"] == agent_id and f["change"] == change


async def test_member_changes_apply_to_open_sessions(server: Tandem, connect: Connect) -> None:
    owner, demoted, admin, plain, removed = [await connect(n) for n in ("owner", "demoted", "admin", "plain", "removed")]
    ws_id, doc_id = await shared_doc(owner.agent, visibility="private")
    for peer, role in ((demoted, "member"), (admin, "admin"), (plain, "member"), (removed, "member")):
        added = await owner.request("member.add", workspace_id=ws_id, agent_id=peer.id, role=role)
        assert (added["member"]["agent_id"], added["member"]["role"]) == (peer.id, role)
        assert (await peer.request("workspace.join", workspace_id=ws_id))["role"] == role
    owned = await owner.agent.open(doc_id)
    demoted_doc, removed_doc = await demoted.agent.open(doc_id), await removed.agent.open(doc_id)
    await demoted_doc.edit(lambda t: t.insert(0, "demoted wrote."))
    await removed_doc.wait_for(lambda d: str(d.text) == "demoted wrote.")

    # Made a viewer: its open session hears of it and can no longer write.
    updated = await owner.request("member.update", workspace_id=ws_id, agent_id=demoted.id, role="viewer")
    assert updated["member"]["role"] == "viewer"
    event = await demoted.take(member_changed(demoted.id, "updated"))
    assert (event["member"]["role"], event["agent_id"], event["workspace_id"]) == ("viewer", owner.id, ws_id)
    rows = await operation_count(server.db, doc_id)
    error = await demoted.error("doc.update", doc_id=doc_id, update=scratch_update(demoted_doc, lambda t: t.insert(0, "no. ")))
    assert error["code"] == "forbidden"
    assert await operation_count(server.db, doc_id) == rows

    # An admin cannot remove the owner; a member cannot add members.
    assert (await admin.error("member.remove", workspace_id=ws_id, agent_id=owner.id))["code"] == "forbidden"
    assert (await plain.error("member.add", workspace_id=ws_id, agent_id=f"friend-of-{plain.id}"))["code"] == "forbidden"
    members = {m["agent_id"]: m["role"] for m in (await owner.request("member.list", workspace_id=ws_id))["members"]}
    assert members == {owner.id: "owner", demoted.id: "viewer", admin.id: "admin", plain.id: "member", removed.id: "member"}

    # Removed: its session hears of it, leaves the workspace, and its document is closed.
    gone = await owner.request("member.remove", workspace_id=ws_id, agent_id=removed.id)
    assert gone["member"]["agent_id"] == removed.id
    event = await removed.take(member_changed(removed.id, "removed"))
    assert event["agent_id"] == owner.id
    await owner.take(member_changed(removed.id, "removed"))
    error = await removed.error("doc.update", doc_id=doc_id, update=scratch_update(removed_doc, lambda t: t.insert(0, "gone. ")))
    assert error["code"] == "doc_not_open", error
    assert await operation_count(server.db, doc_id) == rows
    assert "no. " not in str(owned.text) and "gone. " not in await replayed_text(server.db, doc_id)


async def test_lock_acquire_with_wait_ms_queues_first_come_first_served(tandem) -> None:
    """docs/protocol.md#121: `wait_ms` queues the acquisition until the lock is released or
    expires; the waiting session goes on serving its other requests; it times out with `locked`."""
    import time

    tenant = uuid.uuid4()
    tandem.start()
    async with tandem.agent(tenant, "a") as a, tandem.agent(tenant, "b") as b, tandem.agent(tenant, "c") as c:
        ws_id = (await a.request("workspace.create", name="Queue", visibility="team"))["workspace"]["workspace_id"]
        for agent in (a, b, c):
            await agent.request("workspace.join", workspace_id=ws_id)
        held = await a.request("lock.acquire", workspace_id=ws_id, name="deploy", ttl_ms=10_000)
        _, first = await b.send_request("lock.acquire", workspace_id=ws_id, name="deploy", wait_ms=10_000)
        await b.request("ping")  # b's session is not blocked by its waiting acquisition
        _, second = await c.send_request("lock.acquire", workspace_id=ws_id, name="deploy", wait_ms=10_000)
        await c.request("ping")
        assert not first.done() and not second.done()

        await a.request("lock.release", workspace_id=ws_id, name="deploy", fence=held["lock"]["fence"])
        got = await asyncio.wait_for(first, 10)
        assert got["type"] == "lock.acquire.ok" and got["lock"]["holder"] == "b" and not second.done()
        await b.request("lock.release", workspace_id=ws_id, name="deploy", fence=got["lock"]["fence"])
        got = await asyncio.wait_for(second, 10)
        assert got["type"] == "lock.acquire.ok" and got["lock"]["holder"] == "c"

        started = time.monotonic()
        err = await b.error("lock.acquire", workspace_id=ws_id, name="deploy", wait_ms=300)
        assert err["code"] == "locked" and err["details"]["holder"] == "c" and time.monotonic() - started >= 0.29

        # A lock that expires instead of being released wakes the waiter too.
        await c.request("lock.renew", workspace_id=ws_id, name="deploy", fence=got["lock"]["fence"], ttl_ms=200)
        taken = await b.request("lock.acquire", workspace_id=ws_id, name="deploy", wait_ms=5_000)
        assert taken["lock"]["holder"] == "b" and taken["lock"]["fence"] > got["lock"]["fence"]
