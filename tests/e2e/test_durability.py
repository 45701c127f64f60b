"""Durability end to end (docs/protocol.md sections 6.1 and 6.3): content survives restarts,
reconnecting clients get exactly what they missed, every acknowledged update survives kill -9,
and a long history loads from a snapshot instead of a full replay."""

from __future__ import annotations

import asyncio
import base64
import uuid

from pycrdt import get_update

from crdt.clock import decode_state_vector
from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import (
    Tandem,
    admin_fetch,
    eventually,
    insert_history,
    log_events,
    operation_rows,
    replay,
    replayed_text,
    shared_doc,
    text_of,
    typed_history,
)


async def test_restart_keeps_content_and_reconnecting_clients_get_exactly_what_they_missed(tandem: Tandem) -> None:
    tandem.start()
    alice = await tandem.agent(TENANT_A, "alice").connect()
    async with tandem.agent(TENANT_A, "bob") as bob:
        ws_id, doc_id = await shared_doc(alice, bob)
        a, b = await alice.open(doc_id), await bob.open(doc_id)
        for i in range(10):
            await a.edit(lambda t, i=i: t.insert(len(t), f"alice {i}. "))
            await b.edit(lambda t, i=i: t.insert(0, f"bob {i}. "))
        await a.wait_for(lambda d: d.last_seq == 20)
        await b.wait_for(lambda d: d.last_seq == 20)

        # Alice goes away and keeps typing offline; Bob writes on meanwhile.
        await alice.close()
        offline = a.local_update(lambda t: t.insert(0, "[alice offline] "))
        for i in range(5):
            await b.edit(lambda t, i=i: t.insert(len(t), f"while alice was away {i}. "))
        assert b.last_seq == 25
    expected = str(b.text)

    tandem.restart()

    async with tandem.agent(TENANT_A, "carol") as carol:
        await carol.request("workspace.join", workspace_id=ws_id)
        c = await carol.open(doc_id)
        assert str(c.text) == expected == await replayed_text(tandem.db, doc_id)
        assert c.synced_seq == 25

        # Bob, up to date, reconnects with his state vector: the reply holds nothing new.
        async with tandem.agent(TENANT_A, "bob") as bob:
            await bob.request("workspace.join", workspace_id=ws_id)
            bob_state = b.doc.get_state()
            await bob.open(doc_id, b)
            update = base64.b64decode(b.open_reply["update"])
            assert update[:1] == b"\x00", "the reply carries structs Bob already has"
            assert b.doc.get_state() == bob_state and str(b.text) == expected
            assert b.synced_seq == 25

            # Alice reconnects with hers: the reply holds exactly what she lacks.
            alice = await tandem.agent(TENANT_A, "alice").connect()
            await alice.request("workspace.join", workspace_id=ws_id)
            alice_state = a.doc.get_state()
            await alice.open(doc_id, a)
            update = base64.b64decode(a.open_reply["update"])
            assert get_update(update, alice_state) == update, "the reply carries structs Alice already has"
            assert a.synced_seq == 25
            assert str(a.text) == "[alice offline] " + expected

            # She sends what the server lacks (from the reply's state vector): her offline edit.
            server_state = base64.b64decode(a.open_reply["state_vector"])
            missing = a.doc.get_update(server_state)
            assert get_update(offline, server_state) == offline
            ack = await alice.request("doc.update", doc_id=doc_id, update=wsclient.b64(missing))
            assert ack["seq"] == 26
            await b.wait_for(lambda d: d.last_seq == 26)
            await c.wait_for(lambda d: d.last_seq == 26)
            assert str(a.text) == str(b.text) == str(c.text) == await replayed_text(tandem.db, doc_id)
            await alice.close()


async def test_kill_9_right_after_acknowledgements_loses_no_acknowledged_update(tandem: Tandem) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        a = await alice.open(doc_id)
        sent: dict[int, bytes] = {}
        for i in range(400):
            rid, update, _ = await a.send_edit(lambda t, i=i: t.insert(len(t), f"{i} "))
            sent[rid] = update
        await a.wait_for(lambda d: len(d.acked) >= 100)
        tandem.server.kill()  # type: ignore[union-attr]
        await alice.wait_closed()
        acked = dict(a.acked)  # every ack the server sent before it died

    assert len(acked) >= 100
    # Read the log once a new server is up: a COMMIT the dead server had already sent may still
    # be finishing inside PostgreSQL right after the kill.
    tandem.restart()
    rows = {r["sequence_number"]: bytes(r["update"]) for r in await operation_rows(tandem.db, doc_id)}
    assert sorted(rows) == list(range(1, len(rows) + 1))
    for rid, seq in acked.items():
        assert seq is not None
        assert rows.get(seq) == sent[rid], f"acknowledged seq {seq} (request {rid}) is not in the log"

    # After the crash the document opens with the log's content, and resending is harmless.
    async with tandem.agent(TENANT_A, "alice") as alice:
        await alice.request("workspace.join", workspace_id=ws_id)
        fresh = await alice.open(doc_id, wsclient.SyncedDoc(doc_id))
        assert fresh.synced_seq == len(rows)
        assert str(fresh.text) == await replayed_text(tandem.db, doc_id)
        await alice.open(doc_id, a)  # her own copy: all 400 edits
        server_state = base64.b64decode(a.open_reply["state_vector"])
        await alice.request("doc.update", doc_id=doc_id, update=wsclient.b64(a.doc.get_update(server_state)))
        assert str(a.text) == "".join(f"{i} " for i in range(400)) == await replayed_text(tandem.db, doc_id)


async def test_cold_document_with_20000_operations_loads_from_a_snapshot(tandem: Tandem) -> None:
    history = 20_000
    server = tandem.start(TANDEM_SNAPSHOT_EVERY_OPS="1000")
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)

    await insert_history(tandem.db, TENANT_A, doc_id, typed_history(history))
    expected = await replayed_text(tandem.db, doc_id)

    # The first load replays everything; the server then snapshots the room, which is far behind.
    async with tandem.agent(TENANT_A, "alice") as alice:
        await alice.request("workspace.join", workspace_id=ws_id)
        a = await alice.open(doc_id)
        assert str(a.text) == expected
        assert [e["ops"] for e in log_events(server, "room.loaded", doc_id=doc_id)] == [history]
        snapshots = await eventually(
            lambda: admin_fetch(
                tandem.db, "SELECT sequence_number FROM document_snapshots WHERE document_id = $1", uuid.UUID(doc_id)
            ),
            timeout_s=15,
        )
        assert [r["sequence_number"] for r in snapshots] == [history]
        for i in range(5):
            await a.edit(lambda t, i=i: t.insert(0, f"after the snapshot {i}. "))
        expected = str(a.text)

    # kill -9: no snapshot at shutdown, so the next load is that snapshot plus the 5 operations.
    server = tandem.restart(kill=True)
    async with tandem.agent(TENANT_A, "bob") as bob:
        await bob.request("workspace.join", workspace_id=ws_id)
        b = await bob.open(doc_id)
        assert str(b.text) == expected == await replayed_text(tandem.db, doc_id)
        assert b.synced_seq == history + 5
    (loaded,) = log_events(server, "room.loaded", doc_id=doc_id)
    assert loaded["snapshot_seq"] == history
    assert loaded["ops"] == 5


async def test_snapshots_taken_while_writing_are_exactly_the_log_up_to_their_seq(tandem: Tandem) -> None:
    """A room written to without pause snapshots from memory (server/documents/rooms.py `_capture`): each
    snapshot must hold operations 1..seq of the log and nothing more, or replaying from it
    (and the replay tool at an earlier seq) would be wrong."""
    tandem.start(TANDEM_SNAPSHOT_EVERY_OPS="20", TANDEM_SNAPSHOT_EVERY_S="0.5")
    async with tandem.agent(TENANT_A, "alice") as alice:
        _, doc_id = await shared_doc(alice)
        a = await alice.open(doc_id)
        # Edits in flight across several janitor ticks (every 1 s): sent without waiting for
        # acks, for at least 3.5 s and until two snapshots exist (a loaded machine makes each
        # snapshot wait longer for its operations to commit); at most 15 s or 12,000 edits.
        sent = []
        loop = asyncio.get_running_loop()
        started = checked = loop.time()
        taken = 0
        while loop.time() - started < 15 and len(sent) < 12_000 and (loop.time() - started < 3.5 or taken < 2):
            for k in range(10):
                sent.append((await a.send_edit(lambda t, n=len(sent), k=k: t.insert(len(t), f"{n}.{k} ")))[2])
            await asyncio.sleep(0.002)
            if loop.time() - checked >= 0.5:
                checked = loop.time()
                query = "SELECT count(*) AS n FROM document_snapshots WHERE document_id = $1"
                taken = (await admin_fetch(tandem.db, query, uuid.UUID(doc_id)))[0]["n"]
        for fut in sent:
            await asyncio.wait_for(fut, 30)
    rows = await operation_rows(tandem.db, doc_id)
    updates = [bytes(r["update"]) for r in rows]
    snapshots = await admin_fetch(
        tandem.db,
        "SELECT sequence_number, state FROM document_snapshots WHERE document_id = $1 ORDER BY sequence_number",
        uuid.UUID(doc_id),
    )
    assert len(snapshots) >= 2
    for snap in snapshots:
        seq = snap["sequence_number"]
        from_snapshot, from_log = replay([bytes(snap["state"])]), replay(updates[:seq])
        assert decode_state_vector(from_snapshot.get_state()) == decode_state_vector(from_log.get_state()), seq
        assert text_of(from_snapshot) == text_of(from_log)
