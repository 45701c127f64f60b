"""Per-document sequence numbers (NOTES 12): contiguous, unique, and never skipped by a reader.

A global sequence hands out numbers at insert time, so a reader catching up with
`seq > last_seen` misses rows that commit late. The head counter taken under the document's
row lock makes numbers follow commit order.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable

import asyncpg

from server.db import store
from server.db.database import create_pool
from tests.conftest import TENANT_A, TENANT_B

WRITERS = 8
OPS_PER_WRITER = 200


async def _make_document(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> uuid.UUID:
    async with store.tenant_transaction(pool, tenant_id, "setup") as conn:
        ws = await conn.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'seq', 'setup') RETURNING id", tenant_id
        )
        return await conn.fetchval(
            "INSERT INTO shared_documents (workspace_id, tenant_id, title, created_by)"
            " VALUES ($1, $2, 'doc', 'setup') RETURNING id",
            ws,
            tenant_id,
        )


async def test_concurrent_writers_get_exactly_one_to_n_and_a_polling_reader_sees_all(db) -> None:
    pool = await create_pool(db.app_url, min_size=2, max_size=WRITERS + 2)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        total = WRITERS * OPS_PER_WRITER
        acknowledged: list[int] = []
        writers_done = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(OPS_PER_WRITER):
                op = store.NewOperation(f"agent-{n}", "insert", f'{{"{n}": {i + 1}}}', bytes([n, i % 256]))
                async with store.tenant_transaction(pool, TENANT_A, op.agent_id) as conn:
                    acknowledged.extend(await store.append_operations(conn, doc_id, [op]))

        async def reader() -> list[int]:
            seen: list[int] = []
            last = 0
            async with asyncio.timeout(120):
                while len(seen) < total:
                    # Read the flag before querying: a commit that lands while the query runs is
                    # seen by the next query, which happens because `done` was still False.
                    done = writers_done.is_set()
                    async with store.tenant_transaction(pool, TENANT_A) as conn:
                        rows = await store.operations_after(conn, doc_id, last, limit=500)
                    for row in rows:
                        seen.append(row["sequence_number"])
                        last = row["sequence_number"]
                    if not rows and done:
                        break
                    if not rows:
                        await asyncio.sleep(0.005)  # polling interval of the reader under test
            return seen

        read_task = asyncio.create_task(reader())
        async with asyncio.timeout(120):
            await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        writers_done.set()
        seen = await read_task

        assert sorted(acknowledged) == list(range(1, total + 1))
        assert seen == list(range(1, total + 1))
        async with store.tenant_transaction(pool, TENANT_A) as conn:
            head = await conn.fetchval("SELECT head_seq FROM shared_documents WHERE id = $1", doc_id)
            count = await conn.fetchval("SELECT count(*) FROM document_operations WHERE document_id = $1", doc_id)
        assert head == total and count == total
    finally:
        await pool.close()


async def test_batch_append_takes_contiguous_numbers_in_one_transaction(db) -> None:
    pool = await create_pool(db.app_url)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        ops = [store.NewOperation("a", "insert", "{}", b"x") for _ in range(100)]
        async with store.tenant_transaction(pool, TENANT_A, "a") as conn:
            first = await store.append_operations(conn, doc_id, ops[:60])
            second = await store.append_operations(conn, doc_id, ops[60:])
        assert first + second == list(range(1, 101))
    finally:
        await pool.close()


async def test_another_tenants_document_cannot_be_appended_to(db) -> None:
    pool = await create_pool(db.app_url)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        other = uuid.UUID("00000000-0000-0000-0000-00000000000b")
        async with store.tenant_transaction(pool, other, "b") as conn:
            try:
                await store.append_operations(conn, doc_id, [store.NewOperation("b", "insert", "{}", b"x")])
            except LookupError:
                pass
            else:
                raise AssertionError("tenant B appended to tenant A's document")
    finally:
        await pool.close()


# --- the committer's batch call (tandem_append_batch, migrations 0018 and 0019) ----------------


async def _append_batch(pool: asyncpg.Pool, ops: list[tuple], node: str | None = None) -> list[asyncpg.Record]:
    """(tenant, doc, agent, fence) per operation, in one call as the committer makes it."""
    async with pool.acquire() as conn, conn.transaction():
        return await conn.fetch(
            store.Q["append_batch"], [o[0] for o in ops], [o[1] for o in ops], [o[2] for o in ops], [o[3] for o in ops],
            ["insert"] * len(ops), ["{}"] * len(ops), [f"u{i}".encode() for i in range(len(ops))], node,
        )  # fmt: skip


async def test_one_batch_call_sequences_documents_of_two_tenants_checks_locks_and_sends_hints(db) -> None:
    pool = await create_pool(db.app_url, min_size=1, max_size=3)
    listener = await asyncpg.connect(db.app_url)
    hints: list[str] = []
    await listener.add_listener("tandem", lambda *args: hints.append(args[3]))
    try:
        locked_doc = await _make_document(pool, TENANT_A)
        other_doc = await _make_document(pool, TENANT_B)
        admin = await asyncpg.connect(db.admin_url)
        try:
            fence = await admin.fetchval(
                "UPDATE shared_documents SET is_locked = true, locked_by = 'x', locked_at = now(),"
                " lock_expires_at = now() + interval '1 minute', lock_fence = nextval('lock_fence_seq')"
                " WHERE id = $1 RETURNING lock_fence",
                locked_doc,
            )
            missing = uuid.uuid4()
            ops = [
                (TENANT_A, locked_doc, "x", None),  # the holder: stored
                (TENANT_A, locked_doc, "y", None),  # someone else: locked
                (TENANT_A, locked_doc, "x", fence + 1),  # the holder with a wrong fence: stale
                (TENANT_A, locked_doc, "x", fence),  # the holder with its fence: stored
                (TENANT_B, other_doc, "z", None),
                (TENANT_B, other_doc, "z", None),
                (TENANT_A, missing, "x", None),  # no such document
            ]
            rows = await _append_batch(pool, ops, node="node-test")
            assert [(r["seq"], r["refused"], r["holder"]) for r in rows] == [
                (1, None, None), (None, "locked", "x"), (None, "stale_fence", "x"), (2, None, None),
                (1, None, None), (2, None, None), (None, "not_found", None),
            ]  # fmt: skip
            stored = await admin.fetch(
                "SELECT document_id, tenant_id, sequence_number, agent_id, \"update\" FROM document_operations"
                " ORDER BY document_id = $1 DESC, sequence_number",
                locked_doc,
            )
            assert [(r["tenant_id"], r["sequence_number"], r["update"]) for r in stored] == [
                (TENANT_A, 1, b"u0"), (TENANT_A, 2, b"u3"), (TENANT_B, 1, b"u4"), (TENANT_B, 2, b"u5"),
            ]  # fmt: skip
            heads = dict(await admin.fetch("SELECT id, head_seq FROM shared_documents WHERE id = ANY($1)", [locked_doc, other_doc]))
            assert heads == {locked_doc: 2, other_doc: 2}
        finally:
            await admin.close()
        async with asyncio.timeout(5):
            while len(hints) < 2:
                await asyncio.sleep(0.01)
        sent = sorted((json.loads(h)["d"], json.loads(h)["s"], json.loads(h)["n"], json.loads(h)["o"]) for h in hints)
        # Small operations ride along in the hint: [agent, base64 update, type] for the seqs up to "s".
        assert sent == sorted([
            (str(locked_doc), 2, "node-test", [["x", "dTA=", "insert"], ["x", "dTM=", "insert"]]),
            (str(other_doc), 2, "node-test", [["z", "dTQ=", "insert"], ["z", "dTU=", "insert"]]),
        ])  # fmt: skip
        # Operations too large for NOTIFY's 8,000 bytes are left for the follower to read.
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(
                store.Q["append_batch"], [TENANT_B] * 3, [other_doc] * 3, ["z"] * 3, [None] * 3, ["insert"] * 3,
                ["{}"] * 3, [bytes(3000)] * 3, "node-test",
            )  # fmt: skip
        async with asyncio.timeout(5):
            while len(hints) < 3:
                await asyncio.sleep(0.01)
        big = json.loads(hints[2])
        assert (big["d"], big["s"], "o" in big) == (str(other_doc), 5, False) and len(hints[2]) < 200
        # Without a node id no hint is sent.
        await _append_batch(pool, [(TENANT_B, other_doc, "z", None)])
        await asyncio.sleep(0.2)  # a bounded look for a hint that must not come
        assert len(hints) == 3
    finally:
        await listener.close()
        await pool.close()


async def test_a_one_document_batch_is_stored_and_refused_as_the_general_path_decides(db) -> None:
    """One tenant's operations on one document (most commits) take the function's short path when
    no live lock holds it and no fence or expected head is given; whatever takes the general path
    instead is judged as before."""
    pool = await create_pool(db.app_url, min_size=1, max_size=3)
    admin = await asyncpg.connect(db.admin_url)
    try:
        doc = await _make_document(pool, TENANT_A)

        async def batch(ops: list[tuple]) -> list[tuple]:
            return [(r["seq"], r["refused"], r["holder"]) for r in await _append_batch(pool, ops)]

        assert await batch([(TENANT_A, doc, "x", None)] * 3) == [(1, None, None), (2, None, None), (3, None, None)]
        assert await batch([(TENANT_A, doc, "x", 7)]) == [(None, "stale_fence", None)]  # a fence, and no lock
        assert await batch([(TENANT_B, doc, "z", None)]) == [(None, "not_found", None)]  # another tenant's
        assert await batch([(TENANT_A, uuid.uuid4(), "x", None)]) == [(None, "not_found", None)]
        await admin.execute(
            "UPDATE shared_documents SET is_locked = true, locked_by = 'x', locked_at = now(),"
            " lock_expires_at = now() + interval '1 minute', lock_fence = nextval('lock_fence_seq') WHERE id = $1",
            doc,
        )
        assert await batch([(TENANT_A, doc, "x", None), (TENANT_A, doc, "y", None)]) == [(4, None, None), (None, "locked", "x")]
        await admin.execute("UPDATE shared_documents SET lock_expires_at = now() - interval '1 second' WHERE id = $1", doc)
        assert await batch([(TENANT_A, doc, "y", None)] * 2) == [(5, None, None), (6, None, None)]  # the lock expired
        stored = await admin.fetch(
            'SELECT sequence_number, agent_id, "update" FROM document_operations WHERE document_id = $1 ORDER BY 1', doc
        )
        assert [(r[0], r[1], r[2]) for r in stored] == [
            (1, "x", b"u0"), (2, "x", b"u1"), (3, "x", b"u2"), (4, "x", b"u0"), (5, "y", b"u0"), (6, "y", b"u1"),
        ]  # fmt: skip
        assert await admin.fetchval("SELECT head_seq FROM shared_documents WHERE id = $1", doc) == 6
    finally:
        await admin.close()
        await pool.close()


async def test_batch_numbers_each_documents_operations_in_array_order_when_documents_interleave(db) -> None:
    pool = await create_pool(db.app_url, min_size=1, max_size=2)
    try:
        first, second = await _make_document(pool, TENANT_A), await _make_document(pool, TENANT_A)
        docs = [first, second, first, second, second, first]
        rows = await _append_batch(pool, [(TENANT_A, d, "a", None) for d in docs])
        assert [r["seq"] for r in rows] == [1, 1, 2, 2, 3, 3]
        async with store.tenant_transaction(pool, TENANT_A) as conn:
            stored = await conn.fetch(
                "SELECT document_id, sequence_number, \"update\" FROM document_operations ORDER BY document_id, sequence_number"
            )
            heads = dict(await conn.fetch("SELECT id, head_seq FROM shared_documents WHERE id = ANY($1)", [first, second]))
        assert sorted((r["document_id"], r["sequence_number"], r["update"]) for r in stored) == sorted([
            (first, 1, b"u0"), (first, 2, b"u2"), (first, 3, b"u5"),
            (second, 1, b"u1"), (second, 2, b"u3"), (second, 3, b"u4"),
        ])  # fmt: skip
        assert heads == {first: 3, second: 3}
    finally:
        await pool.close()


async def test_batches_lock_documents_in_id_order_so_opposite_orders_cannot_deadlock(db) -> None:
    """T1 holds the lower document and then wants the higher one while T2 asks for both, higher
    first in its arrays. Taking locks in array order would deadlock (PostgreSQL aborts one after
    deadlock_timeout); in id order T2 waits for the lower one holding nothing."""
    pool = await create_pool(db.app_url, min_size=2, max_size=3)
    try:
        low, high = sorted([await _make_document(pool, TENANT_A), await _make_document(pool, TENANT_A)])

        def call(conn: asyncpg.Connection, docs: list[uuid.UUID]) -> Awaitable[list[asyncpg.Record]]:
            n = len(docs)
            return conn.fetch(
                store.Q["append_batch"], [TENANT_A] * n, docs, ["a"] * n, [None] * n, ["insert"] * n, ["{}"] * n,
                [b"u"] * n, None,
            )  # fmt: skip

        async with pool.acquire() as t1, pool.acquire() as t2:
            await t1.execute("BEGIN")
            assert [r["seq"] for r in await call(t1, [low])] == [1]
            await t2.execute("BEGIN")
            waiting = asyncio.ensure_future(call(t2, [high, low]))
            await asyncio.sleep(0.3)  # a bounded wait: T2 must be blocked on `low`, holding nothing
            assert not waiting.done()
            async with asyncio.timeout(5):  # would need deadlock_timeout (1 s) and fail if T2 held `high`
                assert [r["seq"] for r in await call(t1, [high])] == [1]
            await t1.execute("COMMIT")
            async with asyncio.timeout(5):
                assert [r["seq"] for r in await waiting] == [2, 2]
            await t2.execute("COMMIT")
    finally:
        await pool.close()


async def test_appending_leaves_updated_at_alone_so_head_updates_are_hot(db) -> None:
    """An append only advances head_seq: no indexed column changes, so PostgreSQL updates the row
    in place (HOT) instead of adding an entry to every index of shared_documents each batch."""
    pool = await create_pool(db.app_url, min_size=1, max_size=2)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        async with store.tenant_transaction(pool, TENANT_A, "a") as conn:
            before = await conn.fetchval("SELECT updated_at FROM shared_documents WHERE id = $1", doc_id)
            for _ in range(5):
                await store.append_operations(conn, doc_id, [store.NewOperation("a", "insert", "{}", b"x")] * 3)
            hot = await conn.fetchval("SELECT pg_stat_get_xact_tuples_hot_updated('shared_documents'::regclass)")
            updated = await conn.fetchval("SELECT pg_stat_get_xact_tuples_updated('shared_documents'::regclass)")
            after = await conn.fetchval("SELECT updated_at FROM shared_documents WHERE id = $1", doc_id)
        assert (updated, hot) == (5, 5)
        assert after == before
        # Any other change of the row still moves updated_at.
        async with store.tenant_transaction(pool, TENANT_A, "a") as conn:
            await conn.execute("UPDATE shared_documents SET title = 'renamed' WHERE id = $1", doc_id)
            moved = await conn.fetchval("SELECT updated_at FROM shared_documents WHERE id = $1", doc_id)
        assert moved > before
    finally:
        await pool.close()


async def test_operation_ids_are_time_ordered_uuids_so_appends_fill_the_id_indexes_in_order(db) -> None:
    """Ids follow the UUIDv7 layout (migration 0020): version 7, and an id made a millisecond
    or more later sorts after, so the two id indexes grow at their right edge."""
    pool = await create_pool(db.app_url, min_size=1, max_size=2)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        for _ in range(5):
            async with store.tenant_transaction(pool, TENANT_A, "a") as conn:
                await store.append_operations(conn, doc_id, [store.NewOperation("a", "insert", "{}", b"x")] * 4)
            await asyncio.sleep(0.002)
        async with store.tenant_transaction(pool, TENANT_A) as conn:
            rows = await conn.fetch(
                "SELECT id, sequence_number, timestamp FROM document_operations WHERE document_id = $1"
                " ORDER BY sequence_number", doc_id,
            )  # fmt: skip
        assert len(rows) == 20
        assert all(r["id"].version == 7 and r["id"].variant == uuid.RFC_4122 for r in rows)
        batches = [[r["id"] for r in rows[i : i + 4]] for i in range(0, 20, 4)]
        assert all(max(earlier) < min(later) for earlier, later in zip(batches, batches[1:]))
        for r in rows:  # the first 48 bits are the Unix time in milliseconds
            millis = r["id"].int >> 80
            assert abs(millis - r["timestamp"].timestamp() * 1000) < 5_000
        assert len({r["id"] for r in rows}) == 20
    finally:
        await pool.close()


async def test_an_expected_head_is_checked_under_the_row_lock_and_refused_when_it_moved(db) -> None:
    """Migration 0029: an operation carrying the head its writer expects is stored only when it
    is the document's head and the operation is its document's first in the batch; otherwise
    `head_moved` with the head found, and nothing of it is stored. Others in the batch go on."""
    pool = await create_pool(db.app_url, min_size=1, max_size=2)
    try:
        doc_id = await _make_document(pool, TENANT_A)
        other = await _make_document(pool, TENANT_A)

        async def append(ops: list[tuple[uuid.UUID, int | None]]) -> list[tuple]:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    store.Q["append_batch_expecting"], [TENANT_A] * len(ops), [o[0] for o in ops], ["a"] * len(ops),
                    [None] * len(ops), ["insert"] * len(ops), ["{}"] * len(ops),
                    [f"u{i}".encode() for i in range(len(ops))], None, [o[1] for o in ops],
                )  # fmt: skip
            return [(r["seq"], r["refused"], r["head"]) for r in rows]

        assert await append([(doc_id, 0), (doc_id, None)]) == [(1, None, None), (2, None, None)]
        # A stale expectation: refused with the head; the plain write after it and another
        # document's write are stored.
        assert await append([(doc_id, 1), (doc_id, None), (other, 0)]) == [
            (None, "head_moved", 2), (3, None, None), (1, None, None),
        ]  # fmt: skip
        # Right head but not the document's first operation of the batch: refused too.
        assert await append([(doc_id, None), (doc_id, 3)]) == [(4, None, None), (None, "head_moved", 4)]
        # Two writers that read the same head: exactly one is stored.
        outcomes = await asyncio.gather(append([(doc_id, 4)]), append([(doc_id, 4)]))
        assert sorted((o[0] for o in outcomes), key=str) == [(5, None, None), (None, "head_moved", 5)]
        async with store.tenant_transaction(pool, TENANT_A) as conn:
            seqs = await conn.fetch(
                "SELECT sequence_number FROM document_operations WHERE document_id = $1 ORDER BY 1", doc_id
            )
        assert [r["sequence_number"] for r in seqs] == [1, 2, 3, 4, 5]
    finally:
        await pool.close()
