"""A connection's update pipeline: what a connection read, settled in the order it was read.

Every item read from the socket (a document update, or on the y-websocket endpoint any other
message) is queued here and counted against `max_received_bytes` until it is settled. Updates are
checked in the update checker (one round trip per batch), applied to their room in arrival
order and handed to the group committer; the connection hears each update's outcome through
`update_committed`, `update_unchanged` or `update_refused`, and an update read is settled
(committed, or refused for a stated reason) whatever happens to the connection meanwhile.
A mixin of `server.transport.connection.Connection`, which owns the socket and calls `receive`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from crdt.document import CorruptUpdate, DocumentPanicked, OriginsMissing, UpdateAhead
from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.documents import write_rules
from server.documents.checker_wire import Verdict
from server.documents.room import Room
from server.documents.update_bounds import UpdateBounds, against_room
from server.transport.mailbox import Mailbox
from server.wire.protocol import TokenBucket

if TYPE_CHECKING:
    from server.transport.node import Node

# What one received item costs beyond its payload, counted against `max_received_bytes`, so that
# many tiny updates are bounded as honestly as a few large ones (a queued update takes about 190
# bytes of memory besides its payload, measured with tracemalloc).
ITEM_OVERHEAD_BYTES = 192
# The pipeline gives the event loop a turn at least this often, so that the connection's read
# loop keeps taking frames off the socket while a large batch is applied (reading only when the
# pipeline is idle left a fast editor's last updates unsent in its own buffer when it closed).
PIPELINE_TURN_S = 0.001


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


class UpdatePipeline:
    """The pipeline's state and task. The connection provides `node`, `principal`, `conn_id`,
    `log`, `kind`, `reading`, `transport_open`, `shutting_down` and `end`; an endpoint overrides
    the outcome hooks and `handle`."""

    node: Node
    principal: Principal | None
    conn_id: str
    log: structlog.typing.FilteringBoundLogger
    kind: str
    paced = False  # items wait for the rate limit before they are handled (y-websocket)
    reading: bool
    transport_open: bool
    shutting_down: bool

    def end(self, code: ErrorCode, detail: Any = None) -> None:
        raise NotImplementedError

    def _init_pipeline(self) -> None:
        s = self.node.settings
        self.inbox: Mailbox[Inbound] = Mailbox()  # bounded in bytes: `received_bytes`
        self.bucket = TokenBucket(s.max_messages_per_s, s.max_message_burst)
        self.received_bytes = 0  # read and not yet settled
        self.unsettled = 0
        self.updates_received = 0
        self.after_close: Counter[str] = Counter()  # outcomes of updates settled after reading stopped
        self._below_bound = asyncio.Event()
        self._below_bound.set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._pipeline_failed = False
        self.update_bounds = UpdateBounds.from_settings(s)

    # --- the endpoint's part -------------------------------------------------------------------

    def may_write(self, item: Update) -> bool:
        return True

    def update_committed(self, item: Update, seq: int) -> None: ...

    def update_unchanged(self, item: Update) -> None: ...

    def update_refused(self, item: Update, code: ErrorCode, details: dict[str, Any] | None) -> None: ...

    def update_ahead(self, item: Update) -> bool:
        """The update goes on past clocks the room lacks, or names ids it lacks, even after reading
        the log: its writer holds edits the server has not seen. True when the endpoint answered
        it (asked the writer for them, or told it to resync); False refuses it as invalid."""
        return False

    async def handle(self, item: Inbound) -> None:
        """An inbound item that is not an update."""

    # --- what the connection calls ---------------------------------------------------------------

    async def below_bound(self) -> None:
        """Until what was read and not settled is under `max_received_bytes`."""
        while self.received_bytes >= self.node.settings.max_received_bytes:
            self._below_bound.clear()
            await self._below_bound.wait()

    async def drained(self) -> None:
        """Until every item read is settled (bounded by the committer's own bounds)."""
        await self._settled.wait()

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

    async def _check(self, updates: list[bytes]) -> list[Verdict | None]:
        """The update checker's verdict on each update (None: not checked), one round trip."""
        checker = self.node.checker
        if checker is None or not updates:
            return [None] * len(updates)
        return list(await checker.check_many(updates))

    async def _apply(self, item: Update, verdict: Verdict | None, retried: bool = False) -> None:
        assert self.principal is not None
        room = item.room
        if verdict is not None and self.node.checker is not None and not retried:  # docs/protocol.md#7-limits
            verdict = await against_room(self.node.checker, self.update_bounds, room, item.update, verdict)
        refused = await write_rules.until_writable(room, self.node.settings.commit_unavailable_after_s)
        if refused is None and not self.may_write(item):
            refused = ErrorCode.FORBIDDEN, None
        if refused is None:
            refused = write_rules.lock_refusal(room, self.principal.agent_id, item.fence)
        if refused is None:
            refused = write_rules.bounds_refusal(self.update_bounds, verdict, room, self.node.metrics)
        if refused is not None:
            self._refuse(item, *refused)
            return
        try:
            op = room.apply_update(self.principal.agent_id, item.update, origin=self.conn_id, request_id=item.re, fence=item.fence)
        except CorruptUpdate as exc:
            if write_rules.worth_retrying(exc) and not retried:
                if not isinstance(exc, DocumentPanicked):  # a panicked room is rebuilt already
                    await self.node.rooms.catch_up(room)
                await self._apply(item, verdict, retried=True)
                return
            if isinstance(exc, OriginsMissing | UpdateAhead) and self.update_ahead(item):
                self._settle(item, "ahead")
                return
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
