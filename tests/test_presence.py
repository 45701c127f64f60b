"""Presence backends (server/presence.py, server/presence_redis.py; docs/protocol.md#57) in memory
and against a real Redis, plus the pure awareness checks of server/protocol.py.

Sessions are stood in for by `Inbox`es, real subscribers that keep the frames sent to them.
Redis nodes are `RedisPresence` instances with their background tasks running, each test under
its own key prefix on the session's Redis (or on its own redis-server when it stops Redis).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio

from server import protocol as p
from server.errors import ErrorCode
from server.metrics import Metrics
from server.pgcluster import free_port
from server.presence import MemoryPresence, Presence
from server.presence_redis import RedisPresence, keep_cancellation
from tests.redisproc import RedisProcess

TENANT_A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
TENANT_B = uuid.UUID("00000000-0000-0000-0000-00000000000b")
WS = uuid.UUID("3d6f0a52-8a47-4d0e-9a43-2f1b7c6e5a10")
DOC = uuid.UUID("9a7e3c1d-2b4f-4e6a-8c0d-1f2e3a4b5c6d")
MAX = 1_048_576


class Inbox:
    """A subscriber (a session's stand-in) that records what it is sent: single events, or
    `presence.batch` frames with `presence_batch=True`."""

    def __init__(self, presence_batch: bool = False) -> None:
        self.conn_id = str(uuid.uuid4())
        self.presence_batch = presence_batch
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def send_text(self, frame: str) -> None:
        self.frames.put_nowait(json.loads(frame))

    async def next(self, type_: str, timeout_s: float = 10, **match: Any) -> dict[str, Any]:
        """The next frame of `type_` whose fields equal `match`; frames before it are dropped."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.frames.get()
                if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                    return frame

    async def until(self, type_: str, timeout_s: float = 10, **match: Any) -> list[dict[str, Any]]:
        """Every frame up to and including the next one of `type_` whose fields equal `match`."""
        frames = []
        async with asyncio.timeout(timeout_s):
            while True:
                frames.append(await self.frames.get())
                if frames[-1]["type"] == type_ and all(frames[-1].get(k) == v for k, v in match.items()):
                    return frames

    def own(self) -> list[dict[str, Any]]:
        """The pending frames about this very session (it must never get any)."""
        return [f for f in self.pending() if f.get("conn_id") == self.conn_id]

    def pending(self) -> list[dict[str, Any]]:
        frames = []
        while not self.frames.empty():
            frames.append(self.frames.get_nowait())
        return frames


async def eventually(check: Callable[[], Awaitable[Any] | Any], timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)  # the pause between polls, under the deadline above


class RedisNodes:
    """`RedisPresence` nodes of one test with their background tasks; `crash` stops one dead."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"tandem-test:{uuid.uuid4().hex}"
        self.running: dict[RedisPresence, list[asyncio.Task[None]]] = {}

    async def start(self, name: str, *, wait: bool = True, **options: Any) -> RedisPresence:
        options = {"ttl_s": 3.0, "timeout_s": 1.0, **options}
        node = RedisPresence(self.url, name, Metrics(), prefix=self.prefix, **options)
        self.running[node] = [asyncio.create_task(run(), name=task) for task, run in node.background()]
        if wait:
            await eventually(lambda: node.connected)
        return node

    async def _stop_tasks(self, node: RedisPresence) -> None:
        tasks = self.running.pop(node, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def crash(self, node: RedisPresence) -> None:
        """Stop as a killed node does: no more heartbeats, nothing removed."""
        await self._stop_tasks(node)
        await node.redis.aclose()
        await node._relay_redis.aclose()

    async def close(self) -> None:
        for node in list(self.running):
            await self._stop_tasks(node)
            await node.close()
        client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:  # leave nothing under this test's prefix (the session's Redis may be REDIS_URL's)
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=500)]
            if keys:
                await client.delete(*keys)
        except (redis.RedisError, OSError):
            pass  # the test stopped its own Redis
        finally:
            await client.aclose()


@pytest.fixture
async def redis_nodes(redis_url: str) -> AsyncIterator[RedisNodes]:
    nodes = RedisNodes(redis_url)
    try:
        yield nodes
    finally:
        await nodes.close()


@pytest.fixture
async def memory() -> AsyncIterator[MemoryPresence]:
    """A one-node presence with its flush loop running."""
    presence = MemoryPresence("node-m", Metrics())
    tasks = [asyncio.create_task(run(), name=name) for name, run in presence.background()]
    try:
        yield presence
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest, redis_nodes: RedisNodes, memory: MemoryPresence) -> tuple[Presence, Presence]:
    """Two nodes' presence: the same MemoryPresence twice (one node), or two Redis nodes."""
    if request.param == "memory":
        return memory, memory
    return await redis_nodes.start("node-1"), await redis_nodes.start("node-2")


# --- the pure core: awareness.set (docs/protocol.md#57) -----------------------------------------


def ready_session() -> p.Session:
    session = p.Session(p.Limits())
    session.state = p.ConnState.READY
    return session


def test_awareness_set_takes_an_object_or_null_and_nothing_else():
    # docs/protocol.md#51-message-table (awareness.set: state is required, an object or null)
    msg = p.parse(json.dumps({"type": "awareness.set", "workspace_id": str(WS), "state": {"cursor": 3}}), MAX)
    assert isinstance(msg, p.AwarenessSet) and msg.state == {"cursor": 3} and msg.doc_id is None
    cleared = p.parse(json.dumps({"type": "awareness.set", "workspace_id": str(WS), "state": None}), MAX)
    assert isinstance(cleared, p.AwarenessSet) and cleared.state is None
    for bad in ({}, {"state": [1]}, {"state": "x"}, {"state": {}, "doc_id": "nope"}):
        err = p.parse(json.dumps({"type": "awareness.set", "id": 1, "workspace_id": str(WS), **bad}), MAX)
        assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE, bad


def test_awareness_needs_a_joined_workspace_and_an_open_doc_of_it():
    # docs/protocol.md#43 (rule `joined`) and #57 (doc_id: open in this session, in that workspace)
    session = ready_session()
    frame = json.dumps({"type": "awareness.set", "id": 4, "workspace_id": str(WS), "doc_id": str(DOC), "state": {}})
    assert session.receive(frame, now=0.0) == p.ProtocolError(ErrorCode.NOT_MEMBER, 4)
    listing = json.dumps({"type": "presence.list", "id": 5, "workspace_id": str(WS)})
    assert session.receive(listing, now=0.0) == p.ProtocolError(ErrorCode.NOT_MEMBER, 5)
    session.joined(WS)
    msg = session.receive(frame, now=0.0)
    assert isinstance(msg, p.AwarenessSet)
    assert session.check_awareness(msg, 8192) == p.ProtocolError(ErrorCode.DOC_NOT_OPEN, 4)
    other_ws = uuid.uuid4()
    session.joined(other_ws)
    session.opened(DOC, other_ws)
    assert session.check_awareness(msg, 8192) == p.ProtocolError(ErrorCode.DOC_NOT_OPEN, 4)
    session.closed_doc(DOC)
    session.opened(DOC, WS)
    assert session.check_awareness(msg, 8192) is None


def test_awareness_over_max_awareness_bytes_gets_awareness_too_large():
    # docs/protocol.md#7-limits (max_awareness_bytes): counted as compact UTF-8 JSON
    session = ready_session()
    session.joined(WS)
    state = {"n": "é" * 10}  # {"n":"éééééééééé"}: 8 + 20 bytes
    assert p.awareness_bytes(state) == 28 and p.awareness_bytes(None) == 0
    fits = p.AwarenessSet(workspace_id=WS, state=state, id=1)
    assert session.check_awareness(fits, 28) is None
    err = session.check_awareness(fits, 27)
    assert err == p.ProtocolError(ErrorCode.AWARENESS_TOO_LARGE, 1, {"max_awareness_bytes": 27, "awareness_bytes": 28})
    assert err.close_code is None
    assert session.check_awareness(p.AwarenessSet(workspace_id=WS, state=None), 0) is None  # clearing always fits


# --- both backends -----------------------------------------------------------------------------


async def test_join_is_announced_to_the_others_and_listed(pair):
    node1, node2 = pair
    alice, bob = Inbox(), Inbox()
    await node1.join(alice, TENANT_A, "alice", WS)
    await node2.join(bob, TENANT_A, "bob", WS)
    joined = await alice.next("presence.joined")
    assert joined["conn_id"] == bob.conn_id and joined["agent_id"] == "bob" and joined["workspace_id"] == str(WS)
    assert joined["node_id"] == node2.node_id
    await node2.join(bob, TENANT_A, "bob", WS)  # joining again changes nothing
    listing = await node1.list_members(TENANT_A, WS)
    assert (listing.truncated, listing.partial) == (False, False)
    assert [(str(m.conn_id), m.agent_id, m.node_id, m.doc_ids, m.awareness) for m in listing.members] == [
        (alice.conn_id, "alice", node1.node_id, [], None),
        (bob.conn_id, "bob", node2.node_id, [], None),
    ]
    await node2.leave(bob.conn_id, WS)
    assert (await alice.next("presence.left"))["conn_id"] == bob.conn_id
    # A session never receives its own events. (It may still get alice's join: bob joined on the
    # other node before that event crossed over, and a late event about another session is fine.)
    assert bob.own() == []


async def test_documents_and_awareness_reach_the_others(pair):
    node1, node2 = pair
    alice, bob = Inbox(), Inbox()
    await node1.join(alice, TENANT_A, "alice", WS)
    await node2.join(bob, TENANT_A, "bob", WS)
    await node2.open_doc(bob.conn_id, WS, DOC)
    changed = await alice.next("presence.changed")
    assert changed["doc_ids"] == [str(DOC)] and changed["conn_id"] == bob.conn_id
    await node2.set_awareness(bob.conn_id, WS, DOC, {"cursor": {"anchor": 7}})
    aware = await alice.next("awareness.changed")
    assert (aware["doc_id"], aware["state"], aware["agent_id"]) == (str(DOC), {"cursor": {"anchor": 7}}, "bob")
    members = {str(m.conn_id): m for m in (await node1.list_members(TENANT_A, WS)).members}
    assert members[bob.conn_id].doc_ids == [DOC] and members[bob.conn_id].awareness == {"cursor": {"anchor": 7}}
    assert members[bob.conn_id].awareness_doc_id == DOC
    # Closing the document the state is about clears the state with it.
    await node2.close_doc(bob.conn_id, WS, DOC)
    assert (await alice.next("presence.changed"))["doc_ids"] == []
    cleared = await alice.next("awareness.changed")
    assert (cleared["doc_id"], cleared["state"]) == (str(DOC), None)
    await node2.set_awareness(bob.conn_id, WS, None, {"status": "reviewing"})
    assert (await alice.next("awareness.changed"))["state"] == {"status": "reviewing"}
    members = {str(m.conn_id): m for m in (await node1.list_members(TENANT_A, WS)).members}
    assert (members[bob.conn_id].awareness, members[bob.conn_id].awareness_doc_id) == ({"status": "reviewing"}, None)
    assert bob.own() == []


async def test_disconnect_leaves_every_workspace_with_reason_disconnected(pair):
    node1, node2 = pair
    alice, bob = Inbox(), Inbox()
    other = uuid.uuid4()
    for ws in (WS, other):
        await node1.join(alice, TENANT_A, "alice", ws)
        await node2.join(bob, TENANT_A, "bob", ws)
    await node2.disconnect(bob.conn_id)
    left = [await alice.next("presence.left"), await alice.next("presence.left")]
    assert sorted(f["workspace_id"] for f in left) == sorted([str(WS), str(other)])
    assert {f["reason"] for f in left} == {"disconnected"}
    await node1.leave(alice.conn_id, WS)
    await node1.flush()  # another node's listing follows once the window is sent (docs/protocol.md#57)
    assert [str(m.conn_id) for m in (await node2.list_members(TENANT_A, WS)).members] == []


async def test_another_tenant_never_sees_this_tenants_presence(pair):
    # docs/protocol.md#57: presence is per tenant and workspace, even for the same workspace id
    node1, node2 = pair
    alice, mallory = Inbox(), Inbox()
    await node2.join(mallory, TENANT_B, "mallory", WS)
    await node1.join(alice, TENANT_A, "alice", WS)
    await node1.set_awareness(alice.conn_id, WS, None, {"secret": True})
    await node1.leave(alice.conn_id, WS)
    assert [m.agent_id for m in (await node2.list_members(TENANT_B, WS)).members] == ["mallory"]
    assert [m.agent_id for m in (await node2.list_members(TENANT_A, WS)).members] == []
    # Mallory's node relays events in order: one of her own tenant's after Alice's proves they passed.
    carol = Inbox()
    await node1.join(carol, TENANT_B, "carol", WS)
    assert (await mallory.next("presence.joined"))["agent_id"] == "carol"
    assert mallory.pending() == []


async def test_a_crowded_workspace_gets_a_longer_window():
    # docs/protocol.md#57 (delivery): batch_ms x sessions / 100 beyond 100 sessions, at most 20 x
    presence = MemoryPresence("node-m", Metrics(), batch_window_s=0.05)
    quiet = uuid.uuid4()
    for i in range(250):
        await presence.join(Inbox(), TENANT_A, f"agent-{i}", WS)
    await presence.join(Inbox(), TENANT_A, "solo", quiet)
    assert presence.window_s(TENANT_A, WS) == pytest.approx(0.125)
    assert presence.window_s(TENANT_A, quiet) == pytest.approx(0.05)
    for i in range(2000):
        await presence.join(Inbox(), TENANT_A, f"more-{i}", WS)
    assert presence.window_s(TENANT_A, WS) == pytest.approx(1.0)


async def test_listing_is_cut_at_max_list_items(redis_nodes):
    for presence in (MemoryPresence("node-m", Metrics(), max_list_items=2), await redis_nodes.start("node-r", max_list_items=2)):
        inboxes = [Inbox() for _ in range(3)]
        for i, inbox in enumerate(inboxes):
            await presence.join(inbox, TENANT_A, f"agent-{i}", WS)
        listing = await presence.list_members(TENANT_A, WS)
        assert len(listing.members) == 2 and listing.truncated
        assert [m.agent_id for m in listing.members] == ["agent-0", "agent-1"]  # oldest first


# --- Redis: several nodes ------------------------------------------------------------------------


async def test_a_node_relays_each_window_once_and_drops_its_own(redis_nodes):
    node1 = await redis_nodes.start("node-1")
    node2 = await redis_nodes.start("node-2")
    alice, alice2, bob = Inbox(), Inbox(), Inbox()
    await node2.join(bob, TENANT_A, "bob", WS)
    await node2.flush()
    await node1.join(alice, TENANT_A, "alice", WS)
    await node1.join(alice2, TENANT_A, "alice", WS)  # the same agent's other session, same node
    await node1.set_awareness(alice.conn_id, WS, None, {"n": 1})
    await node1.flush()  # one window: the three changes cross over as one message
    assert [(f["type"], f["conn_id"]) for f in await bob.until("awareness.changed", state={"n": 1})] == [
        ("presence.joined", alice.conn_id), ("presence.joined", alice2.conn_id), ("awareness.changed", alice.conn_id),
    ]  # fmt: skip
    await node2.set_awareness(bob.conn_id, WS, None, {"n": 2})  # a marker: what came before it arrived
    await node2.flush()
    # Bob's join may cross over to node 1 before alice joins or after (then alice and alice2 hear
    # it late): both are right, and it is relayed once either way. A session in a window hears
    # the window's other events, those from before it joined included, never its own.
    bob_joined = ("presence.joined", bob.conn_id)
    heard = [(f["type"], f["conn_id"]) for f in await alice.until("awareness.changed", state={"n": 2})]
    late = bob_joined in heard
    assert [e for e in heard if e != bob_joined] == [("presence.joined", alice2.conn_id), ("awareness.changed", bob.conn_id)]
    heard = [(f["type"], f["conn_id"]) for f in await alice2.until("awareness.changed", state={"n": 2})]
    assert [e for e in heard if e != bob_joined] == [
        ("presence.joined", alice.conn_id), ("awareness.changed", alice.conn_id), ("awareness.changed", bob.conn_id),
    ]  # fmt: skip
    assert node2.metrics.presence_events.labels("relayed")._value.get() == 1
    assert node1.metrics.presence_events.labels("relayed")._value.get() == 1 + late  # node 1 dropped its own


async def test_a_burst_reaches_a_batch_session_as_one_frame_per_window(pair):
    # docs/protocol.md#57 (delivery): each session once, with its latest state; the others as before
    node1, node2 = pair
    watcher = Inbox(presence_batch=True)
    await node1.join(watcher, TENANT_A, "watcher", WS)
    await node1.flush()
    own = await watcher.next("presence.batch")  # a batch may hold the session's own member
    assert [m["conn_id"] for m in own["members"]] == [watcher.conn_id] and own["left"] == []
    crowd = [Inbox() for _ in range(50)]
    for i, inbox in enumerate(crowd):
        await node2.join(inbox, TENANT_A, f"agent-{i}", WS)
        await node2.open_doc(inbox.conn_id, WS, DOC)
    await node2.leave(crowd[0].conn_id, WS)
    await node2.flush()
    batch = await watcher.next("presence.batch")
    members = {m["conn_id"]: m for m in batch["members"]}
    assert set(members) == {inbox.conn_id for inbox in crowd[1:]}
    assert all(m["doc_ids"] == [str(DOC)] and m["node_id"] == node2.node_id for m in members.values())
    assert batch["left"] == [{"conn_id": crowd[0].conn_id, "agent_id": "agent-0", "reason": "left"}]
    assert watcher.pending() == []  # one frame for the whole window
    # A session without presence.batch hears the window's single events, none about itself.
    await node2.set_awareness(crowd[1].conn_id, WS, None, {"marker": True})
    await node2.flush()
    heard = await crowd[2].until("awareness.changed", conn_id=crowd[1].conn_id)
    joined = [f["conn_id"] for f in heard if f["type"] == "presence.joined" and f["conn_id"] != watcher.conn_id]
    assert sorted(joined) == sorted(inbox.conn_id for inbox in crowd if inbox is not crowd[2])
    assert not any(f.get("conn_id") == crowd[2].conn_id for f in heard) and crowd[2].own() == []


async def test_a_single_event_from_a_node_that_does_not_batch_reaches_every_session(redis_nodes):
    # A node of the previous version publishes `{"f": frame}`, one event per message.
    node = await redis_nodes.start("node-1")
    single, batched = Inbox(), Inbox(presence_batch=True)
    await node.join(single, TENANT_A, "single", WS)
    await node.join(batched, TENANT_A, "batched", WS)
    await node.flush()
    since = datetime.now(UTC)
    frame = p.encode(p.PresenceJoined(workspace_id=WS, agent_id="old", conn_id=uuid.uuid4(), node_id="node-old", since=since))
    await node.redis.publish(node.channel, json.dumps({"n": "node-old", "t": str(TENANT_A), "w": str(WS), "f": frame}))
    for inbox in (single, batched):
        assert (await inbox.next("presence.joined", agent_id="old"))["node_id"] == "node-old"


async def test_a_vanished_nodes_sessions_expire_on_the_others(redis_nodes):
    # docs/protocol.md#57: gone within presence_ttl_s plus about two sweep intervals
    node1 = await redis_nodes.start("node-1", ttl_s=1.0)
    node2 = await redis_nodes.start("node-2", ttl_s=1.0)
    alice, bob = Inbox(), Inbox()
    await node2.join(bob, TENANT_A, "bob", WS)
    await node1.join(alice, TENANT_A, "alice", WS)
    await bob.next("presence.joined")
    await redis_nodes.crash(node1)
    left = await bob.next("presence.left", timeout_s=10)
    assert (left["conn_id"], left["reason"]) == (alice.conn_id, "expired")
    assert [m.agent_id for m in (await node2.list_members(TENANT_A, WS)).members] == ["bob"]
    assert node2.metrics.presence_expired._value.get() == 1


async def test_listing_skips_entries_whose_ttl_passed_before_any_sweep(redis_nodes):
    node1 = await redis_nodes.start("node-1", ttl_s=0.5, sweep_interval_s=3600)
    node2 = await redis_nodes.start("node-2", ttl_s=0.5, sweep_interval_s=3600)
    alice = Inbox()
    await node1.join(alice, TENANT_A, "alice", WS)
    await node1.flush()
    assert [m.agent_id for m in (await node2.list_members(TENANT_A, WS)).members] == ["alice"]
    await redis_nodes.crash(node1)
    await eventually(lambda: _agents_are(node2, []))
    assert await node2.sweep_once(force=True) == 1  # the entry itself goes at the next sweep


async def _agents(node: Presence) -> list[str]:
    return [m.agent_id for m in (await node.list_members(TENANT_A, WS)).members]


async def _agents_are(node: Presence, expected: list[str]) -> bool:
    return await _agents(node) == expected


async def test_a_node_that_stalled_past_the_ttl_comes_back(redis_nodes):
    # The sweep took the entry while its node was silent; the next heartbeat writes it again.
    node1 = await redis_nodes.start("node-1", ttl_s=0.5, sweep_interval_s=3600)
    node2 = await redis_nodes.start("node-2", ttl_s=0.5, sweep_interval_s=3600)
    alice, bob = Inbox(), Inbox()
    await node2.join(bob, TENANT_A, "bob", WS)
    await node1.join(alice, TENANT_A, "alice", WS)
    await bob.next("presence.joined")
    await redis_nodes._stop_tasks(node1)  # a stall: no heartbeat, the connection stays
    await eventually(lambda: _agents_are(node2, ["bob"]))
    assert await node2.sweep_once(force=True) == 1
    assert (await bob.next("presence.left"))["reason"] == "expired"
    await node1.heartbeat_once()
    assert (await bob.next("presence.joined"))["conn_id"] == alice.conn_id
    assert await _agents(node2) == ["bob", "alice"]


# --- Redis going away ----------------------------------------------------------------------------


async def test_unreachable_redis_degrades_presence_only():
    # No server on this port: every call returns at once, nothing raises, errors are counted.
    node = RedisPresence(f"redis://127.0.0.1:{free_port()}/0", "node-x", Metrics(), ttl_s=3.0, timeout_s=0.5)
    tasks = [asyncio.create_task(run()) for _name, run in node.background()]
    try:
        alice, bob = Inbox(), Inbox()
        async with asyncio.timeout(5):
            await node.join(alice, TENANT_A, "alice", WS)
            await node.join(bob, TENANT_A, "bob", WS)
            await node.set_awareness(bob.conn_id, WS, None, {"n": 1})
            listing = await node.list_members(TENANT_A, WS)
            health = await node.health()
        assert listing.partial and [m.agent_id for m in listing.members] == ["alice", "bob"]
        assert health == {"configured": True, "up": False}
        # Sessions on the same node still see each other.
        assert (await alice.next("presence.joined"))["conn_id"] == bob.conn_id
        assert (await alice.next("awareness.changed"))["state"] == {"n": 1}
        errors = {s.labels["op"]: s.value for s in node.metrics.presence_errors.collect()[0].samples if s.name.endswith("_total")}
        assert errors["flush"] == 1 and errors["list"] == 1  # the three changes were one window
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.close()


async def test_presence_recovers_when_redis_restarts():
    server = RedisProcess().start()
    nodes = RedisNodes(server.url)
    try:
        node1 = await nodes.start("node-1", timeout_s=0.5)
        node2 = await nodes.start("node-2", timeout_s=0.5)
        alice, bob = Inbox(), Inbox()
        await node1.join(alice, TENANT_A, "alice", WS)
        await node2.join(bob, TENANT_A, "bob", WS)
        await node1.set_awareness(alice.conn_id, WS, None, {"cursor": 1})
        await bob.next("awareness.changed")
        server.stop()
        await eventually(lambda: not node1.connected and not node2.connected)
        assert (await node2.health())["up"] is False
        carol = Inbox()
        await node1.join(carol, TENANT_A, "carol", WS)  # joins while Redis is away
        server.start()  # empty: everything Redis held is gone
        await eventually(lambda: node1.connected and node2.connected, timeout_s=15)
        # Each node wrote its sessions back and told its own sessions to list again.
        assert (await bob.next("presence.stale"))["workspace_id"] == str(WS)
        await eventually(lambda: _agents_with_awareness(node2, {"alice": {"cursor": 1}, "bob": None, "carol": None}))
        assert (await node2.health())["up"] is True
    finally:
        await nodes.close()
        server.close()


async def _agents_with_awareness(node: Presence, expected: dict[str, Any]) -> bool:
    listing = await node.list_members(TENANT_A, WS)
    return not listing.partial and {m.agent_id: m.awareness for m in listing.members} == expected


async def test_a_hung_redis_costs_one_timeout_then_calls_skip_it_until_a_heartbeat_works():
    server = RedisProcess().start()
    nodes = RedisNodes(server.url)
    assert server.proc is not None
    try:
        node1 = await nodes.start("node-1", timeout_s=0.3, ttl_s=1.5)
        node2 = await nodes.start("node-2", timeout_s=0.3, ttl_s=1.5)
        alice, bob = Inbox(), Inbox()
        await node2.join(bob, TENANT_A, "bob", WS)
        server.proc.send_signal(signal.SIGSTOP)  # answers nothing, closes nothing
        try:
            await node1.join(alice, TENANT_A, "alice", WS)
            await node1.flush()  # waits out presence_timeout_s once
            assert not node1.connected and node1.subscribed
            await node1.set_awareness(alice.conn_id, WS, None, {"n": 1})
            async with asyncio.timeout(0.2):
                await node1.flush()  # skipped at once
            errors = {s.labels["op"]: s.value for s in node1.metrics.presence_errors.collect()[0].samples if s.name.endswith("_total")}
            assert errors["flush"] == 2  # (a heartbeat may have failed too)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await eventually(lambda: node1.connected, timeout_s=15)  # a heartbeat worked
        await eventually(lambda: _agents_with_awareness(node2, {"bob": None, "alice": {"n": 1}}), timeout_s=15)
        assert (await bob.next("presence.joined"))["conn_id"] == alice.conn_id
    finally:
        await nodes.close()
        server.close()



async def test_a_cancellation_dropped_by_a_library_still_ends_the_task():
    # Python 3.11's asyncio.wait_for can drop a cancellation racing its result (CPython gh-86296).
    entered = asyncio.Event()

    async def swallowing_call() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # what the race does: the result wins, the cancellation is gone

    async def loop_body() -> None:
        with keep_cancellation():
            await swallowing_call()
        await asyncio.sleep(10)  # without the guard, the task would go on here

    task = asyncio.create_task(loop_body())
    await entered.wait()
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
