"""Reading a document's past from PostgreSQL: the nearest snapshot for a bound, pages of the log,
and the replays over them (`crdt.replay`: `rebuild`, `blame`), for `tandem replay` and the HTTP API.

Every read runs as the application role inside one read-only, repeatable-read transaction with
the tenant set: RLS confines it to that tenant and every page sees the same log. Failures are
`LogError`s whose message is written for the person who asked; callers turn them into their own
errors. Imports no Starlette, typer or tqdm: a progress bar is passed in as a callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from crdt import replay as crdt
from crdt.clock import VectorClock
from crdt.document import CorruptUpdate, Document
from crdt.operations import Operation, Snapshot
from server.db import store

T = TypeVar("T")

PAGE_ROWS = 2000
"""Operations fetched per round trip; the replay holds one page plus the document in memory."""
PAGE_TIMEOUT_S = 60.0
"""Bound on one page's query (and on the worker thread's wait for it)."""
MAX_CLOCK_SNAPSHOTS = 50
"""Snapshots tried, newest first, for a clock bound; past them the replay starts from seq 1."""


class LogError(Exception):
    """The document cannot be read as asked; the message says why (no SQL, no other tenant)."""


class DocumentMissing(LogError):
    """No such document in this tenant (another tenant's is invisible, exactly like a missing one)."""


class PastHead(LogError):
    """A seq bound beyond the document's head."""


class Bar(Protocol):
    def update(self, n: int) -> object: ...


Progress = Callable[[int, str], AbstractContextManager[Bar | None]]
"""`progress(total_ops, label)`: a context manager giving a bar to advance, or None."""


@contextlib.contextmanager
def no_progress(_total: int, _label: str) -> Iterator[None]:
    yield None


@dataclass(frozen=True)
class DocumentRow:
    doc_id: uuid.UUID
    content_type: str
    head_seq: int
    content: str | None  # the readable text the server last stored (None: never stored)


@dataclass(frozen=True)
class Replayed:
    doc: DocumentRow
    document: Document
    seq: int  # the bound replayed to (a clock bound: the head, whose operations were filtered)
    snapshot_seq: int  # 0: replayed from the first operation
    operations: int  # rows read after the snapshot


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    agent_id: str
    op_type: str
    timestamp: datetime | None
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        when = self.timestamp.isoformat() if self.timestamp is not None else None
        return {
            "seq": self.seq,
            "agent_id": self.agent_id,
            "op_type": self.op_type,
            "timestamp": when,
            "size_bytes": self.size_bytes,
        }

    def line(self) -> str:
        """Aligned columns (the agent last, as it varies in width); see `tools.replay.HISTORY_HEADER`."""
        when = self.timestamp.isoformat() if self.timestamp is not None else "-"
        return f"{self.seq:>8}  {when:<32}  {self.op_type:<6}  {self.size_bytes:>7}  {self.agent_id}"


def reading(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, actor: str
) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """One view of the head, the snapshots and every page of the log, however long the read takes."""
    return store.tenant_transaction(pool, tenant_id, actor, snapshot=True)


async def replay(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    actor: str,
    at_seq: int | None = None,
    at_time: datetime | None = None,
    at_clock: VectorClock | None = None,
    progress: Progress = no_progress,
) -> Replayed:
    """The document after operation `at_seq`, after the log prefix up to `at_time`, or with the
    operations `at_clock` dominates (`crdt.replay.rebuild` documents each bound); default: the head.

    Starts from the newest snapshot that lies within the bound. Raises `DocumentMissing`,
    `PastHead` for a seq past the head, or `LogError` for a log that cannot be replayed.
    """
    async with reading(pool, tenant_id, actor) as conn:
        doc = await document_row(conn, tenant_id, doc_id)
        target = doc.head_seq
        if at_seq is not None:
            if at_seq > doc.head_seq:
                raise PastHead(
                    f"seq {at_seq} is past the head of document {doc_id} (seq {doc.head_seq})"
                )
            target = at_seq
        if at_time is not None:
            # The log prefix up to `at_time` (rebuild's `until_time` rule), resolved to a seq here
            # so that the nearest snapshot can be chosen by seq.
            target = await conn.fetchval(
                store.Q["replay_seq_at_time"], doc_id, at_time, target
            )
        if at_clock is None:
            snapshot = await snapshot_at_or_before(conn, doc_id, target)
        else:
            snapshot = await _snapshot_within(conn, doc_id, at_clock, target)
        start = snapshot.seq if snapshot is not None else 0
        with progress(target - start, f"replay to seq {target}") as bar:
            rows = Rows(conn, doc_id, start, target, bar)
            try:
                document = await rows.consume(
                    lambda ops: crdt.rebuild(
                        ops, snapshot, until_seq=target, until_clock=at_clock
                    )
                )
            except CorruptUpdate:
                problem = await locate_corrupt(conn, doc_id, snapshot, target, at_clock)
                hint = "tandem replay --verify checks the whole log"
                raise LogError(
                    f"cannot replay document {doc_id}: {problem} ({hint})"
                ) from None
            except crdt.ReplayError as exc:
                raise LogError(f"cannot replay document {doc_id}: {exc}") from None
    return Replayed(doc, document, target, start, rows.count)


async def blame(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    actor: str,
    at_seq: int | None = None,
    progress: Progress = no_progress,
) -> tuple[DocumentRow, int, list[crdt.Span]]:
    """The text at the head (or after `at_seq`) in spans, each with the agent that inserted it,
    and the seq it is at. Attribution needs every operation, so this always reads from seq 1."""
    async with reading(pool, tenant_id, actor) as conn:
        doc = await document_row(conn, tenant_id, doc_id)
        target = doc.head_seq if at_seq is None else at_seq
        if target > doc.head_seq:
            raise PastHead(
                f"seq {target} is past the head of document {doc_id} (seq {doc.head_seq})"
            )
        with progress(target, "blame") as bar:
            rows = Rows(conn, doc_id, 0, target, bar)
            try:
                spans = await rows.consume(crdt.blame)
            except (
                CorruptUpdate
            ) as exc:  # blame applies one operation at a time: the last one read
                problem = f"operation seq {rows.last_seq} cannot be applied: {exc}"
                raise LogError(f"cannot blame document {doc_id}: {problem}") from None
            except crdt.ReplayError as exc:
                raise LogError(f"cannot blame document {doc_id}: {exc}") from None
    return doc, target, spans


async def history(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    actor: str,
    agents: Sequence[str] = (),
    from_seq: int = 1,
    to_seq: int | None = None,
    from_time: datetime | None = None,
    to_time: datetime | None = None,
    limit: int | None = None,
) -> AsyncIterator[HistoryEntry]:
    """The operations in seq order (filters combine; seq and time bounds are inclusive), at most
    `limit`, read page by page. Raises `DocumentMissing` for a document the tenant cannot see."""
    async with reading(pool, tenant_id, actor) as conn:
        doc = await document_row(conn, tenant_id, doc_id)
        until = min(doc.head_seq, to_seq if to_seq is not None else doc.head_seq)
        remaining = limit if limit is not None else doc.head_seq
        for low in range(
            max(from_seq, 1) - 1, until, PAGE_ROWS
        ):  # pages are ranges of seq
            high = min(low + PAGE_ROWS, until)
            page = await conn.fetch(
                store.Q["replay_history"],
                doc_id,
                low,
                high,
                list(agents) or None,
                from_time,
                to_time,
                remaining,
                timeout=PAGE_TIMEOUT_S,
            )
            for r in page:
                yield HistoryEntry(
                    r["sequence_number"],
                    r["agent_id"],
                    r["operation_type"],
                    r["timestamp"],
                    r["size_bytes"],
                )
            remaining -= len(page)
            if remaining <= 0:
                return


async def document_row(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, doc_id: uuid.UUID
) -> DocumentRow:
    row = await conn.fetchrow(store.Q["replay_document"], doc_id)
    if (
        row is None
    ):  # another tenant's document is invisible (RLS), exactly like a missing one
        raise DocumentMissing(f"document {doc_id} not found in tenant {tenant_id}")
    return DocumentRow(doc_id, row["content_type"], row["head_seq"], row["content"])


async def snapshot_at_or_before(
    conn: asyncpg.Connection, doc_id: uuid.UUID, seq: int
) -> Snapshot | None:
    row = await conn.fetchrow(store.Q["replay_snapshot_at_or_before"], doc_id, seq)
    return (
        Snapshot(doc_id, row["sequence_number"], row["state"], row["created_at"])
        if row
        else None
    )


async def _snapshot_within(
    conn: asyncpg.Connection, doc_id: uuid.UUID, clock: VectorClock, head_seq: int
) -> Snapshot | None:
    """The newest snapshot whose state the clock has seen entirely (rebuild refuses others)."""
    seqs = [
        r["sequence_number"]
        for r in await conn.fetch(store.Q["replay_snapshot_seqs"], doc_id, head_seq)
    ]
    for seq in reversed(seqs[-MAX_CLOCK_SNAPSHOTS:]):
        snapshot = await snapshot_at_or_before(conn, doc_id, seq)
        if snapshot is not None and clock.dominates(
            Document.from_state(snapshot.state).clock()
        ):
            return snapshot
    return None


async def locate_corrupt(
    conn: asyncpg.Connection,
    doc_id: uuid.UUID,
    base: Snapshot | None,
    stop: int,
    clock: VectorClock | None = None,
) -> str:
    """After a `CorruptUpdate`, name the row: replay the stretch again with one update per
    pycrdt transaction, so the row being applied when it fails is the last one handed out.
    (Only on failure: batching is about three times faster.)"""
    rows = Rows(conn, doc_id, base.seq if base is not None else 0, stop)
    try:
        await rows.consume(
            lambda ops: crdt.rebuild(
                ops, base, until_seq=stop, until_clock=clock, batch_ops=1
            )
        )
    except CorruptUpdate as exc:
        return (
            f"operation seq {rows.last_seq} cannot be applied: {exc.__cause__ or exc}"
        )
    return f"an operation in seq {rows.first_seq}..{stop} cannot be applied"


class Rows:
    """The operations `after_seq + 1 .. until_seq` for a consumer running in a worker thread
    (replay is CPU-bound), fetched page by page on the event loop so memory stays bounded.
    Fetching and consuming alternate: the thread waits, without the GIL, while the loop reads
    a page (overlapping them measured no faster: both need the GIL). Records the last seq
    handed out, so a failing consumer can be told where it stopped."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        doc_id: uuid.UUID,
        after_seq: int,
        until_seq: int,
        bar: Bar | None = None,
    ) -> None:
        self.conn, self.doc_id, self.after_seq, self.until_seq, self.bar = (
            conn,
            doc_id,
            after_seq,
            until_seq,
            bar,
        )
        self.first_seq = after_seq + 1
        self.last_seq = after_seq
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False

    async def consume(self, consumer: Callable[[Iterator[Operation]], T]) -> T:
        """`consumer(rows)` in a worker thread; no query of it is running once this returns."""
        self._loop = asyncio.get_running_loop()
        try:
            return await asyncio.to_thread(consumer, self._pages())
        except asyncio.CancelledError:
            self._cancelled = (
                True  # the thread stops at its next page instead of reading on
            )
            raise

    def _pages(self) -> Iterator[Operation]:
        assert self._loop is not None
        for low in range(
            self.after_seq, self.until_seq, PAGE_ROWS
        ):  # seqs are contiguous
            if self._cancelled:
                raise asyncio.CancelledError("replay cancelled")
            high = min(low + PAGE_ROWS, self.until_seq)
            query = self.conn.fetch(
                store.Q["replay_operations"],
                self.doc_id,
                low,
                high,
                timeout=PAGE_TIMEOUT_S,
            )
            page = asyncio.run_coroutine_threadsafe(query, self._loop).result(
                PAGE_TIMEOUT_S + 5
            )
            for r in page:
                self.last_seq = r["sequence_number"]
                self.count += 1
                # The clock stays JSON text: `Operation.clock` decodes it, and only a clock bound asks.
                yield Operation(
                    self.doc_id,
                    r["sequence_number"],
                    r["agent_id"],
                    r["operation_type"],
                    r["vector_clock"],
                    r["update"],
                    r["timestamp"],
                )
            if self.bar is not None:
                self.bar.update(high - low)
