"""Rooms on this node: the registry that loads one `Room` per open document (latest snapshot +
operations after it, one shared load per document), catches it up with other nodes' commits,
sequences its changes through the committer, snapshots it (every N operations or T seconds)
and unloads it after an idle timeout with no subscribers. Lifecycle steps are named like
Hocuspocus hooks: `load`, `on_change`, `snapshot`, `unload`. The room itself is server/documents/room.py;
its repair after a failed commit or a panic, server/documents/room_repair.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence

import asyncpg
import structlog

from crdt.replay import rebuild
from server.core.metrics import Metrics
from server.core.settings import Settings
from server.db import store
from server.documents.committer import Committed, Committer
from server.documents.room import LockView, Room
from server.documents.room_repair import RoomRepair, read_log

log = structlog.get_logger("tandem.rooms")


class RoomRegistry(RoomRepair):
    """Rooms by document id; concurrent opens of a cold document share one load.

    Memory is bounded by unloading: a room with no subscribers for `room_idle_timeout_s` is
    stored (snapshot and content, if behind) and dropped by the janitor.
    """

    def __init__(self, pool: asyncpg.Pool, committer: Committer, settings: Settings, metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.committer = committer
        self.settings = settings
        self.metrics = metrics
        self.rooms: dict[uuid.UUID, Room] = {}
        self._loading: dict[uuid.UUID, asyncio.Task[Room]] = {}
        self._catching_up: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._repairs: set[asyncio.Task[None]] = set()
        self.loads = 0

    async def get(self, tenant_id: uuid.UUID, doc_id: uuid.UUID) -> Room:
        """The document's room, loading it once. LookupError: not this tenant's live document."""
        room = self.rooms.get(doc_id)
        if room is None or room.broken:
            task = self._loading.get(doc_id)
            if task is None:
                task = asyncio.create_task(self._load(tenant_id, doc_id))
                self._loading[doc_id] = task
                task.add_done_callback(lambda _t: self._loading.pop(doc_id, None))
            room = await asyncio.shield(task)
        if room.tenant_id != tenant_id:
            raise LookupError(doc_id)
        return room

    async def _load(self, tenant_id: uuid.UUID, doc_id: uuid.UUID) -> Room:
        """load: the latest snapshot plus the operations after it (crdt.replay, pure)."""
        async with store.tenant_transaction(self.pool, tenant_id) as conn:
            meta = await store.document_meta(conn, doc_id)
            if meta is None:
                raise LookupError(doc_id)
            snapshot, operations = await read_log(conn, doc_id)
        after = snapshot.seq if snapshot else 0
        # Replay is CPU-bound: in a thread, the event loop still gets turns between updates
        # (yrs holds the GIL only for one update at a time), so a cold load does not stall others.
        document = await asyncio.to_thread(rebuild, operations, snapshot)
        head = operations[-1].seq if operations else after
        room = Room(tenant_id, doc_id, meta["workspace_id"], document, head)
        if meta["lock_holder"] is not None:
            room.lock = LockView(meta["lock_holder"], meta["lock_fence"], meta["lock_expires_at"])
        room.fence_seen = meta["lock_fence"] or 0
        room.snapshot_seq = room.content_seq = after
        if operations:
            room.content_seq = -1  # unknown: refresh the readable content on the next store
        room.on_gap = self._schedule_catch_up
        room.on_panic = self._repair
        self.rooms[doc_id] = room
        # Another node may have committed while this one was reading: look once more.
        self._schedule_catch_up(room, force=True)
        self.loads += 1
        if self.metrics is not None:
            self.metrics.rooms.set(len(self.rooms))
        log.info("room.loaded", doc_id=str(doc_id), tenant_id=str(tenant_id), ops=len(operations), snapshot_seq=after)
        return room

    # --- catching up from the log (gaps, and other nodes' operations) -------------------------

    def _schedule_catch_up(self, room: Room, force: bool = False) -> None:
        """At most one reader per room; a hint that arrives while it runs is seen by its loop."""
        if room.doc_id in self._catching_up or room.broken:
            return
        task = asyncio.create_task(self._catch_up(room, force))
        self._catching_up[room.doc_id] = task
        task.add_done_callback(lambda _t: self._catching_up.pop(room.doc_id, None))

    async def catch_up(self, room: Room) -> None:
        """Apply whatever the log holds past the room's head now (not waiting for a hint)."""
        await self._catch_up(room, force=True)

    async def _catch_up(self, room: Room, force: bool, page: int = 1000, max_pages: int = 1000) -> None:
        try:
            for _ in range(max_pages):
                if not force and room.known_seq <= room.head_seq and not room.held:
                    return
                force = False
                async with store.tenant_transaction(self.pool, room.tenant_id) as conn:
                    rows = await store.logged_operations_after(conn, room.doc_id, room.head_seq, page)
                if self.metrics is not None:
                    self.metrics.catch_up_reads.inc()
                if not rows:
                    return  # the hint ran ahead of what is visible; the periodic check retries
                room.on_log_rows(rows)
        except Exception:
            log.exception("room.catch_up_failed", doc_id=str(room.doc_id))

    def open_documents(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """`(tenant_id, doc_id)` of every open room."""
        return [(room.tenant_id, room.doc_id) for room in self.rooms.values()]

    def on_remote(self, doc_id: uuid.UUID, last_seq: int, rows: Sequence[store.LoggedOperation] = ()) -> None:
        """A hint from another node: document `doc_id` has operations up to `last_seq` (some of
        which the hint may carry)."""
        room = self.rooms.get(doc_id)
        if room is not None and not room.broken and room.dirty is None:
            room.on_remote(last_seq, rows)
        elif room is not None:
            room.on_remote(last_seq)

    def on_committed(self, committed: Sequence[Committed]) -> None:
        by_doc: dict[uuid.UUID, list[Committed]] = {}
        for c in committed:
            by_doc.setdefault(c.doc_id, []).append(c)
        for doc_id, items in by_doc.items():
            room = self.rooms.get(doc_id)
            if room is not None:
                room.on_committed(items)

    async def submit(self, room: Room, op: store.NewOperation) -> asyncio.Future[int]:
        """Queue an operation for commit right after `room.apply_update` applied it; returns the
        future of its seq, set once it is committed (openers wait for it, see `open`).

        Waits only while the committer's queue is full. The future fails with TandemError when
        the lock refused it in the write path or the database was away (`unavailable`), or with
        the error that failed its transaction; either way the room rebuilds from the log.
        """
        expected = room.expect()  # before any await: an opener from now on waits for it
        await self.committer.enqueue(room.tenant_id, room.doc_id, op, functools.partial(self._settle, room, op, expected))
        return expected

    def _settle(
        self, room: Room, op: store.NewOperation, expected: asyncio.Future[int], seq: int | None, exc: BaseException | None
    ) -> None:
        """The committer's verdict on `op` (after the rooms saw its batch committed)."""
        if exc is None:
            if not expected.done():
                expected.set_result(seq)
            return
        room.in_flight.pop(op.update, None)
        # The room applied an update the log does not have (a lock refused it in the write path
        # before this node heard of the lock, or its commit failed): it is rebuilt from the log
        # before it takes another update.
        self._repair(room)
        if not expected.done():
            expected.set_exception(exc)

    async def stop(self) -> None:
        """At shutdown: stop the repairs and catch-up reads still running."""
        tasks = [*self._repairs, *self._catching_up.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_lock(self, doc_id: uuid.UUID, lock: LockView | None, fence: int) -> None:
        """A lock event for a document (this node's or another's): keep the room's view."""
        room = self.rooms.get(doc_id)
        if room is not None:
            room.on_lock(lock, fence)

    # --- snapshot, readable content, unload ----------------------------------------------------

    async def store(self, room: Room, force: bool = False) -> None:
        """snapshot: every `snapshot_every_ops` operations or `snapshot_every_s` seconds, and the
        readable `content`: at most every `content_debounce_s` when the room is quiet (nothing in flight),
        and with every snapshot while it is being written to without pause.

        Taken from memory (`_capture`), also while the room is being written to. Only when
        other nodes' operations interleave with this node's in flight is the capture not exact;
        once a whole period overdue, the state at `head_seq` is then rebuilt from the last
        snapshot and the log instead, off the event loop.
        """
        if room.broken or room.dirty is not None:
            return
        s = self.settings
        now = time.monotonic()
        behind = room.head_seq - room.snapshot_seq
        snapshot = behind > 0 and (force or behind >= s.snapshot_every_ops or now - room.snapshot_at >= s.snapshot_every_s)
        # yrs leaves what waits for other structs out of the encoded state: a snapshot taken now
        # would lose it, so none is taken until it is in (the log keeps it meanwhile).
        snapshot = snapshot and not room.document.pending()
        content = room.content_seq < room.head_seq and (force or now - room.content_at >= s.content_debounce_s)
        # While the room is being written to, the readable content rides with the snapshots:
        # rewriting each busy document's row every debounce period cost a third of the durable
        # throughput at 100 busy documents (docs/performance.md; the cause is not pinned down).
        content = content and (force or snapshot or room.quiet)
        if not snapshot and not content:
            return
        overdue = behind >= 2 * s.snapshot_every_ops or now - room.snapshot_at >= 2 * s.snapshot_every_s
        captured = await self._capture(room, snapshot, content)
        if captured is not None:
            seq, state, text = captured
        elif overdue:  # another node kept writing in between: the state at head_seq from the log
            seq = room.head_seq
            document = await self._rebuild_at(room, seq)
            state, text = document.encode_state(), document.text()
            snapshot, content = not document.pending(), True
        else:
            return
        async with store.tenant_transaction(self.pool, room.tenant_id) as conn:
            if snapshot:
                await store.insert_snapshot(conn, room.doc_id, seq, state)
            if content:
                await store.update_content(conn, room.doc_id, text, None)
        if snapshot:
            room.snapshot_seq, room.snapshot_at = seq, now
        if content:
            room.content_seq, room.content_at = seq, now

    async def _capture(self, room: Room, snapshot: bool, content: bool) -> tuple[int, bytes, str] | None:
        """The document's state and text as they are now, and the seq they are exactly at, or
        None when there is no such seq.

        The document holds operations 1..head_seq plus this node's `uncommitted` ones. Those
        commit in the order they were applied; when the last one gets head_seq + uncommitted,
        no other node's operation came in between, and the capture is exactly 1..that seq. A
        refused or failed one voids it (the room is repaired or dropped). Encoding happens now,
        synchronously; the wait for the commits is bounded by the committer.
        """
        if room.held:
            return None  # a gap below this node's committed operations
        seq = room.head_seq + room.uncommitted
        pending = room.last_pending if room.uncommitted else None
        epoch = room.epoch
        state = room.document.encode_state() if snapshot else b""
        text = room.document.text() if content else ""
        if pending is not None:
            await asyncio.wait([pending])
            if pending.cancelled() or pending.exception() is not None or pending.result() != seq:
                return None
        if room.epoch != epoch or room.broken or room.dirty is not None:
            return None
        return seq, state, text

    async def janitor(self, interval_s: float = 1.0) -> None:
        """Store what is due and unload idle rooms, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for room in list(self.rooms.values()):
                try:
                    idle = room.idle_since is not None and now - room.idle_since >= self.settings.room_idle_timeout_s
                    await self.store(room, force=idle)
                    if idle and room.quiet and room.idle_since is not None and not room.subscriptions:
                        self.unload(room)
                except Exception:
                    log.exception("room.store_failed", doc_id=str(room.doc_id))

    def unload(self, room: Room) -> None:
        if self.rooms.get(room.doc_id) is room:
            del self.rooms[room.doc_id]
            if self.metrics is not None:
                self.metrics.rooms.set(len(self.rooms))
            log.info("room.unloaded", doc_id=str(room.doc_id), head_seq=room.head_seq)

    async def flush_all(self) -> None:
        """At shutdown (after the committer drained): store every room that is behind."""
        for room in list(self.rooms.values()):
            try:
                await self.store(room, force=True)
            except Exception:
                log.exception("room.store_failed", doc_id=str(room.doc_id))


__all__ = ["RoomRegistry"]
