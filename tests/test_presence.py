"""Presence backends (server/cluster/presence.py, server/cluster/presence_redis.py; docs/protocol.md#57), in
memory and against a real Redis, through what both offer; plus the pure awareness checks of
server/wire/protocol.py. Redis-only behaviour (relay, expiry, outages) is in test_presence_redis.py.
"""

from __future__ import annotations

import json
import uuid

import pytest

from server.cluster.presence import MemoryPresence
from server.core.errors import ErrorCode
from server.core.metrics import Metrics
from server.wire import protocol as p
from tests.presence_nodes import (  # noqa: F401 (fixtures)
    DOC,
    TENANT_A,
    TENANT_B,
    WS,
    Inbox,
    memory,
    pair,
    redis_nodes,
)

MAX = 1_048_576


# --- the pure core: awareness.set (docs/protocol.md#57) -----------------------------------------


def ready_session() -> p.ProtocolSession:
    session = p.ProtocolSession(p.Limits())
    session.conn_state = p.ConnState.READY
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
