"""Bounds on what one client update may cost the room that applies it (docs/protocol.md#7-limits).

The update checker (server/documents/checker.py) applies every update to an empty document, which
proves it decodes but says little of its cost: each struct or deleted range landing inside a
live item makes yrs split that item, so 0.5 MB of deletions that cost 7 ms against an empty
document held the event loop for over a second against a 300,000-character one (crdt/cost.py).
An update is refused (`update_too_costly`) when it carries structs of more than `max_clients`
clients; when, being larger than `check_bytes`, it takes more than `max_apply_ms` of CPU in
the worker against a copy of the room's state; or when it deletes items the room does not hold
yet (such deletions wait in the document, invisible to that copy, and are paid for by the later
update that brings the items). Nothing here touches the room's document but to read its state.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdt.clock import decode_state_vector
from crdt.document import Document
from server.core.errors import ErrorCode
from server.core.settings import Settings
from server.documents.checker import TOO_COSTLY, UpdateChecker
from server.documents.checker_wire import Measured, Verdict
from server.documents.room import Room


@dataclass(frozen=True, slots=True)
class UpdateBounds:
    max_clients: int
    check_bytes: int
    max_apply_ms: float

    @classmethod
    def from_settings(cls, settings: Settings) -> UpdateBounds:
        return cls(settings.max_update_clients, settings.update_room_check_bytes, settings.max_update_apply_ms)

    def needs_room_check(self, size: int, measured: Measured) -> bool:
        """Whether an update of `size` bytes may cost the room much more than the worker saw.
        Up to `check_bytes` it holds at most about `check_bytes / 2` deleted ranges or a tenth
        as many structs, each splitting at most two items: a few milliseconds even in a
        document of one large item (bench/bench_stall.py)."""
        return measured.apply_cpu_s is None and size > self.check_bytes

    def refusal(self, measured: Measured) -> str | None:
        """Why the update is too costly, from what the worker measured; None: within bounds."""
        if measured.clients > self.max_clients:
            return f"the update carries structs of {measured.clients} clients (max_update_clients {self.max_clients})"
        if measured.apply_cpu_s is not None and measured.apply_cpu_s * 1000 > self.max_apply_ms:
            return (
                f"applying the update took {measured.apply_cpu_s * 1000:.0f} ms of CPU against the "
                f"document (max_update_apply_ms {self.max_apply_ms:g})"
            )
        return None


async def against_room(checker: UpdateChecker, bounds: UpdateBounds, room: Room, update: bytes, verdict: Verdict) -> Verdict:
    """The worker's first `verdict` on `update`, or, when `bounds` ask for it, its verdict
    against a copy of `room`'s state (a second round trip). Encoding the room's state is the
    one cost paid on the event loop: about 2 ms per MB of encoded document, for updates past
    `check_bytes` only."""
    if isinstance(verdict, Measured) and bounds.refusal(verdict) is None and bounds.needs_room_check(len(update), verdict):
        return await checker.check_against(room.document.encode_state(), update)
    return verdict


def judge(bounds: UpdateBounds, verdict: Verdict, document: Document) -> tuple[ErrorCode, str] | None:
    """The code and reason to refuse an update to a room's `document` with, given the worker's
    verdict; None: apply it. An update deleting items of other clients (or earlier ones of its
    own) decodes the document's state vector: linear in its clients, about 1 ms per 1,000."""
    if isinstance(verdict, str):
        return (ErrorCode.UPDATE_TOO_COSTLY if verdict == TOO_COSTLY else ErrorCode.INVALID_UPDATE), verdict
    # Deletions ahead first: the most specific reason (such an update is costly to time, too).
    reason = _deletes_ahead(verdict.reach, decode_state_vector(document.state_vector())) if verdict.reach else None
    if reason is None:
        reason = bounds.refusal(verdict)
    return None if reason is None else (ErrorCode.UPDATE_TOO_COSTLY, reason)


def _deletes_ahead(reach: tuple[tuple[int, int], ...], clocks: dict[int, int]) -> str | None:
    for client, clock in reach:
        if clock > clocks.get(client, 0):
            return (
                f"the update deletes items the document does not hold yet (client {client} up to "
                f"clock {clock}; the document has {clocks.get(client, 0)})"
            )
    return None
