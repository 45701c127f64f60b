"""Every update's cost is bounded before a room applies it (docs/protocol.md sections 7 and 8):
an update that would hold the event loop (deletions splitting a large item, structs of
thousands of clients) gets `update_too_costly` and changes nothing, another tenant's session
keeps answering meanwhile, and ordinary large edits still pass.

One server serves the module; every test makes its own workspace, document and agents. The
hostile updates are built with pycrdt, as a client would make them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import websockets
from pycrdt import Doc, Text, create_update_message

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.costly_updates import (
    deletion_only_update,
    deletions_ahead,
    many_clients_update,
)
from tests.e2e.conftest import Tandem, operation_count, replayed_text, shared_doc
from tests.e2e.editors import base_url, tok

BASE_CHARS = 300_000  # one item of this many characters: a paste
DELETED_RANGES = 140_000  # one-character ranges over it, every other character


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


async def ping_until(agent: wsclient.Agent, done: asyncio.Future[dict], limit: int = 2000) -> list[float]:
    """Ping round trips (seconds) until `done` resolves; bounded in count and by the caller's timeout."""
    times = []
    while not done.done() and len(times) < limit:
        start = time.perf_counter()
        assert (await agent.request("ping", wait_s=20))["type"] == "pong"
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    return times


async def test_a_deletion_only_update_is_refused_before_the_room_applies_it(server: Tandem) -> None:
    tag = uuid.uuid4().hex[:8]
    async with (
        server.agent(TENANT_A, f"writer-{tag}") as writer,
        server.agent(TENANT_A, f"reader-{tag}") as reader,
        server.agent(TENANT_B, f"other-{tag}") as other,
    ):
        _, doc_id = await shared_doc(writer, reader)
        doc = await writer.open(doc_id)
        ack = await doc.edit(lambda t: t.insert(0, "x" * BASE_CHARS))  # a large paste passes
        assert ack["type"] == "doc.update.ok" and ack["seq"] == 1
        await shared_doc(other)  # the other tenant's own workspace: its session is busy too
        assert (await other.request("ping"))["type"] == "pong"

        hostile = deletion_only_update(doc.doc.get_update(), DELETED_RANGES)
        async with asyncio.timeout(120):
            _, reply = await writer.send_request("doc.update", doc_id=doc_id, update=wsclient.b64(hostile))
            pings = await ping_until(other, reply)
            answer = await reply

        assert answer["type"] == "error" and answer["code"] == "update_too_costly", answer
        assert "max_update_apply_ms" in answer["details"]["reason"] or "took too long" in answer["details"]["reason"]
        assert pings  # the other tenant was answered meanwhile; how fast is bench/bench_stall.py's to say
        print(f"worst ping {max(pings) * 1000:.0f} ms over {len(pings)}")
        # Nothing changed: the log holds the paste alone, and a fresh open shows what it replays to.
        assert await operation_count(server.db, doc_id) == 1
        fresh = await reader.open(doc_id)
        assert str(fresh.text) == await replayed_text(server.db, doc_id) == "x" * BASE_CHARS
        assert (await writer.request("ping"))["type"] == "pong"  # the writer's session goes on


async def test_deletions_of_items_the_document_does_not_hold_yet_are_refused(server: Tandem) -> None:
    """Deletions waiting for items would make a later paste of them split the paste as costly
    as the deletion-only update above, with nothing to see in the state the paste is timed
    against: the deletions are refused up front, and the paste then passes cheaply."""
    tag = uuid.uuid4().hex[:8]
    async with server.agent(TENANT_A, f"writer-{tag}") as writer, server.agent(TENANT_B, f"other-{tag}") as other:
        _, doc_id = await shared_doc(writer)
        doc = await writer.open(doc_id)
        await doc.edit(lambda t: t.insert(0, "before."))
        future = Doc(client_id=424_242)  # a client id of the writer's own, not used yet
        ahead = deletions_ahead(future.client_id, 0, DELETED_RANGES)
        error = await writer.error("doc.update", doc_id=doc_id, update=wsclient.b64(ahead))
        assert error["code"] == "update_too_costly"
        assert f"client {future.client_id} up to clock {2 * DELETED_RANGES - 1}" in error["details"]["reason"]
        future.apply_update(doc.doc.get_update())
        before = future.get_state()
        future.get("content", type=Text).insert(0, "x" * BASE_CHARS)
        async with asyncio.timeout(120):
            _, reply = await writer.send_request("doc.update", doc_id=doc_id, update=wsclient.b64(future.get_update(before)))
            pings = await ping_until(other, reply)
            assert (await reply)["type"] == "doc.update.ok"
        assert pings  # the other tenant was answered meanwhile; how fast is bench/bench_stall.py's to say
        print(f"worst ping {max(pings) * 1000:.0f} ms over {len(pings)}")
        assert await replayed_text(server.db, doc_id) == "x" * BASE_CHARS + "before."


async def test_an_update_introducing_80000_clients_is_refused(server: Tandem) -> None:
    tag = uuid.uuid4().hex[:8]
    async with server.agent(TENANT_A, f"writer-{tag}") as writer, server.agent(TENANT_A, f"reader-{tag}") as reader:
        _, doc_id = await shared_doc(writer, reader)
        doc = await writer.open(doc_id)
        await doc.edit(lambda t: t.insert(0, "before."))
        error = await writer.error("doc.update", doc_id=doc_id, update=wsclient.b64(many_clients_update(80_000)))
        assert error["code"] == "update_too_costly"
        assert "80000 clients" in error["details"]["reason"]
        assert await operation_count(server.db, doc_id) == 1
        fresh = await reader.open(doc_id)
        assert len(fresh.doc.get_state()) < 16  # one client in the state vector, not 80,001
        assert str(fresh.text) == "before."
        ack = await doc.edit(lambda t: t.insert(len(t), " after."))  # the session goes on
        assert ack["seq"] == 2


async def test_a_costly_update_on_the_yjs_endpoint_closes_it_with_4422(server: Tandem) -> None:
    """docs/protocol.md#114: y-websocket has no error message; the connection closes with a
    4xxx code, after which y-websocket does not reconnect and resend."""
    async with server.agent(TENANT_A, f"owner-{uuid.uuid4().hex[:8]}") as owner:
        ws_id, doc_id = await shared_doc(owner)
    url = f"{base_url(server)}/yjs/{ws_id}/{doc_id}?token={tok(f'editor-{uuid.uuid4().hex[:8]}')}"
    async with asyncio.timeout(15), websockets.connect(url, max_size=None) as ws:
        await ws.send(create_update_message(many_clients_update(1000)))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4422, "update_too_costly")
    assert await operation_count(server.db, doc_id) == 0


async def test_ordinary_large_edits_pass_the_bounds(server: Tandem) -> None:
    """A paste, an agent replacing the whole content, an edit deleting many scattered ranges a
    person might make (find-and-replace), and a few clients at once: all within the bounds."""
    tag = uuid.uuid4().hex[:8]
    async with server.agent(TENANT_A, f"writer-{tag}") as writer:
        _, doc_id = await shared_doc(writer)
        doc = await writer.open(doc_id)
        words = " ".join(f"word{i}" for i in range(20_000))
        assert (await doc.edit(lambda t: t.insert(0, words)))["seq"] == 1

        def replace_some(text: Text) -> None:  # 200 scattered one-word replacements
            for i in range(200):
                start = str(text).index(f"word{i * 97} ")
                del text[start : start + 4]
                text.insert(start, "WORD")

        assert (await doc.edit(replace_some))["type"] == "doc.update.ok"
        assert (await doc.edit(lambda t: (t.__delitem__(slice(0, len(t))), t.insert(0, "all new content " * 1000))))["type"] == "doc.update.ok"

        offline = [Doc(client_id=5_000 + i) for i in range(8)]
        for i, other in enumerate(offline):
            other.apply_update(doc.doc.get_update())
            other.get("content", type=Text).insert(0, f"offline {i}. ")
            doc.doc.apply_update(other.get_update(doc.doc.get_state()))
        ack = await writer.request("doc.update", doc_id=doc_id, update=wsclient.b64(doc.doc.get_update()))
        assert ack["type"] == "doc.update.ok"
        assert await replayed_text(server.db, doc_id) == str(doc.text)
