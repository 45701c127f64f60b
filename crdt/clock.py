"""Vector clocks: Yjs state vectors decoded into {client_id: clock}, compared, and stored as JSON.

Owns the one place that reads the state-vector byte format (lib0 varints: a count, then
(client, clock) pairs) and the JSON shape of `document_operations.vector_clock`.
Pure: imports only pycrdt and the standard library; no I/O, no asyncio.

Stored shape (decided here, documented in `VectorClock.to_json`): a flat JSON object mapping the
Yjs client id (as a decimal string, because JSON keys are strings and ids reach 2**53) to the
exclusive end clock, e.g. `{"3735928559": 42}`. For an operation it is the operation's own
clock (`crdt.document.Applied.op_clock`: the clients whose structs it integrated or deleted), as
docs/schema.md says, so a row stays as small as its update however many clients the document
has seen; the full state vector lives in the snapshots. No agent id inside: the author is the
row's `agent_id` column, and the keys name the Yjs client ids that agent wrote with.
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

    One tight loop over the bytes (about 1 ms per 1,000 clients in CPython), avoiding a function
    call per varint. Splitting on terminator bytes with a regex first measured no faster.
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


def clock_json(clocks: Mapping[int, int]) -> dict[str, int]:
    """`VectorClock(clocks).to_json()` without building the clock (key order aside)."""
    return {str(client): clock for client, clock in clocks.items() if clock}


# Bytes that continue a varint; deleting them from a slice leaves one byte per varint ended.
_CONTINUATION_BYTES = bytes(range(0x80, 0x100))


class StateVectorReader:
    """Decodes the successive state vectors of one document, re-reading only what changed.

    Most updates advance one client's clock without changing its varint length, so the new
    vector differs from the previous one inside a single clock varint. `read` finds the first
    differing byte (one XOR of the two vectors as big ints), checks that every differing byte
    lies in that one clock varint and that the varint boundaries are unchanged, and decodes
    just that varint. Anything else (another length, a new client, several clients advanced,
    entries written in another order) falls back to the strict `decode_state_vector`, so
    the result never depends on yrs keeping its entry order.

    After `read(data)`, `data`, `clocks` (as `decode_state_vector(data)`) and `json` (as
    `VectorClock(clocks).to_json()`, key order aside) describe the vector. The two dicts are
    replaced, never mutated, when the vector changes: callers may keep them but must not
    mutate them.
    """

    __slots__ = ("data", "clocks", "json", "_clients")

    def __init__(self) -> None:
        self.data = b"\x00"
        self.clocks: dict[int, int] = {}
        self.json: dict[str, int] = {}
        self._clients: list[int] = []  # client ids in the order of `data`

    def read(self, data: bytes) -> dict[int, int]:
        """Make `data` the current vector; returns the entries of it that differ from the
        previous one (`changed_entries`). Raises `CorruptStateVector` like
        `decode_state_vector`; the reader then still holds the previous vector."""
        previous = self.data
        if data == previous:
            return {}
        if len(data) == len(previous):
            changed = self._read_one_clock(previous, data)
            if changed is not None:
                return changed
        clocks = decode_state_vector(data)
        changed = changed_entries(self.clocks, clocks)
        self.data = data
        self.clocks = clocks
        self.json = clock_json(clocks)
        self._clients = list(clocks)
        return changed

    def _read_one_clock(self, previous: bytes, data: bytes) -> dict[int, int] | None:
        """The fast path of `read` for an equally long vector; None when it does not apply."""
        size = len(data)
        diff = int.from_bytes(previous, "big") ^ int.from_bytes(data, "big")
        first = size - 1 - (diff.bit_length() - 1) // 8  # first differing byte
        start = first  # the varint holding `first` starts after the previous terminator
        while start > 0 and data[start - 1] >= 0x80:
            start -= 1
        end = first  # ... and ends at the next terminator, the same one in both vectors
        while end < size and data[end] >= 0x80 and previous[end] >= 0x80:
            end += 1
        if end == size or data[end] >= 0x80 or previous[end] >= 0x80:
            return None
        if previous[end + 1 :] != data[end + 1 :]:
            return None  # more than one varint changed
        index = len(data[:start].translate(None, _CONTINUATION_BYTES))  # varints before it
        if index < 2 or index % 2:
            return None  # the count or a client id changed, not a clock
        clock = 0
        for byte in reversed(data[start : end + 1]):  # at most 10 bytes: `previous` was valid
            clock = (clock << 7) | (byte & 0x7F)
        client = self._clients[(index - 2) // 2]
        clocks = dict(self.clocks)
        clocks[client] = clock
        json = dict(self.json)
        if clock:
            json[str(client)] = clock
        else:
            json.pop(str(client), None)
        self.data = data
        self.clocks = clocks
        self.json = json
        return {client: clock}


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
