"""One committer shard's bookkeeping: its queued operations, each reported exactly once, the
connection its writer holds, and what /healthz shows of it.

The writer loop itself (batching, appending, reconnecting) is in server/documents/committer.py; this module
keeps the state that outlives a restart of that loop, and does no I/O but handing a connection
back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from server.core.supervisor import Supervised
from server.db import store
from server.db.dbfaults import describe, unavailable

log = structlog.get_logger("tandem.committer")

OnDone = Callable[[int | None, BaseException | None], None]
"""Called once per operation: (seq, None) when committed, (None, why) when refused or failed."""


class Pending:
    """One queued operation. Its outcome is decided while its batch is written and reported
    by a plain call once `on_committed` has seen the batch: no future per update and no loop
    turn before the caller hears (a micro-benchmark under uvloop here: 5-6 us per update for a
    future with a done callback, set and run, against 2 for this object and its call)."""

    __slots__ = ("tenant_id", "doc_id", "op", "on_done", "seq", "error", "reported", "queued_at")

    def __init__(self, tenant_id: uuid.UUID, doc_id: uuid.UUID, op: store.NewOperation, on_done: OnDone) -> None:
        self.tenant_id = tenant_id
        self.doc_id = doc_id
        self.op = op
        self.on_done = on_done
        self.seq: int | None = None
        self.error: BaseException | None = None
        self.reported = False
        self.queued_at = time.monotonic()  # submitted: `unavailable_after_s` counts from here

    @property
    def decided(self) -> bool:
        return self.seq is not None or self.error is not None

    def decide(self, seq: int | None, error: BaseException | None = None) -> None:
        """Record the outcome; the first decision stands."""
        if self.seq is None and self.error is None:
            self.seq, self.error = seq, error

    def report(self) -> None:
        """Call `on_done` once with the outcome; `unavailable` if none was decided (its batch
        was cut short: it may or may not be stored, and sending it again is harmless)."""
        if self.reported:
            return
        self.reported = True
        if self.seq is None and self.error is None:
            self.error = unavailable()
        try:
            self.on_done(self.seq, self.error)
        except Exception:  # one caller's bug must not keep the rest of the batch from hearing
            log.exception("committer.on_done_failed", doc_id=str(self.doc_id))


class Shard:
    """One writer's state. Each operation is in exactly one place: the bounded queue, `batch`
    (taken from the queue, not reported yet, oldest first), or reported (and `task_done`)."""

    def __init__(self, index: int, max_queue_ops: int) -> None:
        self.index = index
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(max_queue_ops)
        self.batch: list[Pending] = []
        self.conn: asyncpg.Connection | None = None
        self.down_since: float | None = None  # set at a failure, cleared once a connection is taken
        self.committed_at: float | None = None  # the last append the database answered
        self.error_at: float | None = None
        self.last_error: str | None = None
        self.loop: Supervised | None = None  # the writer loop, once started

    @property
    def connected(self) -> bool:
        """Holds an open connection. (A pooled connection PostgreSQL ended is detached from its
        proxy: asyncpg raises InterfaceError on any call, `is_closed()` included.)"""
        if self.conn is None:
            return False
        try:
            return not self.conn.is_closed()
        except asyncpg.InterfaceError:
            return False

    def queued(self) -> int:
        return self.queue.qsize() + len(self.batch)

    def oldest_wait_s(self, now: float) -> float:
        return now - self.batch[0].queued_at if self.batch else 0.0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.error_at, self.last_error = now, describe(exc)
        if self.down_since is None:
            self.down_since = now

    def top_up(self, max_ops: int) -> None:
        """Move queued operations into `batch`, up to `max_ops` there."""
        while len(self.batch) < max_ops and not self.queue.empty():
            self.batch.append(self.queue.get_nowait())

    def drain(self) -> None:
        """Move every queued operation into `batch` (at stop)."""
        while not self.queue.empty():
            self.batch.append(self.queue.get_nowait())

    def report(self) -> None:
        """Report the batch's decided operations, oldest first; the undecided ones stay (they
        wait for a connection, or their write was cut short by cancellation)."""
        left = []
        for p in self.batch:
            if p.seq is not None or p.error is not None:  # `decided`, inline: once per operation
                p.report()
                self.queue.task_done()
            else:
                left.append(p)
        self.batch = left

    def drop(self) -> None:
        """Give up the connection: closed, its slot goes back to the pool empty."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.terminate()
            except asyncpg.InterfaceError:
                pass  # already back in the pool: PostgreSQL ended it

    async def give_back(self, pool: asyncpg.Pool, timeout_s: float) -> None:
        """Return the connection to the pool (at stop) with its `statement_timeout` reset (the
        pool's release runs no reset statement: server/db/database.py `AppConnection`); bounded
        by `timeout_s`: a connection that does not answer in time is closed instead."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            await conn.execute(store.Q["reset_statement_timeout"], timeout=timeout_s)
            await pool.release(conn, timeout=timeout_s)
        except Exception:
            log.warning("committer.release_failed", shard=self.index, exc_info=True)
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()  # its slot goes back to the pool, empty

    def view(self, now: float, ok: bool) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        return {
            "shard": self.index,
            "ok": ok,
            "connected": self.connected,
            "queued": self.queued(),
            "oldest_wait_s": round(self.oldest_wait_s(now), 3),
            "since_commit_s": since(self.committed_at),
            "since_error_s": since(self.error_at),
            "last_error": self.last_error,
        }
