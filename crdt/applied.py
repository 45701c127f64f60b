"""What `crdt.document.Document.apply` reports of one update (`Applied`). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from crdt.clock import VectorClock
from crdt.operations import OpType, Origin


@dataclass(frozen=True)
class Applied:
    """What `Document.apply` did with one update.

    - `update`: the bytes as received (what the log stores).
    - `changed`: False for an update the document already had (a duplicate); such an update
      need not be stored or broadcast.
    - `pending`: part of the update waits for structs the document has not seen (yrs keeps it
      and integrates it once they arrive). The text does not show it yet; it still belongs in
      the log, because replaying the log reproduces the same wait. A deletion of items the
      document has not seen is pending too.
    - `op_type`: see `crdt.operations.classify`.
    - `state_vector`: the document's state vector after the update; `clocks` is it decoded,
      `{client_id: clock}` (shared with the document: do not mutate), `clock` the same as a
      `VectorClock` (built on first access), `clock_json()` the same as `clock.to_json()`.
    - `op_clock`: the operation's own clock, what the server stores as
      `document_operations.vector_clock` (docs/schema.md; `clock_text()` is its JSON text): the
      end clock of every client whose structs it integrated (a pending struct that surfaces with
      it included), joined with the least clock covering the items it deleted. Its size follows
      the update, not the document: usually one entry. Built on first access from `op_clocks`,
      the same as a dict.
    - `delta`: the change to the text as a Quill-style delta (offsets in UTF-8 bytes), or None
      when it was not computed (see `Document.apply`); `()` when computed and nothing changed.
    """

    update: bytes
    origin: Origin
    changed: bool
    pending: bool
    op_type: OpType
    state_vector: bytes
    clocks: Mapping[int, int] = field(hash=False)  # dicts: hash the other fields, as before
    op_clocks: Mapping[int, int] = field(hash=False)
    delta: tuple[dict[str, Any], ...] | None
    # `clock_json(clocks)`, kept up to date by the document's reader (shared: never mutate).
    _clock_json: Mapping[str, int] = field(repr=False, compare=False)

    @cached_property
    def clock(self) -> VectorClock:
        return VectorClock(self.clocks)

    @cached_property
    def op_clock(self) -> VectorClock:
        return VectorClock(self.op_clocks)

    def clock_json(self) -> dict[str, int]:
        """`clock.to_json()` (key order aside) without decoding or sorting anything: the JSON
        object of the state vector after the update. A new dict on every call."""
        return dict(self._clock_json)

    def clock_text(self) -> str:
        """`op_clock.to_json()` as compact JSON text (key order aside): what the server hands
        PostgreSQL for the log's jsonb column (a string array is cheaper for asyncpg to encode
        than an array of dicts). Joined by hand: the keys are decimal client ids and the values
        integers, so nothing needs escaping, and json.dumps would cost three times as much."""
        return "{" + ",".join([f'"{client}":{clock}' for client, clock in self.op_clocks.items() if clock]) + "}"


def _applied(**fields: Any) -> Applied:
    """An `Applied` built without its generated `__init__`, which sets each field of a frozen
    dataclass through `object.__setattr__`: 2.6 us per update here against 1.2 this way. The
    same instance (equality, hash and repr included); every field must be given."""
    applied = object.__new__(Applied)
    applied.__dict__.update(fields)
    return applied
