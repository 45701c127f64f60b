"""Leased locks end to end on one node (docs/protocol.md sections 12.1 and 12.2): fences on the
node's view and in the write path, renewal, expiry, a disconnected holder's locks, and
acquisitions queued with `wait_ms`.

Each module has one server (every test makes its own workspaces and agents), started with a fast
task sweep and a short lock release grace period (tests/e2e/coordination_peers.py).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pycrdt import Text

from tests import wsclient
from tests.e2e.conftest import (
    Tandem,
    admin_fetch,
    eventually,
    log_events,
    operation_count,
    replayed_text,
    shared_doc,
)
from tests.e2e.coordination_peers import (  # noqa: F401  (the fixtures the tests take)
    RELEASE_GRACE_S,
    Connect,
    Frame,
    connect,
    scratch_update,
    server,
)

# --- locks on one node -------------------------------------------------------------------------


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


async def test_edits_built_on_a_refused_one_are_update_ahead_until_a_resync_sends_them(
    server: Tandem, connect: Connect
) -> None:
    """An update refused (here `locked`) is kept by its writer, whose next edits build on it: the
    server answers those `update_ahead`, not `invalid_update` (no budget spent), until the session
    resyncs the document; the resync's diff stores them all (docs/protocol.md section 6.1)."""
    a, b = await connect("a"), await connect("b")
    ws_id, doc_id = await shared_doc(a.agent, b.agent)
    da, db_ = await a.agent.open(doc_id), await b.agent.open(doc_id)
    await da.edit(lambda t: t.insert(0, "start."))
    await db_.wait_for(lambda d: str(d.text) == "start.")
    await db_.edit(lambda t: t.insert(len(t), " B0."))  # the server knows B's clock from here
    lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id, ttl_ms=30_000))["lock"]
    await b.take(lock_event("lock.acquired", a.id))
    refused = await b.error("doc.update", doc_id=doc_id, update=wsclient.b64(db_.local_update(lambda t: t.insert(len(t), " B1."))))
    assert refused["code"] == "locked"
    await a.request("lock.release", workspace_id=ws_id, doc_id=doc_id, fence=lock["fence"])
    await b.take(lock_event("lock.released", a.id))
    rows = await operation_count(server.db, doc_id)
    for label in ("B2. ", "B3. "):  # B's clock goes on past the refused update, placed elsewhere
        ahead = await b.error("doc.update", doc_id=doc_id, update=wsclient.b64(db_.local_update(lambda t, s=label: t.insert(0, s))))
        assert (ahead["code"], ahead["message"]) == ("update_ahead", "The update builds on changes the server does not have; resync and send them.")
    assert await operation_count(server.db, doc_id) == rows

    reply = await b.request("doc.resync", doc_id=doc_id, state_vector=wsclient.b64(db_.doc.get_state()))
    missing = db_.doc.get_update(base64.b64decode(reply["state_vector"]))
    assert (await b.request("doc.update", doc_id=doc_id, update=wsclient.b64(missing)))["seq"] is not None
    await da.wait_for(lambda d: str(d.text) == "B3. B2. start. B0. B1.")
    assert await replayed_text(server.db, doc_id) == "B3. B2. start. B0. B1."
    # Synced again: an update that goes on past what the server has is invalid once more.
    db_.local_update(lambda t: t.insert(len(t), " B4."))  # never sent
    skipping = db_.local_update(lambda t: t.insert(0, "B5. "))
    assert (await b.error("doc.update", doc_id=doc_id, update=wsclient.b64(skipping)))["code"] == "invalid_update"
