"""A room whose yrs document panics is rebuilt from the log before it takes another update, and
the update is then applied to the rebuilt room (server/documents/rooms.py, server/transport/pipeline.py).

In process, against a real PostgreSQL: the registry, the group committer and a room, with the
room's document forked from the log in memory (what an update yrs mis-applies leaves behind).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pycrdt import Doc, Text, write_var_uint

from crdt.document import Document, DocumentPanicked, OriginsMissing
from server.core.settings import Settings
from server.db import store
from server.documents.committer import Committer
from server.documents.rooms import RoomRegistry
from tests.conftest import TENANT_A

DEADLINE_S = 30.0



@pytest.fixture
async def rooms(pool: asyncpg.Pool) -> AsyncIterator[RoomRegistry]:
    committer = Committer(pool, shards=1)
    registry = RoomRegistry(pool, committer, Settings())
    committer.on_committed = registry.on_committed
    committer.start()
    try:
        yield registry
    finally:
        await registry.stop()
        await committer.stop(5.0)


async def make_document(pool: asyncpg.Pool) -> uuid.UUID:
    async with store.tenant_transaction(pool, TENANT_A, "setup") as conn:
        ws = await conn.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'repair', 'setup') RETURNING id", TENANT_A
        )
        return await conn.fetchval(
            "INSERT INTO shared_documents (workspace_id, tenant_id, title, created_by)"
            " VALUES ($1, $2, 'doc', 'setup') RETURNING id",
            ws, TENANT_A,
        )  # fmt: skip


def wrapped(client: int) -> bytes:
    """An item of a new `client` at clock 2**32 - 1 of the root text: yrs wraps its end to 0 and
    reports no change, and panics on the client's first honest update after it."""
    return b"\x01\x01" + write_var_uint(client) + write_var_uint(2**32 - 1) + b"\x04\x01\x07content\x01x\x00"


def writer(client_id: int) -> tuple[Text, list[bytes]]:
    doc = Doc(client_id=client_id)
    doc["content"] = text = Text()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return text, updates


async def test_a_panicking_room_is_rebuilt_from_the_log_and_takes_the_update_after(
    pool: asyncpg.Pool, rooms: RoomRegistry
) -> None:
    doc_id = await make_document(pool)
    room = await rooms.get(TENANT_A, doc_id)
    first, first_updates = writer(77)
    first += "hello"
    op = room.apply_update("alice", first_updates[-1])
    assert op is not None
    assert await asyncio.wait_for(await rooms.submit(room, op), DEADLINE_S) == 1

    room.document._apply_native(wrapped(78))  # past the id checks: forked from the log, in memory
    second, second_updates = writer(78)
    second += "hi "
    with pytest.raises(DocumentPanicked):
        room.apply_update("bob", second_updates[-1])
    assert room.dirty is not None  # nothing reads it until it is the log's again
    await asyncio.wait_for(room.writable(), DEADLINE_S)
    assert room.document.text() == "hello" and not room.broken

    op = room.apply_update("bob", second_updates[-1])  # what the pipeline does once, before counting it
    assert op is not None
    assert await asyncio.wait_for(await rooms.submit(room, op), DEADLINE_S) == 2
    async with store.tenant_transaction(pool, TENANT_A) as conn:
        rows = await store.logged_operations_after(conn, doc_id, 0, 10)
    assert [r.update for r in rows] == [first_updates[-1], second_updates[-1]]
    replayed = Document()
    replayed.apply_many(r.update for r in rows)
    assert sorted(room.document.text()) == sorted("hello" + "hi ")
    assert room.document.text() == replayed.text() and room.document.clock() == replayed.clock()


async def test_no_snapshot_is_taken_while_an_update_waits_for_another(pool: asyncpg.Pool, rooms: RoomRegistry) -> None:
    """yrs leaves pending structs out of the encoded state: a snapshot then would lose them for
    every later load, so the room stores none until they are in."""
    doc_id = await make_document(pool)
    room = await rooms.get(TENANT_A, doc_id)
    first, first_updates = writer(11)
    first += "hello"
    first += " world"
    second, second_updates = writer(12)
    second.doc.apply_update(first_updates[0])
    second.doc.apply_update(first_updates[1])
    second += "!"

    async def commit(update: bytes) -> int:
        op = room.apply_update("alice", update)
        assert op is not None
        return await asyncio.wait_for(await rooms.submit(room, op), DEADLINE_S)

    async def snapshots() -> list[int]:
        async with store.tenant_transaction(pool, TENANT_A) as conn:
            rows = await conn.fetch(
                "SELECT sequence_number FROM document_snapshots WHERE document_id = $1 ORDER BY 1", doc_id
            )
        return [r["sequence_number"] for r in rows]

    assert await commit(first_updates[0]) == 1
    assert await commit(second_updates[-1]) == 2  # waits for " world"
    await rooms.store(room, force=True)
    assert await snapshots() == []
    assert await commit(first_updates[1]) == 3
    await rooms.store(room, force=True)
    assert await snapshots() == [3]
    async with store.tenant_transaction(pool, TENANT_A) as conn:
        row = await store.latest_snapshot(conn, doc_id)
    assert Document.from_state(row["state"]).text() == "hello world!"


async def test_an_item_between_ids_a_lagging_room_lacks_is_taken_once_it_reads_the_log(
    pool: asyncpg.Pool, rooms: RoomRegistry
) -> None:
    """Another node stored "abc"; this node's room has not read it yet (no hint came) when an
    editor who has it inserts between `b` and `c`. The room cannot check the order of ids it
    lacks: it refuses (`OriginsMissing`), reads the log up to its head, and takes it (what the
    pipeline does once, before counting the update as invalid)."""
    doc_id = await make_document(pool)
    lagging = await rooms.get(TENANT_A, doc_id)
    committer = Committer(pool, shards=1)
    other_node = RoomRegistry(pool, committer, Settings())
    committer.on_committed = other_node.on_committed
    committer.start()
    try:
        room = await other_node.get(TENANT_A, doc_id)
        first, first_updates = writer(31)
        first += "abc"
        op = room.apply_update("alice", first_updates[-1])
        assert op is not None
        assert await asyncio.wait_for(await other_node.submit(room, op), DEADLINE_S) == 1
    finally:
        await other_node.stop()
        await committer.stop(5.0)
    second, second_updates = writer(32)
    second.doc.apply_update(first_updates[-1])
    second.insert(2, "X")
    with pytest.raises(OriginsMissing, match="lacks one of them"):
        lagging.apply_update("bob", second_updates[-1])
    assert lagging.document.text() == ""
    await rooms.catch_up(lagging)
    op = lagging.apply_update("bob", second_updates[-1])
    assert op is not None and lagging.document.text() == "abXc"
    assert await asyncio.wait_for(await rooms.submit(lagging, op), DEADLINE_S) == 2
