"""Vector clocks: Yjs state vectors decoded into {client_id: clock}, compared, and stored as JSON.

Owns the one place that reads the state-vector byte format (lib0 varints: a count, then
(client, clock) pairs) and the JSON shape of `document_operations.vector_clock`.
Pure: imports only pycrdt and the standard library; no I/O, no asyncio.

Stored shape (decided here, documented in `VectorClock.to_json`): a flat JSON object mapping the
Yjs client id (as a decimal string, because JSON keys are strings and ids reach 2**53) to the
exclusive end clock, e.g. `{"3735928559": 42}`. For an operation it holds only the clients the
operation advanced, joined with the least clock covering the items it deleted (see
`crdt.document.Applied.op_clock`): usually one entry, however many clients the document has
seen. No agent id inside: the author is the row's `agent_id` column, and the keys name the Yjs
client ids that agent wrote with.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycrdt import IdMap, IdSet, write_var_uint

# Yjs client ids are uint53 and clocks uint32 (JS numbers); 10 varint bytes hold 70 bits.
# Anything longer is garbage, and refusing it keeps hostile input from building huge ints.
_MAX_VARINT_BYTES = 10
_MAX_CLIENT_ID = 2**53 - 1


class CorruptStateVector(ValueError):
    """The bytes are not a Yjs v1 state vector (truncated, trailing bytes, oversized varint)."""


class Ordering(enum.Enum):
    """How two vector clocks relate (happened-before, by entrywise comparison)."""

    EQUAL = "equal"
    BEFORE = "before"  # self < other: other has seen everything self has, and more
    AFTER = "after"  # self > other
    CONCURRENT = "concurrent"  # each has something the other lacks


def _read_var_uints(data: bytes) -> list[int]:
    """Split bytes into lib0 unsigned varints (7 bits per byte, low groups first).

    One tight loop over the bytes (about 1 ms per 1,000 clients in CPython): this runs for
    every applied update, so it avoids a function call per varint.
    """
    values: list[int] = []
    append = values.append
    value = 0
    shift = 0
    for byte in data:
        if byte < 0x80:
            append(value | (byte << shift))
            value = 0
            shift = 0
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift >= 7 * _MAX_VARINT_BYTES:
                raise CorruptStateVector("varint longer than 10 bytes")
    if shift:
        raise CorruptStateVector("truncated varint")
    return values


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector (as from `Doc.get_state()`) into `{client_id: clock}`.

    `clock` is exclusive: the document holds that client's structs `0 .. clock-1`.
    Raises `CorruptStateVector` for anything that is not exactly one well-formed vector
    (empty, truncated, trailing bytes, count mismatch, oversized varint or client id).
    Cost: linear in `len(data)`, nothing allocated beyond one int per varint.
    """
    values = _read_var_uints(bytes(data))
    if not values:
        raise CorruptStateVector("empty state vector")
    count = values[0]
    if len(values) != 1 + 2 * count:
        raise CorruptStateVector(
            f"state vector declares {count} entries but holds {(len(values) - 1) / 2:g}"
        )
    clocks = dict(zip(values[1::2], values[2::2]))
    if len(clocks) != count:
        raise CorruptStateVector("duplicate client id in state vector")
    if clocks and max(clocks) > _MAX_CLIENT_ID:
        raise CorruptStateVector("client id exceeds 2**53-1")
    return clocks


def changed_entries(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """The entries of `after` that differ from `before`: what one transaction advanced."""
    return {client: clock for client, clock in after.items() if before.get(client, 0) != clock}


def encode_state_vector(clocks: Mapping[int, int]) -> bytes:
    """Encode `{client_id: clock}` as a Yjs v1 state vector, usable with `Doc.get_update`.

    Entries with clock 0 are dropped (Yjs never writes them). Clients are written in ascending
    order so equal clocks always give equal bytes.
    """
    entries = sorted((c, k) for c, k in clocks.items() if k > 0)
    parts = [write_var_uint(len(entries))]
    for client, clock in entries:
        parts.append(write_var_uint(client))
        parts.append(write_var_uint(clock))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class VectorClock:
    """An immutable `{client_id: clock}` map; a missing client means clock 0.

    Comparison is entrywise: `a <= b` (a is dominated by b) when every entry of a is at most
    the matching entry of b. Zero entries are dropped at construction, so equal clocks compare
    and hash equal however they were built.
    """

    clocks: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cleaned = {int(c): int(k) for c, k in self.clocks.items() if int(k) != 0}
        for client, clock in cleaned.items():
            if client < 0 or clock < 0:
                raise ValueError(f"negative client or clock: {client}: {clock}")
        object.__setattr__(self, "clocks", dict(sorted(cleaned.items())))

    # construction -------------------------------------------------------------------------

    @classmethod
    def from_state_vector(cls, data: bytes) -> VectorClock:
        """Decode Yjs state-vector bytes; raises `CorruptStateVector`."""
        return cls(decode_state_vector(data))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str | bytes) -> VectorClock:
        """Read the stored JSON object (`{"<client_id>": clock}`), or its JSON text (a jsonb
        column read without a codec); raises `ValueError`."""
        if isinstance(obj, str | bytes):
            obj = json.loads(obj)
        if not isinstance(obj, Mapping):
            raise ValueError("vector clock must be a JSON object")
        clocks: dict[int, int] = {}
        for key, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"clock for client {key!r} is not an integer")
            clocks[int(key)] = value
        return cls(clocks)

    @classmethod
    def merge(cls, clocks: Iterable[VectorClock]) -> VectorClock:
        """The least clock dominating all of `clocks` (entrywise maximum)."""
        out: dict[int, int] = {}
        for vc in clocks:
            for client, clock in vc.clocks.items():
                if clock > out.get(client, 0):
                    out[client] = clock
        return cls(out)

    # encoding ------------------------------------------------------------------------------

    def to_state_vector(self) -> bytes:
        """Yjs state-vector bytes, e.g. to ask a `Document` for `diff(...)` since this clock."""
        return encode_state_vector(self.clocks)

    def to_json(self) -> dict[str, int]:
        """The JSON object stored in `document_operations.vector_clock`.

        Keys are client ids as decimal strings (JSON object keys must be strings), values the
        exclusive end clocks. Example: `{"2915367431": 17}`.
        """
        return {str(client): clock for client, clock in self.clocks.items()}

    # comparison ----------------------------------------------------------------------------

    def get(self, client_id: int) -> int:
        return self.clocks.get(client_id, 0)

    def dominates(self, other: VectorClock) -> bool:
        """True when self has seen everything `other` has (`other <= self`), equality included."""
        return all(self.clocks.get(c, 0) >= k for c, k in other.clocks.items())

    def compare(self, other: VectorClock) -> Ordering:
        """`Ordering` of self relative to other: EQUAL, BEFORE, AFTER or CONCURRENT."""
        le = other.dominates(self)
        ge = self.dominates(other)
        if le and ge:
            return Ordering.EQUAL
        if le:
            return Ordering.BEFORE
        if ge:
            return Ordering.AFTER
        return Ordering.CONCURRENT

    def __le__(self, other: VectorClock) -> bool:
        return other.dominates(self)

    def __ge__(self, other: VectorClock) -> bool:
        return self.dominates(other)

    def __lt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.BEFORE

    def __gt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.AFTER

    def __len__(self) -> int:
        return len(self.clocks)

    def __hash__(self) -> int:
        return hash(tuple(self.clocks.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorClock):
            return NotImplemented
        return dict(self.clocks) == dict(other.clocks)


def delete_set_clock(delete_set: bytes) -> VectorClock:
    """The least clock covering every id in an encoded Yjs delete set: `{client: max end}`.

    A document must hold those items before the deletions can take effect, so this is the
    part of an operation's causal dependencies that a state vector can express. Decoding is
    pycrdt's (`IdSet.decode`, ranges read back through `IdMap.from_set`); raises `ValueError`
    for bytes that are not a delete set.
    """
    if delete_set in (b"", b"\x00"):
        return VectorClock()
    ranges = IdMap.from_set(IdSet.decode(delete_set), [])
    out: dict[int, int] = {}
    for client, attr_range in ranges.entries():
        if attr_range.end > out.get(client, 0):
            out[client] = attr_range.end
    return VectorClock(out)
