"""Deletes reach running servers (docs/protocol.md#126): `tandem document delete` and `tandem
workspace delete`, run as a separate process against the nodes' database, close the document
for every session on both nodes: an agent session hears `doc.deleted` (or `workspace.deleted`)
and no longer has it open, the SDK fails the document with `NotFound`, a /yjs editor is closed
with 4404 `not_found`; opening it again is `not_found`. The event commits with the delete and
reaches both nodes through NOTIFY (neither node made the change). Real nodes, real PostgreSQL,
real y-websocket editors (tests/node/yclient.mjs).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import tandem_client

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import operation_count, shared_doc
from tests.e2e.editors import Editors, YClient, tok
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import ServerProcess, server_env
from tests.test_cli import ok, tandem

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestDatabase

CLOSE_TIMEOUT_S = 5.0  # wide: a node applies a deletion well within a second of the commit
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}


def yjs_base(node: ServerProcess) -> str:
    return f"ws://{node.host}:{node.port}"


async def cli(db: TestDatabase, *args: str) -> str:
    env = server_env(DATABASE_URL=db.admin_url)
    return ok(await asyncio.to_thread(tandem, *args, "--tenant", str(TENANT_A), env=env))


async def closed_not_found(*editors: YClient) -> None:
    for ed in editors:
        await ed.wait_for(lambda c: c.closed is not None, timeout_s=CLOSE_TIMEOUT_S)
        assert ed.closed == (4404, "not_found")


async def test_a_deleted_document_is_closed_for_every_session_on_both_nodes(
    nodes: Nodes, db: TestDatabase, editors: Editors
) -> None:
    one, two = nodes.start(2)
    alice = wsclient.Agent(nodes.url(1), tok("alice"))
    bob = wsclient.Agent(nodes.url(0), tok("bob"))
    await alice.connect()
    await bob.connect()
    try:
        ws_id, doc_id = await shared_doc(alice, bob)
        a, b = await alice.open(doc_id), await bob.open(doc_id)
        async with tandem_client.connect(nodes.url(0), tok("sdk"), **FAST) as client:
            sdk_doc = await (await client.join(ws_id)).open(doc_id)
            ed_1 = await editors.start(yjs_base(one), ws_id, doc_id, tok("ed"))
            ed_2 = await editors.start(yjs_base(two), ws_id, doc_id, tok("olga"))
            await a.edit(lambda t: t.insert(0, "before."))
            await ed_2.wait_for(lambda c: "before." in c.text)
            await sdk_doc.wait_for(lambda d: "before." in str(d.text))
            await b.wait_for(lambda d: "before." in str(d.text))

            deleted = await cli(db, "document", "delete", doc_id)
            assert deleted.strip() == f"deleted document {doc_id}"

            await closed_not_found(ed_1, ed_2)
            for agent in (alice, bob):
                event = await agent.event(lambda f: f["type"] == "doc.deleted", timeout_s=CLOSE_TIMEOUT_S)
                assert (event["doc_id"], event["workspace_id"], event["agent_id"]) == (doc_id, ws_id, "tandem-cli")
            with pytest.raises(tandem_client.errors.NotFound):  # what waiting on the document raises now
                await sdk_doc.wait_for(lambda d: False, timeout_s=CLOSE_TIMEOUT_S)

            # Closed for good: an update is `doc_not_open`, nothing is stored; reopening is `not_found`.
            rows = await operation_count(db, doc_id)
            update = wsclient.b64(a.local_update(lambda t: t.insert(0, "after.")))
            assert (await alice.error("doc.update", doc_id=doc_id, update=update))["code"] == "doc_not_open"
            for agent in (alice, bob):
                assert (await agent.error("doc.open", doc_id=doc_id, state_vector=wsclient.b64(b"\0")))["code"] == "not_found"
            late = await editors.start(yjs_base(two), ws_id, doc_id, tok("late"), synced=False)
            await closed_not_found(late)
            assert await operation_count(db, doc_id) == rows
    finally:
        await alice.close()
        await bob.close()


async def test_a_deleted_workspace_closes_its_documents_and_its_sessions_leave_it(
    nodes: Nodes, db: TestDatabase, editors: Editors
) -> None:
    one, _two = nodes.start(2)
    alice = wsclient.Agent(nodes.url(1), tok("alice"))
    await alice.connect()
    try:
        ws_id, doc_id = await shared_doc(alice)
        await alice.open(doc_id)
        ed = await editors.start(yjs_base(one), ws_id, doc_id, tok("ed"))
        assert (await cli(db, "workspace", "delete", ws_id)).strip() == f"deleted workspace {ws_id}"

        await closed_not_found(ed)
        event = await alice.event(lambda f: f["type"] == "workspace.deleted", timeout_s=CLOSE_TIMEOUT_S)
        assert (event["workspace_id"], event["agent_id"]) == (ws_id, "tandem-cli")
        assert (await alice.error("workspace.join", workspace_id=ws_id))["code"] == "not_found"
        assert (await alice.error("doc.open", doc_id=doc_id, state_vector=wsclient.b64(b"\0")))["code"] == "not_found"
    finally:
        await alice.close()
