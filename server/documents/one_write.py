"""One update written by a short-lived writer (an HTTP request) through the rooms' write path.

The steps and refusals are those of a connection's pipeline (server/transport/pipeline.py), from
server/documents/write_rules.py: a room being rebuilt (`unavailable`), the document's lock
(`locked`, `stale_fence`), the update checker's verdict and the room's bounds (`invalid_update`,
`update_too_costly`), then `Room.apply_update` and the group committer (`RoomRegistry.submit`). The writer waits for the
commit and gets the new seq; subscribers on every node hear the operation as any other.

`expect_head` (If-Match) is checked in the same synchronous step as the apply, with no await in
between: the room holds exactly operations 1..head_seq (nothing of this node in flight, no seq
known beyond it, after reading the log), so no writer on this node can slip in between the
check and the apply. Another node may have passed the same check; the operation carries the
expectation into the append (migration 0029), which refuses it under the document's row lock
when the head moved: `HeadMoved`, nothing stored, and the room is rebuilt from the log.
`build`, when given, makes the update from the document at that moment
(text edits: server/documents/text_edits.py), so a replace is computed from the text it edits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from crdt.document import CorruptUpdate, Document
from server.core.errors import ErrorCode, TandemError
from server.core.metrics import Metrics
from server.documents import write_rules
from server.documents.checker import UpdateChecker
from server.documents.committer import HeadMoved
from server.documents.room import Room
from server.documents.rooms import RoomRegistry
from server.documents.update_bounds import UpdateBounds, against_room

Builder = Callable[[Document], bytes | None]


async def write(
    rooms: RoomRegistry,
    checker: UpdateChecker | None,
    bounds: UpdateBounds,
    metrics: Metrics | None,
    room: Room,
    agent_id: str,
    *,
    update: bytes | None = None,
    build: Builder | None = None,
    expect_head: int | None = None,
    origin: str | None = None,
    unavailable_after_s: float = 5.0,
) -> int | None:
    """Apply and commit `update` (or the one `build` makes); the seq it got, or None when it
    changed nothing (then `room.head_seq` is the seq it was already part of). Raises
    TandemError with the pipeline's codes, or `HeadMoved`."""
    verdict = None
    if update is not None and checker is not None:
        (verdict,) = await checker.check_many([update])
        verdict = await against_room(checker, bounds, room, update, verdict)
    for attempt in range(2):
        if expect_head is not None or attempt:
            await rooms.catch_up(room)
        refused = await write_rules.until_writable(room, unavailable_after_s)
        if refused is None:
            refused = write_rules.lock_refusal(room, agent_id, None)
        if refused is not None:
            raise TandemError(refused[0], details=refused[1])
        # From here to `submit` nothing awaits: the head checked is the head applied upon.
        if expect_head is not None:
            head = room.head_seq if room.quiet else -1
            if head != expect_head:
                raise HeadMoved(room.known_seq if head < 0 else head)
        data = update if build is None else build(room.document)
        if data is None:
            return None
        refused = write_rules.bounds_refusal(bounds, verdict, room, metrics)
        if refused is not None:
            raise TandemError(refused[0], details=refused[1])
        try:
            op = room.apply_update(agent_id, data, origin=origin)
        except CorruptUpdate as exc:
            if write_rules.worth_retrying(exc) and attempt == 0:
                continue  # read the log (another node's recent commits) and try once more
            if metrics is not None:
                metrics.invalid_updates.inc()
            raise TandemError(
                ErrorCode.INVALID_UPDATE, details={"reason": str(exc)[:200]}
            ) from None
        if op is None:
            return None
        if expect_head is not None:
            # The room's check holds on this node only; the append checks it again under the
            # document's row lock, so a write of another node on the same head cannot pass too.
            op = op._replace(expect_head=expect_head)
            room.in_flight[op.update] = op
        seq = await rooms.submit(room, op)
        try:
            return await asyncio.shield(seq)
        except LookupError:
            raise TandemError(ErrorCode.NOT_FOUND) from None
    raise AssertionError("unreachable")
