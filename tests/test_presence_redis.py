"""Presence across nodes through a real Redis (server/cluster/presence_redis.py,
server/cluster/presence_sweep.py; docs/protocol.md#57): each window relayed once, vanished nodes'
sessions expiring, and Redis going away, hanging and coming back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from server.cluster.presence import Presence
from server.cluster.presence_redis import RedisPresence, keep_cancellation
from server.core.metrics import Metrics
from server.db.pgcluster import free_port
from server.wire import protocol as p
from tests.presence_nodes import (  # noqa: F401 (a fixture)
    TENANT_A,
    WS,
    Inbox,
    RedisNodes,
    eventually,
    redis_nodes,
)
from tests.redisproc import RedisProcess

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


async def test_a_heartbeat_leaves_changes_on_their_way_to_their_window(redis_nodes):
    # A session that joined in a window not flushed yet, or being written, has no alive key yet:
    # the heartbeat must not take it for an entry Redis lost and announce it again beside its
    # window (the other nodes' sessions would hear `presence.joined` twice).
    node1 = await redis_nodes.start("node-1")
    node2 = await redis_nodes.start("node-2", batch_window_s=60)  # flushed by the test only
    alice, bob, carol = Inbox(), Inbox(), Inbox()
    await node1.join(alice, TENANT_A, "alice", WS)
    await node1.flush()
    await node2.join(bob, TENANT_A, "bob", WS)
    await node2.heartbeat_once()  # the window is still open
    await node2.flush()
    await node2.join(carol, TENANT_A, "carol", WS)
    # The heartbeat's round trip sees the window open, then flushed and written meanwhile.
    await asyncio.gather(node2.heartbeat_once(), node2.flush())
    await node2.set_awareness(bob.conn_id, WS, None, {"marker": True})
    await node2.flush()
    heard = [(f["type"], f["conn_id"]) for f in await alice.until("awareness.changed", state={"marker": True})]
    assert heard == [("presence.joined", bob.conn_id), ("presence.joined", carol.conn_id), ("awareness.changed", bob.conn_id)]
    # An entry Redis lost (swept while its node stalled) is announced again, a change of it in
    # the window or not.
    ws_key = f"{redis_nodes.prefix}:{TENANT_A}:{WS}"
    await node2.redis.delete(f"{ws_key}:alive:{bob.conn_id}")
    await node2.redis.hdel(f"{ws_key}:members", bob.conn_id)
    await node2.set_awareness(bob.conn_id, WS, None, {"marker": 2})
    await node2.heartbeat_once()
    assert (await alice.next("presence.joined"))["conn_id"] == bob.conn_id
