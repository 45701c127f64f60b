"""The room and the log never disagree (docs/protocol.md section 7, docs/schema.md): an update
yrs and Yjs would read differently is refused and changes nothing, the honest writers after it
are acknowledged and not counted as invalid, and a fresh agent, a stock Yjs editor and the log's
replay read the same text; an operation's stored clock stays as small as the operation.

One server serves the whole module; every test makes its own workspace, document and agents.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from pycrdt import Doc, Text, merge_updates, write_var_uint

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, admin_fetch, replayed_text, shared_doc
from tests.e2e.editors import Editors, base_url, tok
from tests.test_crdt_order import placed


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


def root_insert(client: int, clock: int, text: str) -> bytes:
    """One string item at the start of the root text `content`, at any client id and clock."""
    data = text.encode()
    return (
        b"\x01\x01" + write_var_uint(client) + write_var_uint(clock) + b"\x04\x01\x07content"
        + write_var_uint(len(data)) + data + b"\x00"
    )  # fmt: skip


def names() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"mallory-{tag}", f"bob-{tag}", f"carol-{tag}"


async def test_a_wrapped_clock_is_refused_and_the_honest_writer_goes_on(server: Tandem, editors: Editors) -> None:
    mallory_id, bob_id, carol_id = names()
    async with server.agent(TENANT_A, mallory_id) as mallory, server.agent(TENANT_A, bob_id) as bob:
        ws_id, doc_id = await shared_doc(bob, mallory)
        watching, writing = await mallory.open(doc_id), await bob.open(doc_id)
        assert (await writing.edit(lambda t: t.insert(0, "honest")))["seq"] == 1

        # An item at clock 2**32 - 1, whose end yrs wraps to 0: of a new client id (yrs applies it
        # and reports no change: unrefused, it would be acknowledged with seq null and never
        # stored), and of bob's own client id (yrs panics).
        for client in (writing.doc.client_id + 1, writing.doc.client_id):
            wrapped = root_insert(client, 2**32 - 1, "forged")
            error = await mallory.error("doc.update", doc_id=doc_id, update=wsclient.b64(wrapped))
            assert error["code"] == "invalid_update" and "exceeds" in error["details"]["reason"], error

        # More honest edits than the invalid-update budget: every one is acknowledged, in order.
        budget = bob.hello["limits"]["max_invalid_updates"] if bob.hello else 10
        acks = [await writing.edit(lambda t, i=i: t.insert(len(t), f" {i}")) for i in range(budget + 2)]
        assert [ack["seq"] for ack in acks] == list(range(2, budget + 4))
        expected = "honest" + "".join(f" {i}" for i in range(budget + 2))
        assert str(writing.text) == expected

        # The room (what a fresh open gets), the log, the other subscriber and a stock Yjs editor agree.
        async with server.agent(TENANT_A, carol_id) as carol:
            await carol.request("workspace.join", workspace_id=ws_id)
            assert str((await carol.open(doc_id)).text) == expected
        assert await replayed_text(server.db, doc_id) == expected
        await watching.wait_for(lambda d: d.last_seq == budget + 3, timeout_s=10)
        assert str(watching.text) == expected
        editor = await editors.start(base_url(server), ws_id, doc_id, tok("editor"))
        await editor.wait_for(lambda c: c.text == expected)


async def test_stored_clocks_stay_as_small_as_their_operation_after_a_many_client_update(server: Tandem) -> None:
    mallory_id, bob_id, _ = names()
    async with server.agent(TENANT_A, mallory_id) as mallory, server.agent(TENANT_A, bob_id) as bob:
        _, doc_id = await shared_doc(bob, mallory)
        crowd, writing = await mallory.open(doc_id), await bob.open(doc_id)
        clients = []
        for k in range(50):
            client = Doc(client_id=1_000_000 + k)
            client["content"] = text = Text()
            text += "x"
            clients.append(client.get_update())
        many = merge_updates(*clients)
        reply = await mallory.request("doc.update", doc_id=doc_id, update=wsclient.b64(many))
        assert reply["seq"] == 1
        await writing.wait_for(lambda d: d.last_seq == 1, timeout_s=10)
        for i in range(10):
            await writing.edit(lambda t, i=i: t.insert(len(t), str(i)))

        rows = await admin_fetch(
            server.db,
            "SELECT sequence_number, vector_clock::text AS clock FROM document_operations"
            " WHERE document_id = $1 ORDER BY sequence_number",
            uuid.UUID(doc_id),
        )
        clocks = [json.loads(r["clock"]) for r in rows]
        assert len(clocks) == 11 and len(clocks[0]) == 50
        mine = str(writing.doc.client_id)
        assert all(list(clock) == [mine] for clock in clocks[1:]), clocks[1:]
        assert max(len(r["clock"]) for r in rows[1:]) < 40
        del crowd


async def test_an_item_placed_after_its_right_origin_is_refused_and_everyone_reads_the_log(
    server: Tandem, editors: Editors
) -> None:
    """An item told to go after bob's `c` and before his `b` (crdt/order.py): refused while
    they show, and once both are deleted (then found once applied, and the room rebuilt from the
    log); the honest edits after it are taken, and everyone reads the log's text."""
    mallory_id, bob_id, carol_id = names()
    async with server.agent(TENANT_A, mallory_id) as mallory, server.agent(TENANT_A, bob_id) as bob:
        ws_id, doc_id = await shared_doc(bob, mallory)
        watching, writing = await mallory.open(doc_id), await bob.open(doc_id)
        await writing.edit(lambda t: t.insert(0, "abcd"))
        bob_client = writing.doc.client_id
        inverted = wsclient.b64(placed(mallory_client := 4242, (bob_client, 2), (bob_client, 1)))
        error = await mallory.error("doc.update", doc_id=doc_id, update=inverted)
        assert error["code"] == "invalid_update" and "which comes first" in error["details"]["reason"], error

        await writing.edit(lambda t: t.__delitem__(slice(1, 3)))  # "ad": b and c deleted
        error = await mallory.error("doc.update", doc_id=doc_id, update=inverted)
        assert error["code"] == "invalid_update" and "which comes first" in error["details"]["reason"], error
        deleted = wsclient.b64(placed(mallory_client + 1, (bob_client, 2), (bob_client, 1), text=None, deleted=1))
        error = await mallory.error("doc.update", doc_id=doc_id, update=deleted)
        assert error["code"] == "invalid_update" and "cannot be checked" in error["details"]["reason"], error

        for i in range(3):
            await writing.edit(lambda t, i=i: t.insert(1, str(i)))
        expected = "a210d"
        assert str(writing.text) == expected
        async with server.agent(TENANT_A, carol_id) as carol:
            await carol.request("workspace.join", workspace_id=ws_id)
            assert str((await carol.open(doc_id)).text) == expected
        assert await replayed_text(server.db, doc_id) == expected
        await watching.wait_for(lambda d: str(d.text) == expected, timeout_s=10)
        editor = await editors.start(base_url(server), ws_id, doc_id, tok("editor"))
        await editor.wait_for(lambda c: c.text == expected)
