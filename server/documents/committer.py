"""Group commit: operations that arrive while a write is in flight go into the next transaction.

One commit per update caps a node at about 1,300 durable updates/s here; one commit per batch
does not. Each shard is one writer loop with at most one transaction in flight; a document
always maps to the same shard, so its operations commit, and are reported, in arrival order.
A batch is bounded in operations (`max_batch_ops`), and a writer waits at most `max_wait_ms` for
a batch to fill once the queue is empty (0: commit whatever is there).

A failing batch is retried document by document, so one bad document (deleted meanwhile,
another tenant's id) fails only its own operations. The write path outlives its database: a lost
connection, a restart or failover, or an append slower than `timeout_s` fails the batch in flight
with `unavailable` (the append is one statement: all of it is stored or none), and the writer
takes a fresh connection, with backoff and jitter, as soon as the database answers. Meanwhile
operations wait in the shard's bounded queue; one that waited `unavailable_after_s` is refused
with `unavailable` (docs/operations.md, "When the database is away").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import asyncpg
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from server.core.errors import ErrorCode, TandemError
from server.core.metrics import Metrics
from server.core.supervisor import Supervisor
from server.db import store
from server.db.dbfaults import describe, is_unavailable, unavailable
from server.documents.commit_shard import OnDone, Pending, Shard

log = structlog.get_logger("tandem.committer")

# The client waits this much longer than the server's statement_timeout, so an append that hangs
# is ended (and rolled back) by PostgreSQL; past it the connection itself is given up on.
CLIENT_GRACE_S = 1.0


class Committed(NamedTuple):  # one per update: 0.4 us to build, 1.1 as a frozen dataclass
    tenant_id: uuid.UUID
    doc_id: uuid.UUID
    seq: int
    op: store.NewOperation


OnCommitted = Callable[[Sequence[Committed]], Awaitable[None] | None]


class Committer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        on_committed: OnCommitted | None = None,
        *,
        shards: int = 2,
        max_batch_ops: int = 1000,
        max_queue_ops: int = 50_000,
        max_wait_ms: float = 0.0,
        timeout_s: float = 5.0,
        unavailable_after_s: float = 5.0,
        reconnect_max_s: float = 1.0,
        metrics: Metrics | None = None,
        node_id: str = "",
        hints: bool = False,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.node_id = node_id
        self.hints = hints  # send the fan-out NOTIFY with each document's commit (server/cluster/fanout.py)
        self.on_committed = on_committed
        self.max_batch_ops = max_batch_ops
        self.max_wait_s = max_wait_ms / 1000
        self.timeout_s = timeout_s  # bound on one append, and on taking a connection
        self.unavailable_after_s = unavailable_after_s
        self._backoff = wait_exponential(multiplier=0.05, max=reconnect_max_s) + wait_random(0, 0.05)
        self._shards = [Shard(i, max_queue_ops) for i in range(shards)]
        self._closed = False  # stopping: new operations are refused at once
        self._stopped = False  # the writers are gone: nothing reads the queues any more
        self.batches = 0
        self.operations = 0

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start one writer loop per shard under `supervisor` (the node's, so /healthz and
        /metrics show them), or under a supervisor of the committer's own."""
        supervisor = supervisor or Supervisor(self.metrics)
        for shard in self._shards:
            shard.loop = supervisor.start(f"committer-{shard.index}", functools.partial(self._run, shard))
            if self.metrics is not None:
                label = str(shard.index)
                self.metrics.commit_queued.labels(label).set_function(shard.queued)
                self.metrics.commit_shard_up.labels(label).set_function(functools.partial(self._shard_ok, shard))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Commit what was submitted for at most `timeout_s`, then refuse what is left with
        `unavailable` and stop the writers; returns within `timeout_s`, also while the database
        is down or hangs. Every operation is reported once; later ones are refused at once."""
        committed = self.operations
        hand_back_s = min(1.0, timeout_s / 4)
        try:
            async with asyncio.timeout(timeout_s - hand_back_s):
                for shard in self._shards:
                    await shard.queue.join()
        except TimeoutError:
            pass
        self._closed = True
        for shard in self._shards:
            if shard.loop is not None:
                await shard.loop.stop()
        self._stopped = True
        refused = sum([self._refuse_left(shard) for shard in self._shards])
        await asyncio.gather(*(shard.give_back(self.pool, hand_back_s) for shard in self._shards))
        log.info("committer.stopped", committed=self.operations - committed, refused=refused)

    async def enqueue(self, tenant_id: uuid.UUID, doc_id: uuid.UUID, op: store.NewOperation, on_done: OnDone) -> None:
        """Queue one operation; `on_done(seq, None)` is called once it is committed, or
        `on_done(None, exc)` once it is refused or failed, after `on_committed` has seen the
        batch. No task and no future per operation.

        Waits (backpressure) only while the shard's queue is full; once called, the operation
        is queued even if the caller is cancelled meanwhile (the room already applied it). `exc`
        is TandemError (`locked`, `stale_fence`) when the document's lock refused the operation
        (nothing stored); TandemError `unavailable` when the database was away (lost connection,
        append over `timeout_s`, no connection for `unavailable_after_s`, or the committer
        stopped): not acknowledged, possibly stored, harmless to send again; LookupError when
        the document is not the tenant's; or the database error that failed its statement.
        """
        pending = Pending(tenant_id, doc_id, op, on_done)
        if self._closed:
            pending.report()  # undecided: `unavailable`
            return
        shard = self._shards[doc_id.int % len(self._shards)]
        if not shard.queue.full():
            shard.queue.put_nowait(pending)
            return
        put = asyncio.ensure_future(shard.queue.put(pending))
        put.add_done_callback(functools.partial(self._after_put, shard))
        await asyncio.shield(put)

    def _after_put(self, shard: Shard, _put: asyncio.Future[None]) -> None:
        # Room in a full queue may come from `stop` draining it: then nobody would read this one.
        if self._stopped:
            self._refuse_left(shard)

    def health(self) -> dict[str, Any]:
        """The write path for /healthz: `ok` while every shard can commit."""
        now = time.monotonic()
        shards = [shard.view(now, self._shard_ok(shard, now)) for shard in self._shards]
        return {"ok": all(s["ok"] for s in shards), "shards": shards}

    def _shard_ok(self, shard: Shard, now: float | None = None) -> bool:
        """Its loop runs, it is not waiting for the database, and no operation has waited for a
        commit `unavailable_after_s` (a hung append counts too)."""
        now = time.monotonic() if now is None else now
        running = shard.loop is not None and shard.loop.up
        return running and shard.down_since is None and shard.oldest_wait_s(now) < self.unavailable_after_s

    # --- the writer loop -------------------------------------------------------------------------

    async def _run(self, shard: Shard) -> None:
        """One writer loop, until cancelled. It keeps one connection of the pool for itself (no
        acquire and no reset query per batch); one that fails is dropped and a fresh one taken.
        Every exception of a batch is caught here and reported to that batch's operations."""
        while True:
            if shard.down_since is not None:  # after a failure: reconnect now, not at the next update
                await self._connect(shard)
            if not shard.batch:
                shard.batch.append(await shard.queue.get())
                if self.max_wait_s and shard.queue.empty():
                    await asyncio.sleep(self.max_wait_s)
            shard.top_up(self.max_batch_ops)
            try:
                if not shard.connected:  # none yet, or PostgreSQL ended it while the writer idled
                    await self._connect(shard)
                if shard.batch:
                    await self._commit(shard, shard.batch)
            except Exception as exc:  # the callbacks carry the failure; the loop must survive it
                self._batch_failed(shard, exc)
            finally:
                shard.report()

    def _batch_failed(self, shard: Shard, exc: Exception) -> None:
        if is_unavailable(exc):
            cause = "timeout" if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError) else "lost"
            refused = self._refuse(shard.batch, exc, cause)
            shard.failed(exc)
            shard.drop()
            log.warning("committer.connection_lost", shard=shard.index, cause=cause, refused=refused, error=describe(exc))
        else:
            log.exception("committer.batch_failed", shard=shard.index, ops=len(shard.batch))
            self._fail(shard.batch, exc)

    def _refuse(self, batch: list[Pending], cause_exc: BaseException | None, cause: str) -> int:
        """Decide every undecided operation of `batch` as `unavailable`; returns how many."""
        refused = 0
        for p in batch:
            if not p.decided:
                p.decide(None, unavailable(cause_exc))
                refused += 1
        if refused and self.metrics is not None:
            self.metrics.commit_unavailable.labels(cause).inc(refused)
        return refused

    # --- the connection --------------------------------------------------------------------------

    async def _connect(self, shard: Shard) -> None:
        """Take a fresh connection for the writer, retrying with backoff and jitter until the
        database answers (each try bounded by `timeout_s`). While it waits, operations that
        waited `unavailable_after_s` are refused with `unavailable`, oldest first."""
        shard.drop()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # whatever refuses the connection; never cancellation
            wait=self._backoff,
            before_sleep=functools.partial(self._connect_failed, shard),
        )
        async for attempt in retrying:
            with attempt:
                self._refuse_overdue(shard)
                conn = await self.pool.acquire(timeout=self.timeout_s)
                try:
                    # PostgreSQL itself ends an append past `timeout_s` (and rolls it back): a
                    # client that only stopped waiting would leave it running, to commit later.
                    await conn.execute(store.Q["set_statement_timeout"], str(int(self.timeout_s * 1000)), timeout=self.timeout_s)
                except BaseException:
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()  # its slot goes back to the pool, empty
                    raise
                shard.conn = conn
        if shard.down_since is not None:
            log.info("committer.reconnected", shard=shard.index, down_s=round(time.monotonic() - shard.down_since, 3))
            shard.down_since = None
            if self.metrics is not None:
                self.metrics.commit_reconnects.inc()

    def _connect_failed(self, shard: Shard, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            shard.failed(exc)
        if state.attempt_number == 1 or state.attempt_number % 20 == 0:
            log.warning(
                "committer.db_unavailable", shard=shard.index, attempt=state.attempt_number, queued=shard.queued(),
                error=describe(exc) if exc is not None else None,
            )

    def _refuse_overdue(self, shard: Shard) -> None:
        cutoff = time.monotonic() - self.unavailable_after_s
        while True:  # bounded: each turn reports operations taken from the bounded queue
            shard.top_up(self.max_batch_ops)
            overdue = [p for p in shard.batch if p.queued_at <= cutoff]
            if not overdue:
                return
            refused = self._refuse(overdue, None, "waited")
            shard.report()
            log.warning("committer.refused_waiting", shard=shard.index, refused=refused, queued=shard.queued())

    def _refuse_left(self, shard: Shard) -> int:
        """At stop: refuse everything the shard still holds or queues; returns how many."""
        shard.drain()
        refused = self._refuse(shard.batch, None, "stopped")
        shard.report()
        return refused

    # --- the append ------------------------------------------------------------------------------

    async def _commit(self, shard: Shard, batch: list[Pending]) -> None:
        """Append `batch` and show `on_committed` what was stored. Raises a connection failure
        (`is_unavailable`) once what was committed before it has been shown."""
        groups: dict[tuple[uuid.UUID, uuid.UUID], list[Pending]] = {}
        for p in batch:
            groups.setdefault((p.doc_id, p.tenant_id), []).append(p)
        committed: list[Committed] = []
        lost: Exception | None = None
        try:
            committed = await self._write(shard, batch)
        except Exception as exc:
            if is_unavailable(exc):
                raise
            if len(groups) == 1:
                log.warning("committer.document_failed", doc_id=str(batch[0].doc_id), error=repr(exc))
                self._fail(batch, exc)
            else:
                lost = await self._isolate(shard, list(groups.values()), committed)
        self.batches += 1
        self.operations += len(committed)
        if self.metrics is not None:
            self.metrics.commit_batches.inc()
            self.metrics.committed_operations.inc(len(committed))
        if committed and self.on_committed is not None:
            result = self.on_committed(committed)
            if asyncio.iscoroutine(result):
                await result
        if lost is not None:
            raise lost

    async def _isolate(self, shard: Shard, groups: list[list[Pending]], committed: list[Committed]) -> Exception | None:
        """Each document in a statement of its own, so one bad document fails only its own
        operations; adds what was stored to `committed`. Returns the connection failure that
        cut it short, if any (the rest stays undecided)."""
        for group in groups:
            try:
                committed += await self._write(shard, group)
            except Exception as exc:
                if is_unavailable(exc):
                    return exc
                log.warning("committer.document_failed", doc_id=str(group[0].doc_id), error=repr(exc))
                self._fail(group, exc)
        return None

    async def _write(self, shard: Shard, batch: list[Pending]) -> list[Committed]:
        # One call appends the whole batch (tandem_append_batch, migration 0019: it locks the
        # documents in id order, so two writers cannot deadlock) and, being a single statement,
        # commits on its own: one round trip per batch, however many documents it holds. A room
        # tells its own operations from other nodes' in the log by the operations it has in
        # flight (`Room.on_log_rows`).
        assert shard.conn is not None
        args = [
            [p.tenant_id for p in batch], [p.doc_id for p in batch], [p.op.agent_id for p in batch],
            [p.op.fence for p in batch], [p.op.op_type for p in batch], [p.op.vector_clock for p in batch],
            [p.op.update for p in batch], self.node_id if self.hints else None,
        ]  # fmt: skip
        query = "append_batch"
        if any(p.op.expect_head is not None for p in batch):  # an If-Match write is in the batch
            query = "append_batch_expecting"
            args.append([p.op.expect_head for p in batch])
        started = time.monotonic()
        if self.metrics is not None:
            waited = self.metrics.commit_wait_seconds
            for p in batch:
                waited.observe(started - p.queued_at)
        rows = await shard.conn.fetch(
            store.Q[query], *args,
            timeout=self.timeout_s + CLIENT_GRACE_S,  # the server's statement_timeout ends it first
        )  # fmt: skip
        shard.committed_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.commit_seconds.observe(shard.committed_at - started)
        if len(rows) < len(batch):  # never (one row per operation), but none may stay undecided
            self._fail(batch[len(rows):], RuntimeError("the append returned no outcome"))
        committed = []
        for p, row in zip(batch, rows):
            seq = row["seq"]
            if seq is None:
                p.decide(None, _refusal(row["refused"], row["holder"], p.doc_id, row.get("head")))
                continue
            p.decide(seq)
            committed.append(Committed(p.tenant_id, p.doc_id, seq, p.op))
        return committed

    @staticmethod
    def _fail(group: list[Pending], exc: BaseException | None = None) -> None:
        for p in group:
            p.decide(None, exc or RuntimeError("commit failed"))


class HeadMoved(TandemError):
    """The document's head was not the one its writer expected (`If-Match`): nothing was
    stored. `head` is the head found (in the room, or in the log under the row lock)."""

    def __init__(self, head: int) -> None:
        super().__init__(ErrorCode.CONFLICT, f"the document's head is {head}", {"head_seq": head})
        self.head = head


def _refusal(refused: str, holder: str | None, doc_id: uuid.UUID, head: int | None = None) -> Exception:
    """Why the batch call stored an operation not: its document's lock, the head its writer
    expected, or no such document."""
    if refused == "not_found":
        return LookupError(f"document {doc_id} not found")
    if refused == "head_moved":
        return HeadMoved(head if head is not None else -1)
    return TandemError(ErrorCode(refused), details={"holder": holder} if holder is not None else None)
