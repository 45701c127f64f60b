"""The refusals every writer of a room meets, in one order, whether it is a connection's
pipeline (server/transport/pipeline.py) or a short-lived writer (server/documents/one_write.py):

1. a room being rebuilt from the log is waited for: `unavailable` after a bound; a room whose
   rebuild failed: `internal_error` (docs/protocol.md#44);
2. the document's lock: `locked` or `stale_fence`, naming the holder (docs/protocol.md#121);
3. the update checker's verdict against the room: `invalid_update` or `update_too_costly`
   (docs/protocol.md#7);
4. an update the room could not apply for want of what it has not read yet is tried once more
   after reading the log (`worth_retrying`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from crdt.document import CorruptUpdate, DocumentPanicked, OriginsMissing, UpdateAhead
from server.core.errors import ErrorCode
from server.core.metrics import Metrics
from server.documents.checker_wire import Verdict
from server.documents.room import Room
from server.documents.update_bounds import UpdateBounds, judge

Refusal = tuple[ErrorCode, dict[str, Any] | None]


async def until_writable(room: Room, within_s: float) -> Refusal | None:
    """Wait while `room` is rebuilt from the log (a failed commit, a panic); the refusal when it
    is not writable within `within_s` or its rebuild failed."""
    if room.dirty is not None:
        try:
            async with asyncio.timeout(within_s):
                await room.writable()
        except TimeoutError:
            return ErrorCode.UNAVAILABLE, None
    if room.broken:  # the writer's resync (or reconnect) loads it afresh
        return ErrorCode.INTERNAL_ERROR, None
    return None


def lock_refusal(room: Room, agent_id: str, fence: int | None) -> Refusal | None:
    refused = room.write_refused(agent_id, fence)
    if refused is None:
        return None
    holder = room.lock.holder if room.lock is not None else None
    return refused, {"holder": holder} if holder else None


def bounds_refusal(
    bounds: UpdateBounds, verdict: Verdict | None, room: Room, metrics: Metrics | None
) -> Refusal | None:
    """The checker's verdict judged against the room's document now (None: no verdict, apply)."""
    judged = None if verdict is None else judge(bounds, verdict, room.document)
    if judged is None:
        return None
    code, reason = judged
    if code is ErrorCode.INVALID_UPDATE and metrics is not None:
        metrics.invalid_updates.inc()
    return code, {"reason": reason[:200]}


def worth_retrying(exc: CorruptUpdate) -> bool:
    """Whether an update the room refused may apply after the log is read: it names items this
    node has not read yet (written on another node a moment ago), or yrs panicked without the
    update at fault (the room is being rebuilt from the log)."""
    if isinstance(exc, OriginsMissing | UpdateAhead):
        return True
    return isinstance(exc, DocumentPanicked) and not exc.update_at_fault
