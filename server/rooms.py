"""Rooms: one in-memory document per open document on this node, and who is subscribed to it.

A `Room` holds the server's copy of the document (validated updates are applied to it), the
committed head sequence, and its subscribers. Lifecycle steps are named like Hocuspocus hooks:
`load` (latest snapshot + operations after it, one shared load per document), `on_change`
(validate, sequence through the committer, broadcast after commit in sequence order),
`snapshot` (every N operations or T seconds) and `unload` (after an idle timeout with no
subscribers). Nobody is told about an operation before it is committed: the `doc.open` reply
waits for the operations already applied to be committed, and `doc.op` events are sent from
the committer's callback, which runs in commit (= sequence) order.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
import uuid
from datetime import UTC, datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import structlog

from crdt.document import CorruptUpdate, Document, DocumentPanicked
from crdt.operations import Origin
from crdt.replay import rebuild
from server import store
from server.committer import Committed, Committer
from server.errors import ErrorCode
from server.metrics import Metrics
from server.protocol import encode
from server.room_repair import RoomRepair, read_log
from server.settings import Settings

log = structlog.get_logger("tandem.rooms")

class Subscriber(Protocol):
    """The session side of a subscription: a bounded, non-blocking send of one text frame."""

    conn_id: str

    def send_text(self, frame: str) -> None: ...


# --- hook for subscribers that want operations, not JSON frames (server/yws.py) ----------------


class UpdateSubscriber(Protocol):
    """A subscriber with its own wire format (the y-websocket endpoint): it gets each committed
    operation itself, in the same seq order and with the same hold-until-synced rule, and must
    not block. `own`: the operation came from this subscriber (the JSON path sends its ack)."""

    conn_id: str

    def send_update(self, seq: int, agent_id: str, update: bytes, own: bool) -> None: ...


UpdateSink = Callable[[int, str, bytes, bool], None]
Delivery = str | tuple[str, bytes, bool]  # a JSON frame, or (agent_id, update, own) for a sink


@dataclass
class Subscription:
    subscriber: Subscriber | UpdateSubscriber
    # Events with seq <= synced_seq are already in what the subscriber got with its open reply;
    # until the reply is out, events wait here so they cannot overtake it.
    synced_seq: int | None = None
    held: list[tuple[int, Delivery]] = field(default_factory=list)
    sink: UpdateSink | None = None  # set for an UpdateSubscriber

    def deliver(self, seq: int, item: Delivery) -> None:
        if self.synced_seq is None:
            self.held.append((seq, item))
        elif seq > self.synced_seq:
            self._send(seq, item)

    def release(self, synced_seq: int) -> None:
        self.synced_seq = synced_seq
        held, self.held = self.held, []
        for seq, item in held:
            if seq > synced_seq:
                self._send(seq, item)

    def _send(self, seq: int, item: Delivery) -> None:
        if self.sink is not None:
            self.sink(seq, *item)  # type: ignore[misc]
        else:
            self.subscriber.send_text(item)  # type: ignore[union-attr, arg-type]


@dataclass(frozen=True)
class LockView:
    """This node's view of a document's lock (docs/protocol.md#121), kept from lock events.

    It spares applying updates the lock will refuse; the write path's statement is the
    authority, and an update it refuses after all makes the room repair itself (`Room.dirty`).
    """

    holder: str
    fence: int
    expires_at: datetime

    def refuses(self, agent_id: str, fence: int | None, now: datetime) -> ErrorCode | None:
        """Only what is certain from here: a fence older than one this node has seen is stale
        (fences only grow); without a fence, another agent's live lock refuses. A fence this
        view does not know yet (its event is on the way) goes on to the write path."""
        if fence is not None:
            return ErrorCode.STALE_FENCE if fence < self.fence else None
        return ErrorCode.LOCKED if self.expires_at > now and self.holder != agent_id else None


class Room:
    """One document in memory. Delivery is strictly in sequence order (docs/protocol.md#62).

    `head_seq` is the highest seq delivered: operations 1..head_seq are all in `document` and
    were sent to subscribers in order. Operations this node commits arrive from the committer
    in order but may follow a gap (another node committed the seqs between); they wait in
    `held` while the room reads the missing ones from the log (`catch_up`), which is also how
    other nodes' operations reach this node's subscribers.
    """

    def __init__(self, tenant_id: uuid.UUID, doc_id: uuid.UUID, workspace_id: uuid.UUID, document: Document, head_seq: int) -> None:
        self.tenant_id = tenant_id
        self.doc_id = doc_id
        self.workspace_id = workspace_id
        self.document = document
        self.head_seq = head_seq
        self.snapshot_seq = head_seq
        self.snapshot_at = time.monotonic()
        self.content_seq = head_seq
        self.content_at = time.monotonic()
        self.subscriptions: dict[str, Subscription] = {}
        self.last_pending: asyncio.Future[int] | None = None
        self.held: dict[int, store.NewOperation] = {}  # committed here, waiting for a gap to fill
        self.known_seq = head_seq  # the highest seq known to be committed (here or elsewhere)
        # This node's operations applied to `document` and not yet reported committed, by their
        # update (a second copy of an applied update changes nothing, so it is never in flight
        # twice). A row of the log holding one is this node's own, committed a moment ago: the
        # committer reports it (`on_log_rows`).
        self.in_flight: dict[bytes, store.NewOperation] = {}
        self.epoch = 0  # bumped when `document` is replaced (repair): captures taken before are void
        self.idle_since: float | None = time.monotonic()
        self.broken = False
        self.on_gap: Callable[[Room], None] = lambda room: None  # set by the registry
        # Called when yrs panicked on `document`: it may differ from the log now (set by the
        # registry to rebuild it from the log before it is read again).
        self.on_panic: Callable[[Room], None] = lambda room: None
        self.lock: LockView | None = None
        self.fence_seen = 0  # the newest fence of any lock event seen for this document
        self.released_fence = 0  # the newest fence seen released
        # Set while the document holds an update the lock refused (never stored): nothing is
        # read from it until the registry rebuilt it from the log, then the event is set.
        self.dirty: asyncio.Event | None = None

    def write_refused(self, agent_id: str, fence: int | None) -> ErrorCode | None:
        """`locked` or `stale_fence` when this node knows the lock will refuse the write."""
        if fence is not None and fence < self.fence_seen:
            return ErrorCode.STALE_FENCE
        if self.lock is None:
            return None
        return self.lock.refuses(agent_id, fence, datetime.now(UTC))

    def on_lock(self, lock: LockView | None, fence: int) -> None:
        """A lock event (`lock` None: the lock of `fence` was released). Events from several
        nodes may arrive out of order: an event of an older fence, or an acquisition or renewal
        of a fence already released, changes nothing."""
        if lock is None:
            self.released_fence = max(self.released_fence, fence)
            if self.lock is not None and self.lock.fence <= fence:
                self.lock = None
        elif fence >= self.fence_seen and fence > self.released_fence:
            self.lock = lock
        self.fence_seen = max(self.fence_seen, fence)

    async def writable(self) -> None:
        """Wait while the room repairs itself (bounded by the repair's own bounds)."""
        while self.dirty is not None:
            await self.dirty.wait()

    # --- subscriptions -----------------------------------------------------------------------

    async def open(
        self,
        subscriber: Subscriber | UpdateSubscriber,
        state_vector: bytes,
        reply: Callable[[bytes, bytes, int], None] | None = None,
    ) -> tuple[bytes, bytes, int]:
        """Subscribe; returns (exactly the update the subscriber lacks, the server's state vector,
        the seq up to which that update is complete).

        The update may also hold operations applied here but not yet committed; the reply is
        returned only once they are. `reply(missing, state_vector, seq)` is called to queue the
        subscriber's reply right before the events held meanwhile are released, with no await in
        between, so no event can overtake the reply. The state vector was checked at the
        protocol boundary.
        """
        sub = Subscription(subscriber, sink=getattr(subscriber, "send_update", None))
        self.subscriptions[subscriber.conn_id] = sub
        self.idle_since = None
        for _ in range(100):  # a refused update in flight makes it compute the reply again
            await self.writable()
            missing = self.document.diff(state_vector)
            server_vector = self.document.state_vector()
            synced = self.head_seq
            pending = self.last_pending
            if pending is not None and not pending.done():
                try:
                    await asyncio.shield(pending)
                except Exception:
                    pass  # refused (the room repairs) or failed (it reloads); the session reports it
            if self.dirty is None:
                break
        else:
            raise RuntimeError(f"room {self.doc_id} kept repairing")
        if reply is not None:
            reply(missing, server_vector, synced)
        sub.release(synced)
        return missing, server_vector, synced

    def close(self, conn_id: str) -> None:
        self.subscriptions.pop(conn_id, None)
        if not self.subscriptions:
            self.idle_since = time.monotonic()

    # --- changes -----------------------------------------------------------------------------

    def validate(
        self, agent_id: str, update: bytes, origin: str | None = None, request_id: str | int | None = None,
        fence: int | None = None,
    ) -> store.NewOperation | None:
        """Apply to the server's copy; None when it changes nothing. Raises CorruptUpdate; after
        `DocumentPanicked` the room is being rebuilt from the log (`on_panic`)."""
        try:
            applied = self.document.apply(update)
        except DocumentPanicked:
            log.warning("room.panicked", doc_id=str(self.doc_id))
            self.on_panic(self)
            raise
        if not applied.changed and not applied.pending:
            return None  # a duplicate: nothing to store or forward
        # A pending update waits for structs not seen yet; it is logged all the same, so that
        # replaying the log reproduces the same wait. The clock is the operation's own
        # (`Applied.op_clock`), bounded by the update's size (the row's agent_id attributes it).
        op = store.NewOperation(agent_id, applied.op_type.value, applied.clock_text(), update, origin, request_id, fence)
        self.in_flight[op.update] = op
        return op

    @property
    def uncommitted(self) -> int:
        return len(self.in_flight)

    @property
    def quiet(self) -> bool:
        """Nothing in flight: the document is exactly the log's operations 1..head_seq."""
        no_pending = self.last_pending is None or self.last_pending.done()
        return no_pending and not self.held and self.known_seq == self.head_seq and self.dirty is None

    def expect(self) -> asyncio.Future[int]:
        """Called right after a validated update was applied: the future of its seq. An opener
        arriving before it commits waits for it (see `open`)."""
        self.last_pending = asyncio.get_running_loop().create_future()
        return self.last_pending

    def on_committed(self, committed: Sequence[Committed]) -> None:
        """This node's commits, in seq order: deliver, or hold them until a gap is filled."""
        for c in committed:
            self.in_flight.pop(c.op.update, None)
            if c.seq > self.head_seq:
                self.held[c.seq] = c.op
                self.known_seq = max(self.known_seq, c.seq)
        self._deliver_held()
        if self.held:
            self.on_gap(self)

    def on_remote(self, last_seq: int, rows: Sequence[store.LoggedOperation] = ()) -> None:
        """Another node committed up to `last_seq` (a NOTIFY hint, or the periodic check);
        `rows`: the operations up to it that the hint carried. Those that follow `head_seq`
        are applied at once; whatever is still missing is read from the log."""
        if last_seq > self.known_seq:
            self.known_seq = last_seq
        if rows and rows[0].seq <= self.head_seq + 1:
            self.on_log_rows(rows)
        if self.known_seq > self.head_seq:
            self.on_gap(self)

    def on_log_rows(self, rows: Sequence[store.LoggedOperation]) -> None:
        """Operations read from the log after head_seq, in order: apply the other nodes' ones,
        deliver every one (this node's own from `held`)."""
        for row in rows:
            if row.update in self.in_flight:
                break  # this node's own, committed a moment ago: the committer reports it
            if row.seq != self.head_seq + 1:
                continue  # already delivered, or not contiguous (the next read fills it)
            own = self.held.pop(row.seq, None)
            if own is None:
                try:
                    self.document.apply(row.update, Origin.FANOUT)
                except DocumentPanicked:  # the document may hold part of it: rebuild it
                    log.error("room.fanout_panicked", doc_id=str(self.doc_id), seq=row.seq)
                    self.on_panic(self)
                except CorruptUpdate:  # validated by the node that stored it; never expected
                    log.error("room.fanout_corrupt", doc_id=str(self.doc_id), seq=row.seq)
                own = store.NewOperation(row.agent_id, row.op_type, "{}", row.update)
            self._deliver(row.seq, own)
            self._deliver_held()
        self.known_seq = max(self.known_seq, self.head_seq)

    def _deliver_held(self) -> None:
        while self.head_seq + 1 in self.held:
            seq = self.head_seq + 1
            self._deliver(seq, self.held.pop(seq))

    def _deliver(self, seq: int, op: store.NewOperation) -> None:
        self.head_seq = seq
        doc_id = str(self.doc_id)
        # Encoded once for every JSON subscriber; the sender gets its ack in the same ordered
        # stream instead (docs/protocol.md#62). Update subscribers (y-websocket) get the op.
        frame: str | None = None
        for conn_id, sub in list(self.subscriptions.items()):
            own = op.origin is not None and conn_id == op.origin
            if sub.sink is not None:
                sub.deliver(seq, (op.agent_id, op.update, own))
            elif own:
                sub.deliver(seq, encode({"type": "doc.update.ok", "re": op.request_id, "doc_id": doc_id, "seq": seq}))
            else:
                if frame is None:
                    frame = encode({
                        "type": "doc.op", "doc_id": doc_id, "seq": seq, "agent_id": op.agent_id,
                        "update": base64.b64encode(op.update).decode(),
                    })
                sub.deliver(seq, frame)


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
        """Queue an operation for commit right after `room.validate` applied it; returns the
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


__all__ = ["CorruptUpdate", "Room", "RoomRegistry", "Subscriber", "UpdateSubscriber"]
