"""One client connection, whatever its wire: the lifecycle both WebSocket endpoints share.

`Connection.run` accepts, authenticates, starts the endpoint (`start`), then reads frames
eagerly and hands them to the endpoint (`on_frame`). Outgoing frames go through one bounded
`Mailbox` drained by one sender task. Document updates go through one update pipeline per
connection: checked in the validation worker (one round trip per batch), applied to the room in
arrival order, committed by the group committer; the endpoint hears each update's outcome
(`update_committed`, `update_unchanged`, `update_refused`).

A received update is never dropped (docs/protocol.md#44): when the connection ends for any
reason (the client closed or vanished, a limit, token expiry, a server fault, shutdown), reading
and sending stop but the pipeline goes on until every update already read is committed or
refused for a stated reason; only then is the closing sequence sent (if the server started the
close) and the connection cleaned up. What a connection has read and not yet settled is bounded
in bytes (`max_received_bytes`): reading pauses beyond it, never before.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

import structlog
from starlette.websockets import WebSocket

from crdt.document import CorruptUpdate
from server import auth
from server.errors import ErrorCode, TandemError
from server.mailbox import Mailbox
from server.node import Node
from server.protocol import TokenBucket
from server.rooms import Room

log = structlog.get_logger("tandem.connection")

# What one received item costs beyond its payload, counted against `max_received_bytes`, so that
# many tiny updates are bounded as honestly as a few large ones (a queued update takes about 190
# bytes of memory besides its payload, measured with tracemalloc).
ITEM_OVERHEAD_BYTES = 192
FLUSH_TIMEOUT_S = 2.0  # before the closing sequence: time for queued frames (acks) to go out
CLOSE_TIMEOUT_S = 2.0  # the closing sequence is best effort
# The pipeline gives the event loop a turn at least this often, so that the connection's read
# loop keeps taking frames off the socket while a large batch is applied (reading only when the
# pipeline is idle left a fast editor's last updates unsent in its own buffer when it closed).
PIPELINE_TURN_S = 0.001

Frame = TypeVar("Frame", str, bytes)


@dataclass(slots=True, eq=False)
class Inbound:
    """Something read from the socket that is handled in order after it: an update, or (on the
    y-websocket endpoint) any other message. `size` counts against `max_received_bytes`."""

    size: int
    done: bool = field(default=False, init=False)


@dataclass(slots=True, eq=False)
class Update(Inbound):
    room: Room
    update: bytes
    re: str | int | None = None  # the request id to answer (agents)
    fence: int | None = None
    submitted: bool = field(default=False, init=False)  # handed to the committer: it reports


class Connection(Generic[Frame]):
    """The shared lifecycle. Subclasses implement the wire: `start`, `on_frame`, `next_payload`,
    `closing_frames`, the update outcomes, `handle` (non-update inbound items) and `cleanup`."""

    kind = "connection"  # the log's event prefix: "session" (agents), "yws" (editors)
    paced = False  # inbound items wait for the rate limit before they are handled

    def __init__(self, ws: WebSocket, node: Node) -> None:
        self.ws = ws
        self.node = node
        s = node.settings
        self.conn_id = str(uuid.uuid4())
        self.principal: auth.Principal | None = None
        self.outbox: Mailbox[Frame] = Mailbox(s.send_queue_len)  # frames for `_sender`
        self.inbox: Mailbox[Inbound] = Mailbox()  # for `_pipeline`; bounded in bytes below
        self.bucket = TokenBucket(s.max_messages_per_s, s.max_message_burst)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log = log.bind(conn_id=self.conn_id)
        self.reading = True  # frames are still read and handled
        self.transport_open = True  # frames can still be sent
        self.ending: tuple[ErrorCode, Any] | None = None  # why the server closes (after the drain)
        self.shutting_down = False  # the node is stopping: the drain is not paced
        self.received_bytes = 0  # read and not yet settled
        self.unsettled = 0
        self.updates_received = 0
        self.after_close: Counter[str] = Counter()  # outcomes of updates settled after reading stopped
        self._below_bound = asyncio.Event()
        self._below_bound.set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._reader: asyncio.Task[None] | None = None
        self._parked = False  # the reader waits at a point where cancelling it loses nothing
        self._pipeline_failed = False
        self.finished = asyncio.Event()

    # --- the endpoint's part -------------------------------------------------------------------

    async def start(self) -> bool:
        """After authentication: the endpoint's opening (False: it refused and closed)."""
        raise NotImplementedError

    async def on_frame(self, frame: str | bytes) -> None:
        """One frame read from the socket."""
        raise NotImplementedError

    def next_payload(self, queued: list[Frame]) -> Frame:
        """What the sender writes next: take it from `self.outbox` (one frame or several joined)."""
        return self.outbox.take(1)[0]

    def closing_frames(self, code: ErrorCode, detail: Any) -> tuple[list[Frame], int, str] | None:
        """The frames, close code and reason that end the connection for `code` (None: none)."""
        raise NotImplementedError

    def may_write(self, item: Update) -> bool:
        return True

    def update_committed(self, item: Update, seq: int) -> None: ...

    def update_unchanged(self, item: Update) -> None: ...

    def update_refused(self, item: Update, code: ErrorCode, details: dict[str, Any] | None) -> None: ...

    async def handle(self, item: Inbound) -> None:
        """An inbound item that is not an update."""

    async def cleanup(self) -> None:
        """Leave rooms, relays, events (after the drain)."""

    # --- sending -------------------------------------------------------------------------------

    def queue(self, frame: Frame) -> None:
        """Queue a frame without waiting. A full queue ends the connection (slow_consumer),
        unless it is ending anyway: then the frame is dropped."""
        if not self.transport_open:
            return
        try:
            self.outbox.put(frame)
        except asyncio.QueueFull:
            if self.ending is None and self.reading:
                self.node.metrics.slow_consumers.inc()
                self.end(ErrorCode.SLOW_CONSUMER)

    async def _sender(self) -> None:
        outbox = self.outbox
        try:
            while True:
                payload = self.next_payload(await outbox.wait())
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_text(payload)
        except Exception:  # the peer is gone: nothing more can be sent; the reader sees the end
            self.transport_open = False

    async def _flush(self, timeout_s: float) -> None:
        """Wait (bounded) until the sender wrote what is queued."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and self.transport_open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # --- ending --------------------------------------------------------------------------------

    def end(self, code: ErrorCode, detail: Any = None) -> None:
        """The server closes this connection for `code`: reading stops now; updates already read
        are still settled, then the closing sequence is sent. The first reason stands."""
        if self.ending is not None:
            return
        self.ending = (code, detail)
        self.stop_reading()

    def shutdown(self) -> None:
        """The node is stopping: end with `server_shutdown` and drain without pacing."""
        self.shutting_down = True
        self.end(ErrorCode.SERVER_SHUTDOWN)

    def stop_reading(self) -> None:
        self.reading = False
        if self._parked and self._reader is not None:
            self._reader.cancel()

    async def _send_closing(self) -> None:
        assert self.ending is not None
        code, detail = self.ending
        closing = self.closing_frames(code, detail)
        if closing is None:
            return
        frames, close_code, reason = closing
        self.log.info(f"{self.kind}.closing", reason=code.value, code=close_code, detail=_text(detail))
        self.node.metrics.errors.labels(code.value).inc()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                for frame in frames:
                    if isinstance(frame, bytes):
                        await self.ws.send_bytes(frame)
                    else:
                        await self.ws.send_text(frame)
                await self.ws.close(close_code, reason)
        except Exception:  # the peer may be gone already; the close code is best effort too
            pass
        self.transport_open = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.finished.set()

    async def _run(self) -> None:
        await self.ws.accept()
        verdict = self.node.authenticate(self.ws.query_params, self.ws.headers)
        if isinstance(verdict, ErrorCode):
            self.ending = (verdict, None)
            await self._send_closing()
            return
        self.principal = verdict
        self.log = self.log.bind(tenant_id=str(verdict.tenant_id), agent_id=verdict.agent_id)
        if not await self.start():
            return
        node = self.node
        node.connections.add(self)
        node.metrics.sessions.inc()
        sender = asyncio.create_task(self._sender())
        pipeline = asyncio.create_task(self._pipeline())
        ttl_s = (verdict.expires_at - datetime.now(timezone.utc)).total_seconds() + node.settings.jwt_leeway_s
        expiry = asyncio.get_running_loop().call_later(max(ttl_s, 0), self.end, ErrorCode.TOKEN_EXPIRED)
        self.log.info(f"{self.kind}.started")
        try:
            self._reader = asyncio.create_task(self._read_loop())
            await asyncio.wait([self._reader])
            if not self._reader.cancelled() and self._reader.exception() is not None:
                self.log.error(f"{self.kind}.crashed", exc_info=self._reader.exception())
                self.end(ErrorCode.INTERNAL_ERROR)
            self.reading = False
            expiry.cancel()
            await self._drain()
            if self.ending is not None and self.transport_open:
                await self._flush(FLUSH_TIMEOUT_S)
                await self._send_closing()
        finally:
            expiry.cancel()
            if self._reader is not None:
                self._reader.cancel()
            self.transport_open = False
            sender.cancel()
            pipeline.cancel()
            for task in list(self.tasks):
                task.cancel()
            abandoned = self.unsettled
            try:
                await self.cleanup()
            finally:
                node.connections.discard(self)
                node.metrics.sessions.dec()
                outcomes = dict(self.after_close)
                if abandoned:
                    outcomes["abandoned"] = abandoned
                self.log.info(
                    f"{self.kind}.ended", updates=self.updates_received, **({"after_close": outcomes} if outcomes else {})
                )
                # Last: no await ran since the sender stopped, so no presence event was queued in vain.
                await node.presence.disconnect(self.conn_id)

    async def _read_loop(self) -> None:
        """Read eagerly: frames are taken off the socket as they come, and handled or queued; only
        past `max_received_bytes` of unsettled items does reading pause."""
        ws = self.ws
        while self.reading:
            self._parked = True
            try:
                if self.received_bytes >= self.node.settings.max_received_bytes:
                    self._below_bound.clear()
                    await self._below_bound.wait()
                    continue
                message = await ws.receive()
            finally:
                self._parked = False
            if message["type"] == "websocket.disconnect":
                self.transport_open = False
                return
            frame = message.get("text")
            await self.on_frame(frame if frame is not None else message.get("bytes") or b"")

    async def _drain(self) -> None:
        """Until every item read is settled; bounded by the committer's own bounds."""
        if self.unsettled:
            self.log.info(f"{self.kind}.draining", unsettled=self.unsettled)
        await self._settled.wait()

    # --- the update pipeline -------------------------------------------------------------------

    def receive(self, item: Inbound) -> None:
        """Queue an item read from the socket; it is settled in order by the pipeline."""
        self.received_bytes += item.size
        self.unsettled += 1
        if isinstance(item, Update):
            self.updates_received += 1
        self._settled.clear()
        if self._pipeline_failed:
            self._refuse(item, ErrorCode.INTERNAL_ERROR)
            return
        self.inbox.put(item)

    def _settle(self, item: Inbound, outcome: str | None = None) -> None:
        if item.done:
            return
        item.done = True
        self.received_bytes -= item.size
        self.unsettled -= 1
        if self.received_bytes < self.node.settings.max_received_bytes:
            self._below_bound.set()
        if not self.unsettled:
            self._settled.set()
        if outcome is not None and not self.reading:
            self.after_close[outcome] += 1
            self.node.metrics.updates_after_close.labels(outcome).inc()

    def _refuse(self, item: Inbound, code: ErrorCode, details: dict[str, Any] | None = None) -> None:
        if item.done:
            return
        self._settle(item, code.value if isinstance(item, Update) else None)
        if isinstance(item, Update):
            self.update_refused(item, code, details)

    async def _pipeline(self) -> None:
        batch: list[Inbound] = []
        try:
            while True:
                await self.inbox.wait()
                batch = self.inbox.take()
                updates = [i.update for i in batch if isinstance(i, Update)]
                verdicts = iter(await self._check(updates))
                turn = time.monotonic()
                for item in batch:
                    if self.paced and not self.shutting_down:
                        await self._pace()
                    if time.monotonic() - turn > PIPELINE_TURN_S:
                        await asyncio.sleep(0)
                        turn = time.monotonic()
                    if isinstance(item, Update):
                        await self._apply(item, next(verdicts))
                    elif self.transport_open and self.reading:
                        await self.handle(item)
                        self._settle(item)
                    else:
                        self._settle(item)  # nobody to answer: only updates are worth handling now
        except Exception:
            self._pipeline_failed = True
            self.log.exception(f"{self.kind}.pipeline_failed")
            self.end(ErrorCode.INTERNAL_ERROR)
            for item in batch + self.inbox.take():
                if not (isinstance(item, Update) and item.submitted):
                    self._refuse(item, ErrorCode.INTERNAL_ERROR)

    async def _pace(self) -> None:
        while (wait_s := self.bucket.take(time.monotonic())) > 0:
            await asyncio.sleep(wait_s)

    async def _check(self, updates: list[bytes]) -> list[str | None]:
        """The validation worker's verdict on each update (None: valid), one round trip."""
        validator = self.node.validator
        if validator is None or not updates:
            return [None] * len(updates)
        return await validator.check_many(updates)

    async def _apply(self, item: Update, verdict: str | None) -> None:
        assert self.principal is not None
        room = item.room
        if room.dirty is not None:  # it is being rebuilt from the log after a failed commit
            try:
                async with asyncio.timeout(self.node.settings.commit_unavailable_after_s):
                    await room.writable()
            except TimeoutError:
                self._refuse(item, ErrorCode.UNAVAILABLE)
                return
        if room.broken:  # the document is gone (deleted meanwhile)
            self._refuse(item, ErrorCode.NOT_FOUND)
            return
        if not self.may_write(item):
            self._refuse(item, ErrorCode.FORBIDDEN)
            return
        refused = room.write_refused(self.principal.agent_id, item.fence)
        if refused is not None:  # the document's lock (docs/protocol.md#121): nothing applied
            holder = room.lock.holder if room.lock is not None else None
            self._refuse(item, refused, {"holder": holder} if holder else None)
            return
        try:
            if verdict is not None:
                raise CorruptUpdate(verdict)
            op = room.validate(self.principal.agent_id, item.update, origin=self.conn_id, request_id=item.re, fence=item.fence)
        except CorruptUpdate as exc:
            self.node.metrics.invalid_updates.inc()
            self._refuse(item, ErrorCode.INVALID_UPDATE, {"reason": str(exc)[:200]})
            return
        if op is None:  # nothing new: nothing to store or forward
            self._settle(item, "unchanged")
            self.update_unchanged(item)
            return
        # No task per update: the commit goes on whatever happens to this connection, and its
        # outcome comes back through this callback.
        seq = await self.node.rooms.submit(room, op)
        item.submitted = True
        seq.add_done_callback(functools.partial(self._committed, item))

    def _committed(self, item: Update, seq: asyncio.Future[int]) -> None:
        exc = seq.exception() if not seq.cancelled() else asyncio.CancelledError()
        if exc is None:
            self._settle(item, "committed")
            self.update_committed(item, seq.result())
        elif isinstance(exc, TandemError):  # a lock refused it, or the database was away
            self._refuse(item, exc.code, exc.details)
        elif isinstance(exc, LookupError):
            self._refuse(item, ErrorCode.NOT_FOUND)
        else:
            self.log.error(f"{self.kind}.commit_failed", doc_id=str(item.room.doc_id), error=repr(exc))
            self._refuse(item, ErrorCode.INTERNAL_ERROR)


def _text(detail: Any) -> str | None:
    return None if detail is None else str(detail)[:200]


async def close_all(node: Node, timeout_s: float) -> None:
    """Shutdown: every connection stops reading, settles what it read, then closes with
    `server_shutdown`; within `timeout_s`, after which the rest are left to the server."""
    connections = list(node.connections)
    if not connections:
        return
    log.info("connections.closing", connections=len(connections), timeout_s=timeout_s)
    for conn in connections:
        conn.shutdown()
    _, pending = await asyncio.wait([asyncio.create_task(c.finished.wait()) for c in connections], timeout=timeout_s)
    for task in pending:
        task.cancel()
    totals: Counter[str] = Counter()
    for conn in connections:
        totals.update(conn.after_close)
    unsettled = sum(c.unsettled for c in connections if not c.finished.is_set())
    log.info(
        "connections.closed", connections=len(connections), still_open=len(pending), updates=dict(totals),
        unsettled=unsettled,
    )
