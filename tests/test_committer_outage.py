"""The committer against a database that goes away (server/documents/committer.py, docs/operations.md "When
the database is away"): real PostgreSQL, real pools, outages made by the test's admin connection.

Outages are real and bounded: `pg_terminate_backend` of the application role's backends, and
`ALTER DATABASE ... CONNECTION LIMIT 0` (binds every role but superusers, so only this test's
database refuses the app role, and the admin connection stays), undone in `finally`. Every
operation carries unique bytes, so the log shows whether it was stored, and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.core.metrics import Metrics
from server.db import store
from server.db.database import create_pool
from server.documents.committer import Committer
from tests.conftest import TENANT_A

if TYPE_CHECKING:
    from tests.conftest import Postgres, TestDatabase

DEADLINE_S = 30.0
_numbers = itertools.count()

Outcome = tuple[int | None, BaseException | None]


class Outcomes:
    """Every `on_done` call, by operation (its update bytes)."""

    def __init__(self) -> None:
        self.calls: dict[bytes, list[Outcome]] = defaultdict(list)

    def callback(self, update: bytes) -> Callable[[int | None, BaseException | None], None]:
        return lambda seq, exc: self.calls[update].append((seq, exc))

    async def wait(self, updates: Iterable[bytes], timeout_s: float = DEADLINE_S) -> None:
        updates = list(updates)
        await eventually(lambda: all(u in self.calls for u in updates), timeout_s)

    def committed(self, update: bytes) -> bool:
        (seq, exc), = self.calls[update]
        return seq is not None and exc is None

    def unavailable(self, update: bytes) -> bool:
        (seq, exc), = self.calls[update]
        return seq is None and isinstance(exc, TandemError) and exc.code is ErrorCode.UNAVAILABLE


async def eventually(condition: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Wait for `condition()` under a deadline; the pause between checks yields to the writers."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def submit(committer: Committer, outcomes: Outcomes, doc_id: uuid.UUID) -> bytes:
    update = f"op-{next(_numbers)}".encode()
    await committer.enqueue(TENANT_A, doc_id, store.NewOperation("writer", "insert", "{}", update), outcomes.callback(update))
    return update


async def until_committing(committer: Committer, outcomes: Outcomes, docs: list[uuid.UUID], attempts: int = 20) -> None:
    """Probe until an operation on every document commits: a writer may still send one batch on a
    connection PostgreSQL ended a moment before, whose end the client has not read yet (that
    batch is refused with `unavailable`, and the writer takes a fresh connection)."""
    for _ in range(attempts):
        probes = [await submit(committer, outcomes, doc) for doc in docs]
        await outcomes.wait(probes)
        if all(outcomes.committed(p) for p in probes):
            return
    raise AssertionError(f"no commit in {attempts} rounds")


def none_connected(committer: Committer) -> bool:
    """Every writer has read the end of its connection (it takes a new one at its next batch)."""
    return not any(s["connected"] for s in committer.health()["shards"])


async def make_document(pool: asyncpg.Pool) -> uuid.UUID:
    async with store.tenant_transaction(pool, TENANT_A, "setup") as conn:
        ws = await conn.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'outage', 'setup') RETURNING id", TENANT_A
        )
        return await conn.fetchval(
            "INSERT INTO shared_documents (workspace_id, tenant_id, title, created_by)"
            " VALUES ($1, $2, 'doc', 'setup') RETURNING id",
            ws, TENANT_A,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def row_locked(db: TestDatabase, doc_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the document's row (as the append does) in a transaction of another connection: the
    admin connection stays out of transactions, where pg_stat_activity would be a snapshot."""
    conn = await asyncpg.connect(db.admin_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM shared_documents WHERE id = $1 FOR UPDATE", doc_id)
            yield
    finally:
        await conn.close()


async def terminate_app_backends(admin: asyncpg.Connection, db: TestDatabase, role: str) -> int:
    """End every backend of the app role in this test's database, and wait until they are gone."""
    pids = await admin.fetchval(
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity WHERE datname = $1 AND usename = $2", db.name, role
    )
    await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    async with asyncio.timeout(DEADLINE_S):
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids):
            await asyncio.sleep(0.01)
    return len(pids)


async def refuse_connections(admin: asyncpg.Connection, db: TestDatabase, role: str) -> None:
    await admin.execute(f'ALTER DATABASE "{db.name}" CONNECTION LIMIT 0')
    await terminate_app_backends(admin, db, role)


async def allow_connections(admin: asyncpg.Connection, db: TestDatabase) -> None:
    await admin.execute(f'ALTER DATABASE "{db.name}" CONNECTION LIMIT -1')


async def check_log(admin: asyncpg.Connection, outcomes: Outcomes, doc_ids: list[uuid.UUID]) -> None:
    """Each operation was reported once; one reported committed is in the log at its seq; none is
    stored twice; each document's seqs are 1..n."""
    rows = await admin.fetch(
        "SELECT document_id, sequence_number, update FROM document_operations WHERE document_id = ANY($1)", doc_ids
    )
    stored: dict[bytes, list[tuple[uuid.UUID, int]]] = defaultdict(list)
    for row in rows:
        stored[row["update"]].append((row["document_id"], row["sequence_number"]))
    assert all(len(places) == 1 for places in stored.values()), "an operation stored twice"
    for update, calls in outcomes.calls.items():
        assert len(calls) == 1, f"{update!r} reported {len(calls)} times"
        seq, exc = calls[0]
        if seq is not None:
            assert [s for _doc, s in stored[update]] == [seq], f"{update!r} reported committed but not in the log"
        else:
            assert outcomes.unavailable(update), f"{update!r}: {exc!r}"
    for doc_id in doc_ids:
        seqs = sorted(s for places in stored.values() for d, s in places if d == doc_id)
        assert seqs == list(range(1, len(seqs) + 1))


@pytest.fixture
def app_role(postgres: Postgres) -> str:
    return postgres.settings.app_role


@pytest.fixture
async def pool(db: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db.app_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        pool.terminate()


async def test_a_writer_goes_on_after_its_connection_is_terminated(
    db: TestDatabase, admin: asyncpg.Connection, pool: asyncpg.Pool, app_role: str
) -> None:
    committer = Committer(pool, shards=2, timeout_s=30, unavailable_after_s=30)
    committer.start()
    outcomes = Outcomes()
    try:
        docs = [await make_document(pool) for _ in range(4)]  # ids spread over both shards
        before = [await submit(committer, outcomes, doc) for doc in docs for _ in range(5)]
        await outcomes.wait(before)
        assert all(outcomes.committed(u) for u in before)

        # A batch in flight when its connection is ended: its append waits on the document's row,
        # which this transaction holds, then PostgreSQL terminates the backend under it.
        async with row_locked(db, docs[0]):
            in_flight = await submit(committer, outcomes, docs[0])
            async with asyncio.timeout(DEADLINE_S):
                while not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND wait_event_type = 'Lock'",
                    db.name, app_role,
                ):  # fmt: skip
                    await asyncio.sleep(0.01)
            await terminate_app_backends(admin, db, app_role)
            await outcomes.wait([in_flight])
        assert outcomes.unavailable(in_flight)

        # Terminations while operations are queued and committing: each is reported once either way.
        during: list[bytes] = []
        for _ in range(3):
            during += [await submit(committer, outcomes, doc) for doc in docs for _ in range(10)]
            await terminate_app_backends(admin, db, app_role)
        await outcomes.wait(during)

        await until_committing(committer, outcomes, docs)
        after = [await submit(committer, outcomes, doc) for doc in docs for _ in range(5)]
        await outcomes.wait(after)
        assert all(outcomes.committed(u) for u in after)
        await check_log(admin, outcomes, docs)
    finally:
        await committer.stop(5.0)


async def test_operations_wait_while_the_database_refuses_connections_and_commit_once_it_answers(
    db: TestDatabase, admin: asyncpg.Connection, pool: asyncpg.Pool, app_role: str
) -> None:
    metrics = Metrics()
    committer = Committer(pool, shards=2, timeout_s=2.0, unavailable_after_s=1.0, metrics=metrics)
    committer.start()
    outcomes = Outcomes()
    try:
        docs = [await make_document(pool) for _ in range(4)]
        warm = [await submit(committer, outcomes, doc) for doc in docs]
        await outcomes.wait(warm)
        assert committer.health()["ok"]

        await refuse_connections(admin, db, app_role)
        try:
            await eventually(lambda: none_connected(committer))
            waiting = [await submit(committer, outcomes, doc) for doc in docs for _ in range(5)]
            await eventually(lambda: not committer.health()["ok"])
            down = [s for s in committer.health()["shards"] if not s["ok"]]
            assert down and not any(s["connected"] for s in down)
            assert all(s["last_error"] and s["since_error_s"] is not None for s in down)
            # Refused once they waited `unavailable_after_s`, not held forever.
            await outcomes.wait(waiting)
            assert all(outcomes.unavailable(u) for u in waiting)
            assert metrics.registry.get_sample_value("tandem_commit_unavailable_total", {"cause": "waited"}) == len(waiting)
            late = [await submit(committer, outcomes, doc) for doc in docs]  # committed or refused: once
        finally:
            await allow_connections(admin, db)

        await eventually(lambda: committer.health()["ok"])  # the writers took fresh connections
        await outcomes.wait(late)
        await until_committing(committer, outcomes, docs)
        after = [await submit(committer, outcomes, doc) for doc in docs for _ in range(5)]
        await outcomes.wait(after)
        assert all(outcomes.committed(u) for u in after)
        assert metrics.registry.get_sample_value("tandem_commit_reconnects_total") >= 1
        # Every append the database answered is timed: at least one per batch that committed.
        timed = metrics.registry.get_sample_value("tandem_commit_seconds_count")
        assert timed is not None and timed >= metrics.registry.get_sample_value("tandem_commit_batches_total") > 0
        # And every operation appended waited some time for it, counted once per append tried.
        waits = metrics.registry.get_sample_value("tandem_commit_wait_seconds_count")
        assert waits is not None and waits >= metrics.registry.get_sample_value("tandem_committed_operations_total") > 0
        await check_log(admin, outcomes, docs)
    finally:
        await committer.stop(5.0)


async def test_stop_returns_within_its_deadline_while_the_database_refuses_connections(
    db: TestDatabase, admin: asyncpg.Connection, pool: asyncpg.Pool, app_role: str
) -> None:
    stop_s = 1.5
    committer = Committer(pool, shards=2, timeout_s=2.0, unavailable_after_s=60.0)
    committer.start()
    outcomes = Outcomes()
    docs = [await make_document(pool) for _ in range(2)]
    warm = [await submit(committer, outcomes, doc) for doc in docs]
    await outcomes.wait(warm)
    await refuse_connections(admin, db, app_role)
    try:
        await eventually(lambda: none_connected(committer))
        queued = [await submit(committer, outcomes, doc) for doc in docs for _ in range(5)]
        await eventually(lambda: not committer.health()["ok"])
        assert not any(u in outcomes.calls for u in queued)  # waiting: `unavailable_after_s` is far

        async with asyncio.timeout(stop_s + 1.0):  # its deadline, and a moment to hand connections back
            await committer.stop(stop_s)
        assert all(outcomes.unavailable(u) for u in queued)

        after_stop = await submit(committer, outcomes, docs[0])  # refused at once, not queued
        assert outcomes.unavailable(after_stop)
    finally:
        await allow_connections(admin, db)
    await check_log(admin, outcomes, docs)


async def test_a_statement_failing_for_one_document_fails_only_that_documents_operations(
    db: TestDatabase, admin: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    committer = Committer(pool, shards=1)
    committer.start()
    outcomes = Outcomes()
    try:
        bad, *good = [await make_document(pool) for _ in range(3)]
        await admin.execute(
            "CREATE FUNCTION test_refuse_one_document() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF NEW.document_id = '{bad}' THEN RAISE EXCEPTION 'refused for this document'; END IF;"
            " RETURN NEW; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER test_refuse_one_document BEFORE INSERT ON document_operations"
            " FOR EACH ROW EXECUTE FUNCTION test_refuse_one_document()"
        )
        try:
            # Queued without a pause: the writer takes them as one batch.
            mixed = [await submit(committer, outcomes, doc) for _ in range(3) for doc in (bad, *good)]
            await outcomes.wait(mixed)
        finally:
            await admin.execute("DROP TRIGGER test_refuse_one_document ON document_operations")
            await admin.execute("DROP FUNCTION test_refuse_one_document()")
        for update in mixed[0::3]:  # the bad document's: its statement's own error, as it is
            (seq, exc), = outcomes.calls[update]
            assert seq is None and isinstance(exc, asyncpg.RaiseError) and not isinstance(exc, TandemError)
        assert all(outcomes.committed(u) for i, u in enumerate(mixed) if i % 3)
        # Not a database failure: the writer kept its connection and the write path stayed healthy.
        assert committer.health()["ok"] and committer.health()["shards"][0]["since_error_s"] is None

        again = await submit(committer, outcomes, bad)
        await outcomes.wait([again])
        assert outcomes.committed(again)
        await check_log_ignoring_failed(admin, outcomes, [bad, *good])
    finally:
        await committer.stop(5.0)


async def check_log_ignoring_failed(admin: asyncpg.Connection, outcomes: Outcomes, doc_ids: list[uuid.UUID]) -> None:
    failed = {u for u, [(seq, exc)] in outcomes.calls.items() if seq is None and not outcomes.unavailable(u)}
    kept = Outcomes()
    kept.calls.update({u: c for u, c in outcomes.calls.items() if u not in failed})
    stored = {r["update"] for r in await admin.fetch("SELECT update FROM document_operations WHERE update = ANY($1)", list(failed))}
    assert not stored, "a failed operation was stored"
    await check_log(admin, kept, doc_ids)


async def test_an_append_that_hangs_is_refused_after_commit_timeout_and_the_writer_goes_on(
    db: TestDatabase, admin: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    metrics = Metrics()
    committer = Committer(pool, shards=1, timeout_s=1.0, unavailable_after_s=0.3, metrics=metrics)
    committer.start()
    outcomes = Outcomes()
    try:
        doc, other = [await make_document(pool) for _ in range(2)]
        async with row_locked(db, doc):
            hung = await submit(committer, outcomes, doc)
            # In flight longer than `unavailable_after_s`: the write path reports it cannot commit.
            await eventually(lambda: not committer.health()["ok"])
            assert committer.health()["shards"][0]["queued"] == 1
            await outcomes.wait([hung])  # refused at `timeout_s`, while the row is still held
        assert outcomes.unavailable(hung)
        # PostgreSQL ended the append at `timeout_s` (statement_timeout): rolled back, not left running.
        assert isinstance(outcomes.calls[hung][0][1].__cause__, asyncpg.QueryCanceledError)
        assert metrics.registry.get_sample_value("tandem_commit_unavailable_total", {"cause": "timeout"}) == 1

        after = [await submit(committer, outcomes, d) for d in (doc, other)]
        await outcomes.wait(after)
        assert all(outcomes.committed(u) for u in after)
        assert committer.health()["ok"]
        await check_log(admin, outcomes, [doc, other])
        assert not await admin.fetchval("SELECT count(*) FROM document_operations WHERE update = $1", hung)
    finally:
        await committer.stop(5.0)
