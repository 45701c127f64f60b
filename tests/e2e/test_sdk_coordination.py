"""The SDK's coordination (clients/, docs/protocol.md section 12) against real `tandem serve`
processes: the coordinator example, lock contention and waiting, a lost lease refused with
`stale_fence` and stored nowhere, workspace state under contention, the task lifecycle seen by
other clients, and a held lock kept across a reconnect to another node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests import wsclient
from tests.e2e.conftest import UNLIMITED_RATE, Tandem, operation_rows, replayed_text
from tests.serverproc import REPO, ServerProcess, server_env

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402

EXAMPLES = REPO / "clients" / "examples"
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}


def url_of(server: ServerProcess) -> str:
    return f"ws://{server.host}:{server.port}/ws"


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    """One node for the module's tests; each test works in its own tenant."""
    module_tandem.start()
    yield module_tandem


class Agents:
    """Tokens of one fresh tenant per test, so tests sharing a server never meet."""

    def __init__(self, tandem: Tandem) -> None:
        assert tandem.server is not None
        self.url = url_of(tandem.server)
        self.tenant = uuid.uuid4()

    def token(self, agent_id: str) -> str:
        return wsclient.token(self.tenant, agent_id)

    def connect(self, agent_id: str) -> tandem_client.Client:
        return tandem_client.connect(self.url, self.token(agent_id), **FAST)


async def team_doc(client: tandem_client.Client) -> tuple[str, str]:
    """A team workspace with one document; returns (workspace_id, doc_id)."""
    info = await client.create_workspace("Coordination", visibility="team")
    ws = await client.join(info.workspace_id)
    return info.workspace_id, (await ws.create_document("spec")).doc_id


async def open_doc(client: tandem_client.Client, ws_id: str, doc_id: str) -> tuple[tandem_client.Workspace, tandem_client.Document]:
    ws = await client.join(ws_id)
    return ws, await ws.open(doc_id)


def test_coordinator_example_completes_every_task_and_writes_each_section_exactly_once(server: Tandem) -> None:
    agents = Agents(server)
    workers = [f"worker-{i}" for i in range(3)]
    command = [sys.executable, str(EXAMPLES / "coordinator.py"), "--url", agents.url, "--token", agents.token("coordinator"),
               "--sections", "6", "--timeout", "90"]  # fmt: skip
    for worker in workers:
        command += ["--worker-token", agents.token(worker)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "clients")}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["completed"] == 6 and result["exactly_once"] is True
    assert sorted(int(s) for s in result["by_section"]) == list(range(1, 7))
    assert set(result["by_section"].values()) <= set(workers)
    assert sorted(s for sections in result["written_by_worker"] for s in sections) == list(range(1, 7))
    assert result["state"] == {"sections": 6, "done": 6}
    for section, agent in result["by_section"].items():
        assert result["text"].count(f"Section {section} was written by {agent}.") == 1
    assert "<!-- section" not in result["text"]


async def test_lock_contention_gives_locked_and_wait_true_gets_the_lock_after_release(server: Tandem) -> None:
    agents = Agents(server)
    async with agents.connect("alice") as alice, agents.connect("bob") as bob:
        ws_id, doc_id = await team_doc(alice)
        a_ws, a = await open_doc(alice, ws_id, doc_id)
        b_ws, b = await open_doc(bob, ws_id, doc_id)

        async with a.lock(ttl=1.5) as a_lock:
            assert a_lock.held and isinstance(a_lock.fence, int) and a.fence == a_lock.fence
            first_expiry = a_lock.expires_at
            assert first_expiry is not None
            with pytest.raises(tandem_client.Locked) as refused:
                await b.lock(ttl=5).acquire()
            assert refused.value.details is not None and refused.value.details["holder"] == "alice"

            # Bob's unfenced edit is refused while Alice holds the lock, and kept.
            b.text.insert(0, "[bob while locked]")
            with pytest.raises(tandem_client.Locked):
                await b.flushed(timeout_s=10)

            async def bob_waits_then_writes() -> int:
                async with b.lock(ttl=5, wait=True, timeout=30) as b_lock:
                    b.text.insert(len(b.text), "[bob under lock]")
                    assert b_lock.fence is not None
                    return b_lock.fence

            waiting = asyncio.create_task(bob_waits_then_writes())
            a.text.insert(len(a.text), "[alice under lock]")
            await a.flushed(timeout_s=10)
            # Renewed in the background: still held (Bob still waiting) past the first lease.
            renewed_past = first_expiry + timedelta(seconds=1)
            await alice.wait_for(lambda: a_lock.expires_at is not None and a_lock.expires_at > renewed_past, timeout_s=10)
            assert [(lock.holder, lock.fence) for lock in await b_ws.list_locks()] == [("alice", a_lock.fence)]
            assert not waiting.done()
        assert not a_lock.held and not a_lock.lost and a.fence is None
        bob_fence = await asyncio.wait_for(waiting, timeout=30)
        assert bob_fence > a_lock.fence  # type: ignore[operator]

        await b.flushed(timeout_s=20)  # the edit refused while locked went out once the lock was released
        await a.wait_for(lambda d: str(d.text) == str(b.text), timeout_s=10)
        assert sorted(str(a.text).replace("]", "]\n").splitlines()) == ["[alice under lock]", "[bob under lock]", "[bob while locked]"]
        assert await replayed_text(server.db, doc_id) == str(a.text)

        # A named lock: the same semantics without a document.
        async with a_ws.lock("deploy", ttl=5) as deploy:
            with pytest.raises(tandem_client.Locked):
                await b_ws.lock("deploy").acquire()
            assert {(lock.name, lock.holder) for lock in await b_ws.list_locks()} == {("deploy", "alice")}
            assert deploy.fence is not None
        async with b_ws.lock("deploy", ttl=5) as taken:  # free again at once
            assert taken.fence > deploy.fence  # type: ignore[operator]
        assert await b_ws.list_locks() == []


async def test_a_lost_lease_makes_the_next_fenced_edit_fail_with_stale_fence_and_nothing_of_it_is_stored(server: Tandem) -> None:
    agents = Agents(server)
    async with agents.connect("alice") as alice, agents.connect("bob") as bob:
        ws_id, doc_id = await team_doc(alice)
        a_ws, a = await open_doc(alice, ws_id, doc_id)
        b_ws, b = await open_doc(bob, ws_id, doc_id)
        a.text.insert(0, "[before]")
        await a.flushed(timeout_s=10)

        # 1. A lease that is not renewed (a paused process): it lapses, Bob takes the lock, and
        # Alice's next edit, sent with her old fence, is refused and stored nowhere.
        with pytest.raises(tandem_client.StaleFence):
            async with a.lock(ttl=0.5, renew=False) as a_lock:
                a.text.insert(len(a.text), "[alice under lease]")
                await a.flushed(timeout_s=10)  # lands: the lease is live
                async with b.lock(ttl=10, wait=True, timeout=20) as b_lock:
                    assert b_lock.fence > a_lock.fence  # type: ignore[operator]
                    a.text.insert(len(a.text), "[alice after lease]")
                    with pytest.raises(tandem_client.StaleFence):
                        await a.flushed(timeout_s=10)
                    assert a_lock.lost and isinstance(a_lock.error, tandem_client.StaleFence)
                    assert isinstance(a.failure, tandem_client.StaleFence)
                    b.text.insert(0, "[bob]")
        # Leaving Alice's block raised the StaleFence; the document stays failed (reopen it).
        await b.flushed(timeout_s=10)
        stored = await replayed_text(server.db, doc_id)
        assert stored == str(b.text) == "[bob][before][alice under lease]"
        assert not any(b"after lease" in bytes(row["update"]) for row in await operation_rows(server.db, doc_id))

        # 2. A named lock: the lease is known lost as soon as another agent takes it (the
        # `lock.acquired` event carries a newer fence); renewing then fails, leaving raises.
        with pytest.raises(tandem_client.StaleFence):
            async with a_ws.lock("deploy", ttl=0.5, renew=False) as deploy:
                async with b_ws.lock("deploy", ttl=5, wait=True, timeout=20) as taken:
                    await alice.wait_for(lambda: deploy.lost, timeout_s=10)
                    with pytest.raises(tandem_client.StaleFence):
                        await deploy.renew_now()
                    assert taken.fence > deploy.fence  # type: ignore[operator]


async def test_state_update_from_five_clients_twenty_increments_each_ends_at_exactly_one_hundred(server: Tandem) -> None:
    agents = Agents(server)
    async with agents.connect("owner") as owner:
        info = await owner.create_workspace("Counter", visibility="team")
        o_ws = await owner.join(info.workspace_id)
        assert await o_ws.state.get() == ({}, 1)
        async with o_ws.state.changes() as changes:
            clients = [agents.connect(f"counter-{i}") for i in range(5)]
            try:
                for client in clients:
                    await client.start()

                async def increment(client: tandem_client.Client) -> None:
                    ws = await client.join(info.workspace_id)
                    for _ in range(20):
                        await ws.state.update(lambda s: {**s, "n": s.get("n", 0) + 1})

                await asyncio.gather(*(increment(c) for c in clients))
            finally:
                for client in clients:
                    await client.close()
            assert await o_ws.state.get() == ({"n": 100}, 101)
            await owner.wait_for(lambda: o_ws.state.version == 101 and o_ws.state.value == {"n": 100}, timeout_s=10)
            versions = []
            while len(versions) < 100:
                versions.append((await changes.next(timeout_s=10)).version)
            assert versions == list(range(2, 102)) and changes.dropped == 0

        # merge and patch, and a conflict carrying the current state.
        assert await o_ws.state.merge({"meta": {"owner": "owner"}}) == ({"n": 100, "meta": {"owner": "owner"}}, 102)
        with pytest.raises(tandem_client.InvalidPatch):
            await o_ws.state.patch([{"op": "test", "path": "/n", "value": 99}])
        state, version = await o_ws.state.patch([{"op": "replace", "path": "/n", "value": 0}])
        assert (state["n"], version) == (0, 103)
        with pytest.raises(tandem_client.Conflict) as conflict:
            await o_ws.state.patch([{"op": "remove", "path": "/meta"}], expected_version=101)
        assert conflict.value.details == {"version": 103, "state": state}
        assert await o_ws.state.patch([{"op": "remove", "path": "/meta"}], expected_version=101, on_conflict="merge") == ({"n": 0}, 104)


async def test_task_lifecycle_through_the_sdk_is_seen_by_other_clients(server: Tandem) -> None:
    agents = Agents(server)
    async with (
        agents.connect("alice") as alice, agents.connect("bob") as bob,
        agents.connect("carol") as carol, agents.connect("dave") as dave,
    ):  # fmt: skip
        info = await alice.create_workspace("Tasks", visibility="team")
        a_ws = await alice.join(info.workspace_id)
        b_ws = await bob.join(info.workspace_id)
        c_ws = await carol.join(info.workspace_id)
        await (await dave.join(info.workspace_id)).leave()  # a member, not joined in this session
        async with c_ws.tasks.events() as seen, dave.task_events() as daves:
            task = await a_ws.tasks.create("Review the spec", priority="high", parameters={"pr": 7})
            assert (task.status, task.created_by, task.assigned_to, task.parameters) == ("pending", "alice", None, {"pr": 7})
            assert (await b_ws.tasks.claim(task)).assigned_to == "bob"
            await b_ws.tasks.accept(task)
            assert (await b_ws.tasks.start(task)).status == "in_progress"
            delegated = await b_ws.tasks.delegate(task, "dave", reason="out of office")
            assert (delegated.status, delegated.assigned_to) == ("assigned", "dave")

            # Dave has not joined: he hears of it anyway, and must join to act.
            event = await daves.next(timeout_s=10)
            assert (event.action, event.task.assigned_to, event.delegation.to_agent_id) == ("delegate", "dave", "dave")  # type: ignore[union-attr]
            d_ws = await dave.join(info.workspace_id)
            assert [t.task_id for t in await d_ws.tasks.mine()] == [task.task_id]
            await d_ws.tasks.accept(task)
            await d_ws.tasks.start(task)
            done = await d_ws.tasks.complete(task, {"verdict": "ship it"})
            assert (done.status, done.result) == ("completed", {"verdict": "ship it"})
            with pytest.raises(tandem_client.InvalidTransition) as refused:
                await d_ws.tasks.fail(task, "too late")
            assert refused.value.details == {"status": "completed", "action": "fail"}

            observed = [(e.action, e.agent_id, e.task.status) for e in [await seen.next(timeout_s=10) for _ in range(8)]]
            assert observed == [
                ("create", "alice", "pending"), ("assign", "bob", "assigned"), ("accept", "bob", "accepted"),
                ("start", "bob", "in_progress"), ("delegate", "bob", "assigned"), ("accept", "dave", "accepted"),
                ("start", "dave", "in_progress"), ("complete", "dave", "completed"),
            ]

        got, delegations = await c_ws.tasks.get(task.task_id)
        assert got.status == "completed"
        assert [(d.from_agent_id, d.to_agent_id, d.delegation_type, d.reason) for d in delegations] == [
            ("bob", "dave", "manual", "out of office")
        ]
        assert await b_ws.tasks.mine() == []
        assert [t.task_id for t in await c_ws.tasks.list(status=["completed"], priority="high")] == [task.task_id]

        # A failure with a retry left goes back to pending, unassigned; the next one is final.
        retried = await a_ws.tasks.create("Flaky", max_retries=1, assign_to="bob")
        for expected in ("pending", "failed"):
            if retried.status == "pending":
                await b_ws.tasks.claim(retried)
            await b_ws.tasks.accept(retried)
            await b_ws.tasks.start(retried)
            retried = await b_ws.tasks.fail(retried, "boom")
            assert retried.status == expected
        assert (retried.retry_count, retried.error) == (1, "boom")
        cancelled = await a_ws.tasks.cancel(await a_ws.tasks.create("Never mind"), reason="scope cut")
        assert cancelled.status == "cancelled"
        with pytest.raises(tandem_client.Forbidden):
            await c_ws.members.add("erin", role="admin")  # only owners and admins manage members
        assert (await a_ws.members.add("erin", role="viewer", permissions=["read"])).role == "viewer"
        await carol.wait_for(lambda: "erin" in {m.agent_id for m in c_ws.members}, timeout_s=10)
        assert {(m.agent_id, m.role) for m in await c_ws.members.list()} >= {("alice", "owner"), ("erin", "viewer")}


async def test_a_held_lock_survives_a_reconnect_to_another_node_renewed_with_its_fence(tandem: Tandem) -> None:
    def node(name: str) -> ServerProcess:
        env = server_env(DATABASE_URL=tandem.db.admin_url, TANDEM_JWT_SECRET=wsclient.SECRET, TANDEM_NODE_ID=name,
                         TANDEM_LOCK_RELEASE_GRACE_S="5", **UNLIMITED_RATE)  # fmt: skip
        return tandem.servers.start(env=env)

    node_a, node_b = node("node-a"), node("node-b")
    tenant = uuid.uuid4()
    async with (
        tandem_client.connect([url_of(node_a), url_of(node_b)], wsclient.token(tenant, "writer"), **FAST) as writer,
        tandem_client.connect(url_of(node_b), wsclient.token(tenant, "rival"), **FAST) as rival,
    ):
        assert writer.node_id == "node-a"
        ws_id, doc_id = await team_doc(writer)
        _, w = await open_doc(writer, ws_id, doc_id)
        r_ws, r = await open_doc(rival, ws_id, doc_id)
        async with w.lock(ttl=2) as lock:
            fence, first_expiry = lock.fence, lock.expires_at
            assert first_expiry is not None
            w.text.insert(0, "[before the kill]")
            await w.flushed(timeout_s=10)

            node_a.kill()
            await writer.wait_for(lambda: writer.connected and writer.node_id == "node-b", timeout_s=30)
            assert writer.sessions == 2
            # Renewed with its fence on the new session, and again and again: still the same lease
            # well past the expiry it had when its node died.
            await writer.wait_for(
                lambda: lock.expires_at is not None and lock.expires_at > first_expiry + timedelta(seconds=3), timeout_s=20
            )
            assert lock.held and not lock.lost and lock.fence == fence
            assert [(info.holder, info.fence) for info in await r_ws.list_locks()] == [("writer", fence)]
            with pytest.raises(tandem_client.Locked):
                await r.lock().acquire()
            w.text.insert(len(w.text), "[after the reconnect]")
            await w.flushed(timeout_s=10)  # sent with the same fence, accepted
        assert not lock.lost
        async with r.lock(ttl=5) as taken:  # released at the end of the block
            assert taken.fence > fence  # type: ignore[operator]
        await r.wait_for(lambda d: str(d.text) == "[before the kill][after the reconnect]", timeout_s=10)
    assert await replayed_text(tandem.db, doc_id) == "[before the kill][after the reconnect]"

