"""Coordination across two nodes end to end (docs/protocol.md section 12, server/cluster/events.py): two
`tandem serve` nodes on one database. Of 20 agents racing for a document's lock on both nodes
exactly one wins each round, fences only grow, the lock and its fence guard the write path, and
every agent sees every acquisition; 10 agents counting up through optimistic `state.update`
lose no increment; lock, state (one too large for a NOTIFY) and task events cross nodes; and
the task timeout sweep running on both nodes marks a task and tells everyone exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import eventually, shared_doc
from tests.e2e.multinode_helpers import Nodes

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestDatabase

Frame = dict[str, Any]

NOTIFY_LIMIT_BYTES = 8000  # PostgreSQL's NOTIFY payload limit (server/cluster/events.py)


# --- helpers ---------------------------------------------------------------------------------


class Inbox:
    """Every event frame an agent received, kept (`Agent.event` drops the ones it skips)."""

    def __init__(self, agent: wsclient.Agent) -> None:
        self.agent = agent
        self.frames: list[Frame] = []

    def drain(self) -> list[Frame]:
        while True:
            try:
                self.frames.append(self.agent.events.get_nowait())
            except asyncio.QueueEmpty:
                return self.frames

    def of(self, type_: str, **match: Any) -> list[Frame]:
        return [f for f in self.drain() if f["type"] == type_ and all(f.get(k) == v for k, v in match.items())]


async def connect_spread(nodes: Nodes, prefix: str, count: int) -> list[wsclient.Agent]:
    """`count` connected agents named `<prefix>-NN`, agent i on node i % 2 (checked by its hello)."""
    agents = []
    for i in range(count):
        agent = wsclient.Agent(nodes.url(i % 2), wsclient.token(TENANT_A, f"{prefix}-{i:02d}"))
        await agent.connect()
        assert agent.hello is not None and agent.hello["node_id"] == f"node-{i % 2 + 1}"
        agents.append(agent)
    return agents


async def close_all(agents: Sequence[wsclient.Agent]) -> None:
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


def loose_update(text: str) -> str:
    """A base64 update inserting `text` from a fresh pycrdt Doc: it depends on nothing, so it is
    valid whatever the server holds, and the agent's own synced copy never sees it (a refused
    update applied there would make its later, accepted updates depend on it)."""
    doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return wsclient.b64(doc.get_update())


async def op_agents(admin: asyncpg.Connection, doc_id: str) -> list[str]:
    """The agents of the document's logged operations, in seq order."""
    rows = await admin.fetch(
        "SELECT agent_id FROM document_operations WHERE document_id = $1 ORDER BY sequence_number", uuid.UUID(doc_id)
    )
    return [r["agent_id"] for r in rows]


# --- 1. lock race ----------------------------------------------------------------------------

ROUNDS = 50
EXPIRY_EVERY = 10  # every 10th round ends by the lease running out instead of lock.release
RACERS = 20
INTRUDERS = 3  # non-holders that try to write each round
TTL_MS = 2000
SHORT_TTL_MS = 300


async def test_twenty_agents_on_two_nodes_race_for_a_lock_one_wins_each_round_and_fences_guard_writes(
    nodes: Nodes, db: TestDatabase
) -> None:
    nodes.start(2)
    agents = await connect_spread(nodes, "racer", RACERS)
    names = [f"racer-{i:02d}" for i in range(RACERS)]
    inboxes = [Inbox(a) for a in agents]
    admin = await asyncpg.connect(db.admin_url)
    rng = random.Random(6)
    started = time.monotonic()
    try:
        ws_id, doc_id = await shared_doc(agents[0], *agents[1:])
        for a in agents:  # doc.update needs the document open
            await a.open(doc_id)
        lock_target = {"workspace_id": ws_id, "doc_id": doc_id}
        winners: list[tuple[int, str]] = []  # (fence, holder) of every round
        lapsed: tuple[int, int] | None = None  # (agent index, fence) of a lease that ran out

        for round_ in range(1, ROUNDS + 1):
            # Every agent asks at once: exactly one wins, the others are told who holds it.
            sent = await asyncio.gather(*(a.send_request("lock.acquire", ttl_ms=TTL_MS, **lock_target) for a in agents))
            replies = await asyncio.wait_for(asyncio.gather(*(fut for _, fut in sent)), 30)
            won = [i for i, f in enumerate(replies) if f["type"] == "lock.acquire.ok"]
            assert len(won) == 1, f"round {round_}: {[f.get('code', f['type']) for f in replies]}"
            h = won[0]
            lock = replies[h]["lock"]
            assert (lock["holder"], lock["doc_id"], lock["workspace_id"]) == (names[h], doc_id, ws_id)
            for i, f in enumerate(replies):
                if i != h:
                    assert (f["type"], f["code"], f["details"]["holder"]) == ("error", "locked", names[h]), (round_, f)
            fence = lock["fence"]
            assert not winners or fence > winners[-1][0], f"round {round_}: fence {fence} after {winners[-1][0]}"
            winners.append((fence, names[h]))

            # The holder whose lease ran out last round writes with its old fence: refused.
            if lapsed is not None:
                old, old_fence = lapsed
                err = await agents[old].error("doc.update", doc_id=doc_id, update=loose_update(f"late {round_}."),
                                              fence=old_fence)  # fmt: skip
                assert err["code"] == "stale_fence", (round_, err)
            # Non-holders write without a fence: refused, nothing stored.
            intruders = rng.sample([i for i in range(RACERS) if i != h], INTRUDERS)
            refusals = await asyncio.gather(
                *(
                    agents[i].error("doc.update", doc_id=doc_id, update=loose_update(f"intruder {round_}."))
                    for i in intruders
                )
            )
            for i, err in zip(intruders, refusals):
                assert err["code"] == "locked", (round_, names[i], err)
            assert len(await op_agents(admin, doc_id)) == round_ - 1, f"round {round_}: a refused update was stored"

            ack = await agents[h].request(
                "doc.update", doc_id=doc_id, update=loose_update(f"holder {round_}."), fence=fence
            )
            assert ack["seq"] == round_

            if round_ % EXPIRY_EVERY == 0:
                # The lease is cut short and runs out: no release. Cutting it by renewing (not by
                # acquiring with 300 ms) keeps "exactly one winner" exact however slowly the 20
                # acquisitions are served.
                renewed = await agents[h].request("lock.renew", fence=fence, ttl_ms=SHORT_TTL_MS, **lock_target)
                expires_at = datetime.fromisoformat(renewed["lock"]["expires_at"])
                await eventually(partial(_lapsed, agents[h], ws_id, expires_at), timeout_s=10)
                lapsed = (h, fence)
            else:
                await agents[h].request("lock.release", fence=fence, **lock_target)
                lapsed = None
                # A node answers a certain refusal from the locks it has heard of (KnownLocks):
                # the next round starts once both nodes heard of this release, which their
                # sessions hear after the node's own view took it in.
                await eventually(partial(_heard_release, inboxes, fence), timeout_s=10)

        # What was stored is exactly the holders' writes, one a round, in order.
        assert await op_agents(admin, doc_id) == [holder for _, holder in winners]
        fences = sorted(fence for fence, _ in winners)

        # Every agent, on either node, saw every round's acquisition, with its fence and holder.
        def saw_every_acquisition() -> bool:
            return all(len(inbox.of("lock.acquired")) >= ROUNDS for inbox in inboxes)

        await eventually(saw_every_acquisition, timeout_s=15)
        for name, inbox in zip(names, inboxes):
            seen = sorted((f["lock"]["fence"], f["lock"]["holder"]) for f in inbox.of("lock.acquired"))
            assert seen == sorted(winners), f"{name} saw other acquisitions"
            assert sorted(f["lock"]["fence"] for f in inbox.of("lock.acquired")) == fences
        print(f"\nlock race: {ROUNDS} rounds of {RACERS} agents in {time.monotonic() - started:.1f}s")
    finally:
        await admin.close()
        await close_all(agents)


def _heard_release(inboxes: list[Inbox], fence: int) -> bool:
    return all(any(f["lock"]["fence"] == fence for f in inbox.of("lock.released")) for inbox in inboxes)


async def _lapsed(agent: wsclient.Agent, ws_id: str, expires_at: datetime) -> bool:
    """The lease's expiry has passed by this clock and the database lists no live lock."""
    if datetime.now(UTC) <= expires_at:
        return False
    return (await agent.request("lock.list", workspace_id=ws_id))["locks"] == []


# --- 2. counter ------------------------------------------------------------------------------

COUNTERS = 10
INCREMENTS = 100
MAX_ATTEMPTS = INCREMENTS * 100  # per agent: a bound on retries, far above what contention needs


async def test_ten_agents_on_two_nodes_count_to_a_thousand_through_optimistic_state_updates(
    nodes: Nodes, db: TestDatabase
) -> None:
    nodes.start(2)
    agents = await connect_spread(nodes, "counter", COUNTERS)
    conflicts = 0
    try:
        ws_id, _ = await shared_doc(agents[0], *agents[1:])
        started = time.monotonic()

        async def count_up(name: str, agent: wsclient.Agent) -> None:
            nonlocal conflicts
            current = await agent.request("state.get", workspace_id=ws_id)
            version, state = current["version"], current["state"]
            done = 0
            for _ in range(MAX_ATTEMPTS):
                if done == INCREMENTS:
                    return
                value = {**state, "counter": state.get("counter", 0) + 1}
                try:
                    reply = await agent.request(
                        "state.update", workspace_id=ws_id, expected_version=version, mode="replace", value=value
                    )
                except wsclient.ReplyError as exc:
                    assert exc.code == "conflict", exc.frame
                    conflicts += 1
                    version, state = (exc.frame["details"]["version"], exc.frame["details"]["state"])
                    continue
                assert reply["version"] == version + 1 and reply["merged"] is False
                version, state = reply["version"], reply["state"]
                done += 1
            raise AssertionError(f"{name}: {done} increments in {MAX_ATTEMPTS} attempts")

        await asyncio.gather(*(count_up(f"counter-{i:02d}", a) for i, a in enumerate(agents)))
        elapsed = time.monotonic() - started

        final = await agents[0].request("state.get", workspace_id=ws_id)
        assert final["state"] == {"counter": COUNTERS * INCREMENTS}
        assert final["version"] == 1 + COUNTERS * INCREMENTS
        # Every increment is one audited UPDATE of the workspace row (migration 0015's trigger).
        rows = await _admin_fetch(
            db,
            "SELECT (new_data ->> 'state_version')::int AS version FROM audit_log"
            " WHERE table_name = 'workspaces' AND record_id = $1 AND action = 'UPDATE'"
            " AND 'state_version' = ANY(changed_fields)",
            uuid.UUID(ws_id),
        )
        assert sorted(r["version"] for r in rows) == list(range(2, 2 + COUNTERS * INCREMENTS))
        print(f"\ncounter: {COUNTERS * INCREMENTS} increments, {conflicts} conflicts, {elapsed:.1f}s")
    finally:
        await close_all(agents)


async def _admin_fetch(db: TestDatabase, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db.admin_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


# --- 3. events across nodes ------------------------------------------------------------------


async def test_lock_state_and_task_events_made_on_node_1_reach_agents_on_node_2(nodes: Nodes) -> None:
    nodes.start(2)
    owner, member = await connect_spread(nodes, "events", 2)  # node 1, node 2
    worker = wsclient.Agent(nodes.url(1), wsclient.token(TENANT_A, "events-worker"))
    await worker.connect()  # connected on node 2, never joins the workspace
    assert worker.hello is not None and worker.hello["node_id"] == "node-2"
    heard = Inbox(member)
    worker_heard = Inbox(worker)
    try:
        ws_id, doc_id = await shared_doc(owner, member)

        async def next_on_member(type_: str, count: int) -> Frame:
            """The member's `count`-th event of this type (waiting for it)."""
            found = await eventually(lambda: len(heard.of(type_)) >= count and heard.of(type_), timeout_s=10)
            return found[count - 1]

        # A lock taken on node 1.
        lock = (await owner.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=60_000))["lock"]
        assert (await next_on_member("lock.acquired", 1))["lock"] == lock

        # A small state, then one whose event is too large for a NOTIFY: node 2 reads it back.
        small = await owner.request("state.update", workspace_id=ws_id, expected_version=1, value={"phase": "build"})
        event = await next_on_member("state.changed", 1)
        assert (event["workspace_id"], event["version"], event["agent_id"]) == (ws_id, 2, "events-00")
        assert event["state"] == {"phase": "build"}
        big_state = {"phase": "review", "notes": [f"note {i:04d}: " + "x" * 180 for i in range(100)]}
        assert len(json.dumps(big_state)) > 2 * NOTIFY_LIMIT_BYTES  # ~20 KB
        big = await owner.request(
            "state.update", workspace_id=ws_id, expected_version=small["version"], value=big_state
        )
        assert big["state"] == big_state
        event = await next_on_member("state.changed", 2)
        assert (event["workspace_id"], event["version"], event["agent_id"]) == (ws_id, 3, "events-00")
        assert event["state"] == big_state, "the large state reached node 2 incomplete"

        # A task assigned on node 1 to an agent only connected on node 2.
        task = (await owner.request("task.create", workspace_id=ws_id, title="Review the build"))["task"]
        assigned = (await owner.request("task.assign", task_id=task["task_id"], agent_id="events-worker"))["task"]
        await eventually(lambda: worker_heard.of("task.changed"), timeout_s=10)
        # It hears of the task once it is named in it: the pending task's creation was not its.
        (event,) = worker_heard.of("task.changed")
        assert (event["action"], event["agent_id"], event["task"]) == ("assign", "events-00", assigned)
        assert assigned["assigned_to"] == "events-worker"
        # The member on node 2 heard of both through the workspace.
        await next_on_member("task.changed", 2)
        assert [f["action"] for f in heard.of("task.changed")] == ["create", "assign"]
    finally:
        await close_all([owner, member, worker])


# --- 4. the timeout sweep on two nodes -------------------------------------------------------


async def test_timeout_sweep_on_two_nodes_marks_a_task_once_and_tells_each_session_once(
    nodes: Nodes, db: TestDatabase
) -> None:
    nodes.start(2, TANDEM_TASK_SWEEP_INTERVAL_S="0.1")
    creator, member = await connect_spread(nodes, "sweep", 2)  # node 1, node 2
    inboxes = {"creator": Inbox(creator), "member": Inbox(member)}
    try:
        ws_id, _ = await shared_doc(creator, member)
        # Sent by hand: `Agent.request` takes `timeout_s` as its own wait for the reply.
        _, reply = await creator.send_request(
            "task.create", workspace_id=ws_id, title="Quick job", timeout_s=1, assign_to="sweep-01"
        )
        task = (await asyncio.wait_for(reply, 10))["task"]
        assert task["timeout_s"] == 1
        await member.request("task.accept", task_id=task["task_id"])
        started = (await member.request("task.start", task_id=task["task_id"]))["task"]
        assert started["status"] == "in_progress"

        def timeouts(inbox: Inbox) -> list[Frame]:
            return [f for f in inbox.of("task.changed", action="timeout") if f["task"]["task_id"] == task["task_id"]]

        await eventually(lambda: all(timeouts(inbox) for inbox in inboxes.values()), timeout_s=15)
        # Both nodes sweep every 0.1 s: a second marking or a second event would show within
        # this bounded pause (10 sweeps of each node); it is a wait for nothing to happen.
        await asyncio.sleep(1.0)
        for who, inbox in inboxes.items():
            events = timeouts(inbox)
            assert len(events) == 1, f"the {who} got {len(events)} timeout events"
            assert events[0]["agent_id"] == "system"
            assert events[0]["task"]["status"] == "timeout"
        current = (await creator.request("task.get", task_id=task["task_id"]))["task"]
        assert current["status"] == "timeout"
        rows = await _admin_fetch(
            db,
            "SELECT changed_by FROM audit_log WHERE table_name = 'tasks' AND record_id = $1 AND action = 'UPDATE'"
            " AND 'status' = ANY(changed_fields) AND new_data ->> 'status' = 'timeout'",
            uuid.UUID(task["task_id"]),
        )
        assert len(rows) == 1, f"{len(rows)} audit rows changed the task's status to timeout"
        assert rows[0]["changed_by"] == "system"
    finally:
        await close_all([creator, member])
