"""A commit that fails once (a trigger raises for one document, once) leaves nothing behind: the
writer gets a typed error for that update, the room is rebuilt from the log before it takes the
next one, every later update is acknowledged and reaches the other subscribers, and a fresh open
is exactly the log's replay, on the agent endpoint and on the y-websocket endpoint."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, eventually, log_events, replayed_text, shared_doc
from tests.e2e.editors import Editors, base_url, tok


@pytest.fixture
async def fail_once(tandem: Tandem) -> AsyncIterator[None]:
    """A trigger that fails every append of a document armed with `arm` until `disarm`."""
    conn = await asyncpg.connect(tandem.db.admin_url)
    await conn.execute("""
        CREATE TABLE test_fail_once (document_id uuid PRIMARY KEY, failed boolean NOT NULL DEFAULT false);
        CREATE FUNCTION test_fail_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM test_fail_once WHERE document_id = NEW.document_id AND NOT failed) THEN
                RAISE EXCEPTION 'injected failure for %', NEW.document_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_fail_once BEFORE INSERT ON document_operations
            FOR EACH ROW EXECUTE FUNCTION test_fail_once();
    """)  # fmt: skip
    try:
        yield
    finally:
        await conn.execute("""
            DROP TRIGGER test_fail_once ON document_operations;
            DROP FUNCTION test_fail_once();
            DROP TABLE test_fail_once;
        """)  # fmt: skip
        await conn.close()


async def arm(tandem: Tandem, doc_id: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(tandem.db.admin_url)
    await conn.execute("INSERT INTO test_fail_once (document_id) VALUES ($1)", uuid.UUID(doc_id))
    return conn


async def disarm(conn: asyncpg.Connection, doc_id: str) -> None:
    await conn.execute("UPDATE test_fail_once SET failed = true WHERE document_id = $1", uuid.UUID(doc_id))
    await conn.close()


async def test_an_agent_after_a_failed_commit_is_acknowledged_and_heard_again(tandem: Tandem, fail_once: None) -> None:
    server = tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice, tandem.agent(TENANT_A, "bob") as bob:
        ws_id, doc_id = await shared_doc(alice, bob)
        a, b = await alice.open(doc_id), await bob.open(doc_id)
        await a.edit(lambda t: t.insert(0, "one "))
        admin = await arm(tandem, doc_id)
        with pytest.raises(wsclient.ReplyError) as failed:
            await a.edit(lambda t: t.insert(len(t), "two "))
        assert failed.value.code == "internal_error"
        await disarm(admin, doc_id)
        await eventually(lambda: log_events(server, "room.repaired", doc_id=doc_id))

        # The writer's next updates are acknowledged in order and reach bob; a resync brings the
        # failed one back (the server's state vector lacks it), as the SDK does after an error.
        acks = [await a.edit(lambda t, i=i: t.insert(len(t), f"three{i} ")) for i in range(3)]
        assert [ack["seq"] for ack in acks] == [2, 3, 4]
        reply = await alice.request("doc.resync", doc_id=doc_id, state_vector=wsclient.b64(a.doc.get_state()))
        missing = a.doc.get_update(base64.b64decode(reply["state_vector"]))
        assert (await alice.request("doc.update", doc_id=doc_id, update=wsclient.b64(missing)))["seq"] == 5
        await b.wait_for(lambda d: d.last_seq == 5)
        assert b.seqs == [1, 2, 3, 4, 5]  # every committed update, once, in order
        expected = "one two three0 three1 three2 "
        assert str(a.text) == str(b.text) == expected == await replayed_text(tandem.db, doc_id)

        async with tandem.agent(TENANT_A, "carol") as carol:
            await carol.request("workspace.join", workspace_id=ws_id)
            assert str((await carol.open(doc_id)).text) == expected


async def test_an_editor_after_a_failed_commit_reconnects_and_loses_nothing(
    tandem: Tandem, editors: Editors, fail_once: None
) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        watcher = await alice.open(doc_id)
        editor = await editors.start(base_url(tandem), ws_id, doc_id, tok("editor"))
        await editor.insert("one ")
        await watcher.wait_for(lambda d: str(d.text) == "one ")
        admin = await arm(tandem, doc_id)
        await editor.insert("two ")
        # The failed commit closes the editor's connection (1011); y-websocket reconnects, and its
        # sync sends "two " again.
        await editor.wait_for(lambda c: (1011, "internal_error") in c.closes)
        await disarm(admin, doc_id)
        await editor.insert("three ")
        await watcher.wait_for(lambda d: str(d.text) == "one two three ")
        assert await replayed_text(tandem.db, doc_id) == "one two three "
        assert editor.text == "one two three "
