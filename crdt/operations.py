"""Operations: one stored CRDT update (a `document_operations` row), its type and its origin.

Owns `Operation`, `Snapshot` (a `document_snapshots` row), the `OpType` vocabulary and
`classify`, which derives the type from what an update did to the text. Pure: imports only the
standard library and `crdt.clock`; no pycrdt state, no I/O, no asyncio.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crdt.clock import VectorClock


class OpType(enum.StrEnum):
    """The values allowed in `document_operations.operation_type`."""

    INSERT = "insert"
    DELETE = "delete"
    UPDATE = "update"  # mixed: more than one of insert / delete / format
    MOVE = "move"  # Yjs array moves; never produced for the text root (Y.Text cannot move)
    FORMAT = "format"


class Origin(enum.StrEnum):
    """Where a change came from. It decides whether a change is stored and where it goes.

    - CLIENT: a connected client sent it; validate, append to the log, then broadcast.
    - FANOUT: another node appended it (learned through NOTIFY + read by seq); apply and
      broadcast to local clients, never store again, never re-announce.
    - REPLAY: rebuilt from the log (loading, time travel, verification); never stored or sent.
    - SERVER: the server itself produced it (e.g. an API edit); append and broadcast.
    """

    CLIENT = "client"
    FANOUT = "fanout"
    REPLAY = "replay"
    SERVER = "server"

    @property
    def is_stored(self) -> bool:
        """Whether a change with this origin is appended to `document_operations`."""
        return self in (Origin.CLIENT, Origin.SERVER)


def classify(
    delta: Iterable[Mapping[str, Any]] | None,
    *,
    structs_added: bool,
    deleted: bool,
    length_change: int = 0,
) -> OpType:
    """Derive the operation type from what an update did.

    Insertions only -> INSERT, deletions only -> DELETE, formatting only -> FORMAT, more than one
    kind -> UPDATE.

    `delta` is the Quill-style change the update made to the text root, as pycrdt reports it in
    `TextEvent.delta` (`{"insert": str|embed, "attributes"?}`, `{"delete": n}`,
    `{"retain": n, "attributes"?}`); a retain that carries attributes is a formatting change.
    When given, it decides. Computing it costs a walk over the whole text in yrs, so
    `Document.apply` only asks for it when the text length did not change (the one case the
    cheap facts cannot settle: a same-length replacement versus a reformat) and passes None
    otherwise. Then `length_change` (UTF-8 bytes) with the structural facts decide:
    longer -> INSERT (UPDATE if something was also deleted), shorter -> DELETE (UPDATE if
    structs were also added). Formatting that rides along with an insertion is not seen.

    `structs_added` (the state vector grew) and `deleted` (the transaction's delete set was not
    empty) also cover updates that did not change the text at all (another root, or text
    inserted and removed within one update): added only -> INSERT, deleted only -> DELETE,
    otherwise UPDATE (including updates that changed nothing; those are not stored).
    """
    kinds: set[OpType] = set()
    if delta is not None:
        for item in delta:
            if "insert" in item:
                kinds.add(OpType.INSERT)
            elif "delete" in item:
                kinds.add(OpType.DELETE)
            elif item.get("attributes"):
                kinds.add(OpType.FORMAT)
    elif length_change > 0:
        kinds.add(OpType.INSERT)
        if deleted:
            kinds.add(OpType.DELETE)
    elif length_change < 0:
        kinds.add(OpType.DELETE)
        if structs_added:
            kinds.add(OpType.INSERT)
    if not kinds:
        if structs_added and not deleted:
            kinds.add(OpType.INSERT)
        elif deleted and not structs_added:
            kinds.add(OpType.DELETE)
    if len(kinds) == 1:
        return kinds.pop()
    return OpType.UPDATE


@dataclass(frozen=True, slots=True)
class Operation:
    """One row of `document_operations`: an update as it was appended to the log.

    `seq` runs 1..N per document without gaps. `vector_clock` is the stored JSON object: the
    operation's own clock (`crdt.document.Applied.op_clock`, docs/schema.md), kept as a plain
    dict (or its JSON text) so rows pass through unchanged; `clock` decodes it. The state
    vector after operation N is the entrywise maximum of the clocks of operations 1..N.
    """

    doc_id: Any  # uuid.UUID in the server; any hashable id works here
    seq: int
    agent_id: str
    op_type: OpType | str
    vector_clock: dict[str, int]
    update: bytes
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be >= 1, got {self.seq}")
        object.__setattr__(self, "op_type", OpType(self.op_type))
        object.__setattr__(self, "update", bytes(self.update))

    @property
    def clock(self) -> VectorClock:
        """The decoded `vector_clock` (decoded on each access; cheap for small clocks)."""
        return VectorClock.from_json(self.vector_clock)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One row of `document_snapshots`: the full encoded state after operation `seq`.

    `state` is `Document.encode_state()` (a single Yjs update holding everything), so applying it
    to an empty document reproduces the document exactly as it was after `seq`.
    """

    doc_id: Any
    seq: int
    state: bytes
    created_at: datetime | None = field(default=None)

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError(f"snapshot seq must be >= 0, got {self.seq}")
        object.__setattr__(self, "state", bytes(self.state))
