"""Rebuilding a room's document from the log: the repair of a room whose document may differ
from the log (a commit failed after the update was applied, or yrs panicked), and the state at a
given seq (for a snapshot that could not be captured exactly from memory).

`RoomRepair` is a mixin of `server.documents.rooms.RoomRegistry`, which provides `pool`, `rooms`,
`_repairs` and `_catch_up`. While a room is repaired, `Room.dirty` is set: its updates and opens
wait (`Room.writable`), bounded by the repair's own bounds.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from crdt.document import Document
from crdt.operations import Operation, Snapshot
from crdt.replay import rebuild
from server.db import store
from server.db.dbfaults import is_unavailable

if TYPE_CHECKING:
    from server.documents.room import Room

log = structlog.get_logger("tandem.rooms")

REPAIR_MAX_WAIT_S = 2.0  # the longest pause between two attempts to rebuild a room from the log


async def read_log(
    conn: asyncpg.Connection, doc_id: uuid.UUID, until_seq: int | None = None
) -> tuple[Snapshot | None, list[Operation]]:
    """A document's latest snapshot (at or before `until_seq`, when given: another node may
    have snapshotted further) and every operation after it (what `rebuild` needs)."""
    if until_seq is None:
        row = await store.latest_snapshot(conn, doc_id)
    else:
        row = await conn.fetchrow(store.Q["replay_snapshot_at_or_before"], doc_id, until_seq)
    snapshot = Snapshot(doc_id, row["sequence_number"], row["state"], row["created_at"]) if row else None
    rows = await store.all_operations_after(conn, doc_id, snapshot.seq if snapshot else 0)
    operations = [
        Operation(doc_id, r["sequence_number"], r["agent_id"], r["operation_type"], r["vector_clock"], r["update"])
        for r in rows
    ]
    return snapshot, operations


class _NotSettled(RuntimeError):
    """Operations kept arriving while a room waited to be rebuilt; it tries again."""


class RoomRepair:
    """The registry's repair steps (a mixin: see the module docstring)."""

    pool: asyncpg.Pool
    rooms: dict[uuid.UUID, Room]
    _repairs: set[asyncio.Task[None]]

    async def _catch_up(self, room: Room, force: bool, page: int = 1000, max_pages: int = 1000) -> None:
        raise NotImplementedError

    def _repair(self, room: Room) -> None:
        if room.dirty is None:
            room.dirty = asyncio.Event()
            task = asyncio.create_task(self._rebuild_dirty(room))
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)

    async def _rebuild_dirty(self, room: Room) -> None:
        """Replace a dirty room's document with the log's, once nothing is in flight.

        New updates and opens wait (`Room.writable`); updates already applied commit or are
        refused first, and the rebuild is the log up to the delivered head exactly. While the
        database is away it tries again with backoff (the waiting updates are refused with
        `unavailable` after their own bound); only an unexpected failure marks the room broken.
        """
        assert room.dirty is not None
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: is_unavailable(exc) or isinstance(exc, _NotSettled)),
            wait=wait_exponential_jitter(multiplier=0.05, max=REPAIR_MAX_WAIT_S, jitter=0.05),
            before_sleep=lambda state: log.warning(
                "room.repair_retry", doc_id=str(room.doc_id), attempt=state.attempt_number,
                error=repr(state.outcome.exception()) if state.outcome else None,
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._rebuild_settled(room)
        except Exception:
            log.exception("room.repair_failed", doc_id=str(room.doc_id))
            room.broken = True
            if self.rooms.get(room.doc_id) is room:
                del self.rooms[room.doc_id]
        finally:
            event, room.dirty = room.dirty, None
            event.set()

    async def _rebuild_settled(self, room: Room, max_turns: int = 50) -> None:
        """One attempt: wait until nothing of this node is in flight and the log's operations up
        to the delivered head are all here, then swap in the document rebuilt from the log."""
        for _ in range(max_turns):
            pending = room.last_pending
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
                continue
            if room.known_seq > room.head_seq or room.held:
                await self._catch_up(room, force=True)
                if room.known_seq > room.head_seq or room.held:
                    await asyncio.sleep(0.01)
                    continue
            seq = room.head_seq
            document = await self._rebuild_at(room, seq)
            if room.head_seq == seq and not room.held:
                room.document = document
                room.epoch += 1
                log.info("room.repaired", doc_id=str(room.doc_id), head_seq=seq)
                return
        raise _NotSettled(room.doc_id)

    async def _rebuild_at(self, room: Room, seq: int) -> Document:
        """The document exactly after operation `seq`: its latest snapshot plus the log."""
        async with store.tenant_transaction(self.pool, room.tenant_id) as conn:
            snapshot, operations = await read_log(conn, room.doc_id, seq)
        return await asyncio.to_thread(rebuild, operations, snapshot, until_seq=seq)
