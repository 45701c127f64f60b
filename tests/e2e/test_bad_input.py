"""Bad input end to end (docs/protocol.md sections 2.2, 2.3, 4.3, 4.4 and 8): every fault gets its
documented code, the session goes on serving unless the code closes it, other sessions are
unaffected, and nothing is stored for a rejected operation.

One server serves the whole module (starting one per test costs more than the tests); every
test makes its own workspace, document and agents.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from server.db import database, store
from server.workspaces import directory as workspaces
from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import Tandem, operation_count, shared_doc

MAX_FRAME_BYTES = 4096
OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start(
        TANDEM_MAX_FRAME_BYTES=str(MAX_FRAME_BYTES),
        # Token expiry during a session is then exactly `exp` (docs/protocol.md#23).
        TANDEM_JWT_LEEWAY_S="0",
        # The documented defaults, not the fast writers' unlimited rate.
        TANDEM_MAX_MESSAGES_PER_S="100.0",
        TANDEM_MAX_MESSAGE_BURST="200",
    )
    yield module_tandem


@dataclass
class Scene:
    """A writer who misbehaves and a bystander, both with one document open (it holds one op)."""

    server: Tandem
    writer: wsclient.Agent
    bystander: wsclient.Agent
    ws_id: str
    doc_id: str
    doc: wsclient.SyncedDoc
    watching: wsclient.SyncedDoc

    async def rows(self) -> int:
        return await operation_count(self.server.db, self.doc_id)

    async def assert_unaffected(self, rows_before: int, writer_open: bool = True) -> None:
        """Nothing was stored; the bystander still writes and (if open) the writer still serves
        and still receives the document's operations."""
        assert await self.rows() == rows_before
        if writer_open:
            assert (await self.writer.request("ping"))["type"] == "pong"
        ack = await self.watching.edit(lambda t: t.insert(len(t), " bystander."))
        assert ack["seq"] == rows_before + 1
        assert (await self.bystander.request("ping"))["type"] == "pong"
        if writer_open:
            await self.doc.wait_for(lambda d: d.last_seq == rows_before + 1, timeout_s=10)
            assert str(self.doc.text) == str(self.watching.text)


@pytest.fixture
async def scene(server: Tandem) -> AsyncIterator[Scene]:
    tag = uuid.uuid4().hex[:8]
    writer = await server.agent(TENANT_A, f"writer-{tag}").connect()
    bystander = await server.agent(TENANT_A, f"bystander-{tag}").connect()
    try:
        ws_id, doc_id = await shared_doc(writer, bystander)
        doc, watching = await writer.open(doc_id), await bystander.open(doc_id)
        await doc.edit(lambda t: t.insert(0, "before."))
        await watching.wait_for(lambda d: d.last_seq == 1, timeout_s=10)
        yield Scene(server, writer, bystander, ws_id, doc_id, doc, watching)
    finally:
        await writer.close()
        await bystander.close()


def next_error(agent: wsclient.Agent) -> Any:
    return agent.event(lambda f: f["type"] == "error")


# --- frames and messages (docs/protocol.md#43 steps 1 and 3) ---------------------------------


async def test_malformed_json_gets_bad_json_and_the_session_goes_on(scene: Scene) -> None:
    rows = await scene.rows()
    await scene.writer.send_raw('{"type": "doc.update", "id": 1, "doc_id": ')
    error = await next_error(scene.writer)
    assert (error["code"], error["re"]) == ("bad_json", None)
    await scene.assert_unaffected(rows)


async def test_unknown_type_gets_unknown_type(scene: Scene) -> None:
    rows = await scene.rows()
    for type_ in ("doc.explode", "workflow.trigger"):  # workflow.trigger is reserved (docs/protocol.md section 10)
        error = await scene.writer.error(type_, doc_id=scene.doc_id)
        assert error["code"] == "unknown_type"
    await scene.assert_unaffected(rows)


async def test_missing_and_mistyped_fields_get_invalid_message_with_details(scene: Scene) -> None:
    rows = await scene.rows()
    valid = wsclient.b64(scene.doc.local_update(lambda t: t.insert(0, "never stored ")))
    cases = [
        ({"type_": "doc.update", "doc_id": scene.doc_id}, "update", "missing"),
        ({"type_": "doc.update", "doc_id": scene.doc_id, "update": "not base64!"}, "update", "base64"),
        ({"type_": "doc.update", "doc_id": 42, "update": valid}, "doc_id", None),
        ({"type_": "doc.open", "doc_id": "not-a-uuid"}, "doc_id", None),
        ({"type_": "ping", "extra": 1}, "extra", "extra_forbidden"),
    ]
    for fields, field, kind in cases:
        error = await scene.writer.error(**fields)
        assert error["code"] == "invalid_message", error
        problems = error["details"]["errors"]
        assert any(p["field"] == field and (kind is None or p["type"] == kind) for p in problems), error
        assert "never stored" not in json.dumps(error)  # the rejected input is not echoed
    # The writer's local copy now holds an edit the server never took: compare the stored log.
    assert await scene.rows() == rows
    assert (await scene.writer.request("ping"))["type"] == "pong"
    assert (await scene.bystander.request("ping"))["type"] == "pong"
    assert "never stored" not in str(scene.watching.text)


async def test_oversized_frame_gets_frame_too_large_and_is_dropped(scene: Scene) -> None:
    assert scene.writer.hello is not None
    assert scene.writer.hello["limits"]["max_frame_bytes"] == MAX_FRAME_BYTES
    rows = await scene.rows()
    other = wsclient.SyncedDoc(scene.doc_id)  # a scratch copy, so the writer's own stays true
    other.doc.apply_update(scene.doc.doc.get_update())
    update = other.local_update(lambda t: t.insert(0, "x" * MAX_FRAME_BYTES))
    frame = json.dumps({"type": "doc.update", "doc_id": scene.doc_id, "update": wsclient.b64(update)})
    assert len(frame) > MAX_FRAME_BYTES
    await scene.writer.send_raw(frame)
    error = await next_error(scene.writer)
    assert error["code"] == "frame_too_large"
    assert error["details"] == {"max_frame_bytes": MAX_FRAME_BYTES, "frame_bytes": len(frame)}
    await scene.assert_unaffected(rows)
    assert "xxxx" not in str(scene.watching.text)


async def test_binary_frame_gets_unsupported_frame(scene: Scene) -> None:
    rows = await scene.rows()
    await scene.writer.send_raw(json.dumps({"type": "ping", "id": 1}).encode())
    error = await next_error(scene.writer)
    assert error["code"] == "unsupported_frame"
    await scene.assert_unaffected(rows)


# --- documents (docs/protocol.md#43 steps 4 and 5) -------------------------------------------


def corrupt_updates(doc: wsclient.SyncedDoc) -> list[bytes]:
    """Bytes that are not a Yjs update: garbage, and a real update cut short."""
    scratch = wsclient.SyncedDoc(doc.doc_id)
    scratch.doc.apply_update(doc.doc.get_update())
    real = scratch.local_update(lambda t: t.insert(0, "a real update, truncated"))
    return [b"not a yjs update", b"\xff\xff\xff\xff", real[: len(real) // 2]]


async def test_corrupt_update_gets_invalid_update_and_nothing_is_stored(scene: Scene) -> None:
    rows = await scene.rows()
    for update in corrupt_updates(scene.doc):
        error = await scene.writer.error("doc.update", doc_id=scene.doc_id, update=wsclient.b64(update))
        assert error["code"] == "invalid_update", error
    await scene.assert_unaffected(rows)
    ack = await scene.doc.edit(lambda t: t.insert(0, "valid again. "))
    assert ack["seq"] == rows + 2


async def test_repeated_invalid_updates_close_the_session_with_4422(scene: Scene) -> None:
    assert scene.writer.hello is not None
    budget = scene.writer.hello["limits"]["max_invalid_updates"]
    assert budget == 10
    rows = await scene.rows()
    bad = corrupt_updates(scene.doc)
    codes = []
    for i in range(budget):
        update = wsclient.b64(bad[i % len(bad)])
        _, fut = await scene.writer.send_request("doc.update", doc_id=scene.doc_id, update=update)
        codes.append((await asyncio.wait_for(fut, 10))["code"])
    assert codes == ["invalid_update"] * (budget - 1) + ["too_many_invalid_updates"]
    closing = await scene.writer.event(lambda f: f["type"] == "session.closing")
    assert (closing["code"], closing["reason"]) == (4422, "too_many_invalid_updates")
    assert await scene.writer.wait_closed() == (4422, "too_many_invalid_updates")
    await scene.assert_unaffected(rows, writer_open=False)


async def test_update_for_a_document_not_opened_gets_doc_not_open(scene: Scene) -> None:
    other = (await scene.writer.request("doc.create", workspace_id=scene.ws_id, title="Not opened"))["document"]
    update = wsclient.b64(wsclient.SyncedDoc(other["doc_id"]).local_update(lambda t: t.insert(0, "hello")))
    for doc_id in (other["doc_id"], str(uuid.uuid4())):
        error = await scene.writer.error("doc.update", doc_id=doc_id, update=update)
        assert error["code"] == "doc_not_open"
    assert (await scene.writer.error("doc.resync", doc_id=other["doc_id"]))["code"] == "doc_not_open"
    assert await operation_count(scene.server.db, other["doc_id"]) == 0
    await scene.assert_unaffected(await scene.rows())


async def test_corrupt_state_vector_is_invalid_message_and_leaves_the_document_closed(scene: Scene) -> None:
    other = (await scene.writer.request("doc.create", workspace_id=scene.ws_id, title="Other"))["document"]
    error = await scene.writer.error("doc.open", doc_id=other["doc_id"], state_vector=wsclient.b64(b"\xff\xff"))
    # Like undecodable base64 (docs/protocol.md#3): the field's value is not what it must be.
    assert error["code"] == "invalid_message", error
    assert any(p["field"] == "state_vector" for p in error["details"]["errors"]), error
    # The open failed, so the document is not open: an update is refused, not taken unacknowledged.
    update = wsclient.b64(wsclient.SyncedDoc(other["doc_id"]).local_update(lambda t: t.insert(0, "hello")))
    error = await scene.writer.error("doc.update", doc_id=other["doc_id"], update=update, wait_s=10)
    assert error["code"] == "doc_not_open", error
    assert await operation_count(scene.server.db, other["doc_id"]) == 0
    await scene.assert_unaffected(await scene.rows())


async def test_another_tenants_ids_get_the_same_not_found_as_unknown_ids(scene: Scene) -> None:
    rows = await scene.rows()
    async with scene.server.agent(TENANT_B, "intruder") as intruder:
        replies = {}
        for name, ws_id in (("theirs", scene.ws_id), ("random", str(uuid.uuid4()))):
            replies[name] = await intruder.error("workspace.join", workspace_id=ws_id)
        assert replies["theirs"]["code"] == "not_found"
        assert {k: v for k, v in replies["theirs"].items() if k != "re"} == {
            k: v for k, v in replies["random"].items() if k != "re"
        }
        assert "details" not in replies["theirs"] or replies["theirs"]["details"] is None

        # With a workspace of its own joined, the other tenant's document is still not found.
        own = (await intruder.request("workspace.create", name="Own", visibility="team"))["workspace"]
        await intruder.request("workspace.join", workspace_id=own["workspace_id"])
        for name, doc_id in (("theirs", scene.doc_id), ("random", str(uuid.uuid4()))):
            replies[name] = await intruder.error("doc.open", doc_id=doc_id)
        assert replies["theirs"]["code"] == "not_found"
        assert {k: v for k, v in replies["theirs"].items() if k != "re"} == {
            k: v for k, v in replies["random"].items() if k != "re"
        }
        update = wsclient.b64(wsclient.SyncedDoc(scene.doc_id).local_update(lambda t: t.insert(0, "intrusion")))
        assert (await intruder.error("doc.update", doc_id=scene.doc_id, update=update))["code"] == "doc_not_open"
        listed = (await intruder.request("workspace.list"))["workspaces"]
        assert scene.ws_id not in {w["workspace_id"] for w in listed}
        assert (await intruder.request("ping"))["type"] == "pong"
    await scene.assert_unaffected(rows)


async def test_non_member_joining_a_private_workspace_is_forbidden(scene: Scene) -> None:
    private = (await scene.writer.request("workspace.create", name="Private", visibility="private"))["workspace"]
    async with scene.server.agent(TENANT_A, f"outsider-{uuid.uuid4().hex[:8]}") as outsider:
        error = await outsider.error("workspace.join", workspace_id=private["workspace_id"])
        assert error["code"] == "forbidden"
        error = await outsider.error("doc.list", workspace_id=private["workspace_id"])
        assert error["code"] == "not_member"
        listed = (await outsider.request("workspace.list"))["workspaces"]
        assert private["workspace_id"] not in {w["workspace_id"] for w in listed}
        assert (await outsider.request("ping"))["type"] == "pong"
    await scene.assert_unaffected(await scene.rows())


async def test_viewer_reads_but_writing_is_forbidden(scene: Scene) -> None:
    viewer_id = f"viewer-{uuid.uuid4().hex[:8]}"
    pool = await database.create_pool(scene.server.db.app_url, 1, 1)
    try:
        async with store.tenant_transaction(pool, TENANT_A, "test-admin") as conn:
            await workspaces.add_member(conn, uuid.UUID(scene.ws_id), viewer_id, "viewer")
    finally:
        await pool.close()
    rows = await scene.rows()
    async with scene.server.agent(TENANT_A, viewer_id) as viewer:
        joined = await viewer.request("workspace.join", workspace_id=scene.ws_id)
        assert joined["role"] == "viewer"
        reading = await viewer.open(scene.doc_id)
        assert str(reading.text) == str(scene.doc.text)

        update = reading.local_update(lambda t: t.insert(0, "viewer was here. "))
        error = await viewer.error("doc.update", doc_id=scene.doc_id, update=wsclient.b64(update))
        assert error["code"] == "forbidden"
        error = await viewer.error("doc.create", workspace_id=scene.ws_id, title="Viewer's")
        assert error["code"] == "forbidden"
        assert (await viewer.request("ping"))["type"] == "pong"

        await scene.assert_unaffected(rows)
        await reading.wait_for(lambda d: d.last_seq == rows + 1, timeout_s=10)  # viewers still read
        assert "viewer was here" not in str(scene.watching.text)


# --- tokens (docs/protocol.md#22 and #23) ------------------------------------------------------


def assert_refused(refusal: wsclient.Refusal, code: int, reason: str, close_reason: str | None = None) -> None:
    """The closing sequence of docs/protocol.md#44: error, session.closing, close frame (whose
    reason names a refused token's class, section 2.2)."""
    assert [f["type"] for f in refusal.frames] == ["error", "session.closing"], refusal.frames
    error, closing = refusal.frames
    assert (error["code"], error["re"]) == (reason, None)
    assert (closing["code"], closing["reason"]) == (code, reason)
    assert (refusal.code, refusal.reason) == (code, close_reason or reason)


async def test_expired_token_is_refused_with_4440(scene: Scene) -> None:
    expired = wsclient.token(TENANT_A, "late", ttl_s=-60)
    assert_refused(await wsclient.refused(scene.server.url, expired), 4440, "token_expired")
    await scene.assert_unaffected(await scene.rows())


async def test_token_expiring_during_the_session_closes_it_with_4440(scene: Scene) -> None:
    async with scene.server.agent(TENANT_A, "short-lived", ttl_s=3) as agent:
        assert (await agent.request("ping"))["type"] == "pong"
        assert await agent.wait_closed(timeout_s=10) == (4440, "token_expired")
        error = await next_error(agent)
        assert (error["code"], error["re"]) == ("token_expired", None)
        closing = await agent.event(lambda f: f["type"] == "session.closing")
        assert (closing["code"], closing["reason"]) == (4440, "token_expired")
    await scene.assert_unaffected(await scene.rows())


async def test_bad_signature_is_refused_with_4401(scene: Scene) -> None:
    forged = wsclient.token(TENANT_A, scene.writer.hello["agent_id"], secret=OTHER_SECRET)  # type: ignore[index]
    assert_refused(await wsclient.refused(scene.server.url, forged), 4401, "unauthorized", "unauthorized: bad_signature")
    assert_refused(await wsclient.refused(scene.server.url, "not-a-jwt"), 4401, "unauthorized", "unauthorized: malformed")
    await scene.assert_unaffected(await scene.rows())


async def test_missing_token_is_refused_with_4401(scene: Scene) -> None:
    assert_refused(await wsclient.refused(scene.server.url, None), 4401, "unauthorized", "unauthorized: missing")
    await scene.assert_unaffected(await scene.rows())
