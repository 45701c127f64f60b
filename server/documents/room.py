"""A room: the server's in-memory copy of one open document, its committed head sequence and
its subscribers (server/documents/rooms.py keeps one per open document on this node).

Updates the update checker passed are applied to the document (`apply_update`). Nobody is told
about an operation before it is committed: the `doc.open` reply waits for the operations already
applied to be committed, and `doc.op` events are sent from the committer's callback, which runs
in commit (= sequence) order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from crdt.document import CorruptUpdate, Document, DocumentPanicked
from crdt.operations import Origin
from server.core.errors import ErrorCode
from server.db import store
from server.documents.committer import Committed
from server.wire.fields import frame_encoder
from server.wire.protocol import DocOp, DocUpdateOk

log = structlog.get_logger("tandem.rooms")

# The frames a commit produces, each encoded once per commit by its model's serializer.
encode_doc_op = frame_encoder(DocOp)
encode_update_ok = frame_encoder(DocUpdateOk)


class Subscriber(Protocol):
    """The session side of a subscription: a bounded, non-blocking send of one text frame."""

    conn_id: str

    def send_text(self, frame: str) -> None: ...


# --- hook for subscribers that want operations, not JSON frames (server/transport/yws.py) ----------------


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

    def apply_update(
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
        """Called right after `apply_update` applied an update: the future of its seq. An opener
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
        doc_id = self.doc_id
        # Encoded once for every JSON subscriber; the sender gets its ack in the same ordered
        # stream instead (docs/protocol.md#62). Update subscribers (y-websocket) get the op.
        frame: str | None = None
        for conn_id, sub in list(self.subscriptions.items()):
            own = op.origin is not None and conn_id == op.origin
            if sub.sink is not None:
                sub.deliver(seq, (op.agent_id, op.update, own))
            elif own:
                sub.deliver(seq, encode_update_ok(re=op.request_id, doc_id=doc_id, seq=seq))
            else:
                if frame is None:
                    frame = encode_doc_op(doc_id=doc_id, seq=seq, agent_id=op.agent_id, update=op.update)
                sub.deliver(seq, frame)
