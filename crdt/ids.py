"""The ids (client, clock) a Yjs v1 update names, read from its bytes as JS Yjs reads them.

yrs keeps clocks in 32 bits and reads larger ones truncated, while Yjs keeps them as JS numbers
(53 bits): an update naming clock 2**32 - 1 or beyond means one thing to yrs and another to
every JS editor, and yrs may apply it without reporting a change, or panic on the next honest
update. `check_ids` walks the update's structs and delete set (the v1 layout of Yjs's
`readClientsStructRefs`, `readItemContent` and `readDeleteSet`), refuses ids that cannot
round-trip, and returns what `misfit` needs to tell, against a document's state, an update yrs
would hold otherwise than Yjs or than its own replay of the log (a hole in a client's clocks, a
character cut between its UTF-16 halves). `crdt.document.Document.apply` reports every refusal
as `CorruptUpdate`. Pure: standard library only.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Set
from typing import NamedTuple

MAX_CLOCK = 2**31
"""Every clock an update names, and every struct's end clock, must stay at or below this: half
the u32 range yrs counts in, so no sum of a clock and a length can wrap (an editor reaching it
would have made two billion insertions as one client id)."""

MAX_CLIENT_ID = 2**53 - 1  # Yjs client ids are JS integers
_MAX_VARINT_BYTES = 10
_MAX_ANY_DEPTH = 64  # nesting of lib0 `any` values (ContentAny, ContentDoc options)
_FOUR_BYTE_LEAD = re.compile(rb"[\xf0-\xff]")  # a UTF-8 lead byte of a character past U+FFFF (or garbage)


class ClockOutOfRange(ValueError):
    """The update names a clock above `MAX_CLOCK` or a client id above 2**53 - 1."""

    def __init__(self, message: str, client: int, clock: int) -> None:
        super().__init__(message)
        self.client = client
        self.clock = clock


class MalformedUpdate(ValueError):
    """The bytes do not follow the Yjs v1 update layout."""


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 unsigned varint at `pos` (7 bits per byte, low groups first), and the next pos."""
    if pos < len(data) and data[pos] < 0x80:
        return data[pos], pos + 1  # one byte: most lengths and counts
    value = shift = 0
    for at in range(pos, min(len(data), pos + _MAX_VARINT_BYTES)):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    raise MalformedUpdate("truncated or oversized varint")


def _count(data: bytes, pos: int) -> tuple[int, int]:
    """A count of things that each take at least one byte (refuses counts that cannot fit)."""
    n, pos = _uint(data, pos)
    if n > len(data) - pos:
        raise MalformedUpdate("count larger than the update")
    return n, pos


def _skip_bytes(data: bytes, pos: int) -> tuple[int, int]:
    """Skip a length-prefixed byte string (var string or Uint8Array): its length, the next pos."""
    n, pos = _uint(data, pos)
    pos += n
    if pos > len(data):
        raise MalformedUpdate("truncated update")
    return n, pos


def _skip_any(data: bytes, pos: int, depth: int = 0) -> int:
    """Skip one lib0 `any` value; returns the next pos."""
    if depth > _MAX_ANY_DEPTH:
        raise MalformedUpdate("any value nested too deep")
    if pos >= len(data):
        raise MalformedUpdate("truncated update")
    tag = data[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # signed varint: continuation, sign and 6 bits first
        if pos >= len(data):
            raise MalformedUpdate("truncated update")
        return _uint(data, pos + 1)[1] if data[pos] & 0x80 else pos + 1
    if tag in (124, 123, 122):  # float32, float64, bigint64
        pos += 4 if tag == 124 else 8
    elif tag in (119, 116):  # string, Uint8Array
        return _skip_bytes(data, pos)[1]
    elif tag == 118:  # object: (key, value) entries
        n, pos = _count(data, pos)
        for _ in range(n):
            pos = _skip_any(data, _skip_bytes(data, pos)[1], depth + 1)
    elif tag == 117:  # array
        n, pos = _count(data, pos)
        for _ in range(n):
            pos = _skip_any(data, pos, depth + 1)
    else:
        raise MalformedUpdate(f"unknown any type {tag}")
    if pos > len(data):
        raise MalformedUpdate("truncated update")
    return pos


def _out_of_range(client: int, clock: int) -> ClockOutOfRange:
    if client > MAX_CLIENT_ID:
        return ClockOutOfRange(f"client id {client} exceeds 2**53-1", client, clock)
    return ClockOutOfRange(f"clock {clock} of client {client} exceeds {MAX_CLOCK}", client, clock)


def _read_id(data: bytes, pos: int) -> tuple[tuple[int, int], int]:
    """Read and check an id: `(client, clock)` and the next pos."""
    client, pos = _uint(data, pos)
    clock, pos = _uint(data, pos)
    if client > MAX_CLIENT_ID or clock > MAX_CLOCK:
        raise _out_of_range(client, clock)
    return (client, clock), pos


def check_header(update: bytes) -> None:
    """Reject an update whose leading count of struct groups cannot fit in its bytes.

    yrs sizes a table from that count before reading any group: 20 bytes declaring 2**28
    groups make it allocate about 512 MB and spend half a second before failing. Each group
    takes at least 3 bytes (struct count, client, clock) and the delete set at least 1, so a
    larger count is garbage. This reads one lib0 varint; yrs still does the real decoding.
    """
    count = 0
    for i in range(min(len(update), 10)):
        byte = update[i]
        count |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if 3 * count + 1 > len(update) - (i + 1):
                raise MalformedUpdate(f"update declares {count} struct groups in {len(update)} bytes")
            return
    raise MalformedUpdate("update does not start with a struct-group count")


class Run(NamedTuple):
    """Consecutive structs of one client in an update: clocks `start` to `end` (exclusive), and
    the items its first struct names (origin, right origin, parent), which must be there before
    yrs integrates it."""

    client: int
    start: int
    end: int
    needs: tuple[tuple[int, int], ...]


def _mark_pairs(raw: bytes, client: int, clock: int, mid_character: set[tuple[int, int]]) -> int:
    """A string's length in UTF-16 units, adding to `mid_character` the id between the two
    halves of each character past U+FFFF."""
    units = 0
    for ch in raw.decode("utf-8", "replace"):
        if ord(ch) > 0xFFFF:
            mid_character.add((client, clock + units + 1))
            units += 2
        else:
            units += 1
    return units


def _skip_content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """Skip an item's content (not a string: `check_ids` reads those): the clock ticks it takes
    and the next pos."""
    if ref == 1:  # deleted
        return _uint(data, pos)
    if ref in (3, 5):  # binary, embed
        return 1, _skip_bytes(data, pos)[1]
    if ref == 6:  # format: key, value
        return 1, _skip_bytes(data, _skip_bytes(data, pos)[1])[1]
    if ref == 7:  # type; XmlElement (3) and XmlHook (5) carry a name
        type_ref, pos = _uint(data, pos)
        return 1, (_skip_bytes(data, pos)[1] if type_ref in (3, 5) else pos)
    if ref == 2:  # JSON: strings
        n, pos = _count(data, pos)
        for _ in range(n):
            pos = _skip_bytes(data, pos)[1]
        return n, pos
    if ref == 8:  # any: values
        n, pos = _count(data, pos)
        for _ in range(n):
            pos = _skip_any(data, pos)
        return n, pos
    if ref == 9:  # subdocument: guid, options
        return 1, _skip_any(data, _skip_bytes(data, pos)[1])
    raise MalformedUpdate(f"unknown content type {ref}")


class Between(NamedTuple):
    """An item placed between two others: its first id `(client, clock)`, its length in clock
    ticks, its `origin` (the id it goes right after) and `right` origin (the id it goes right
    before), and whether it shows in the text once applied (`visible`: countable content, not
    deleted by the update that carries it). `crdt.order` checks that `origin` comes before
    `right` in the document."""

    client: int
    clock: int
    length: int
    origin: tuple[int, int]
    right: tuple[int, int]
    visible: bool


class Ids(NamedTuple):
    """What `check_ids` read: the update's runs of structs, in order (a skip struct ends one);
    for each client it deletes from, the end of its last (non-empty) deleted range; the ids
    that fall between the two UTF-16 halves of a character of its strings (`(client, clock)`);
    the ids where applying it cuts structs in two (before an item's right origin, after its
    origin, at both ends of a deleted range); its items with both origins (`Between`); its
    count of struct groups; and the kinds of struct it holds (bit `1 << ref`: GC 0, the
    content refs 1-9, skip 10)."""

    runs: list[Run]
    deletes: dict[int, int]
    mid_character: set[tuple[int, int]]
    cuts: list[tuple[int, int]]
    between: list[Between]
    groups: int
    kinds: int


def check_ids(update: bytes) -> Ids:
    """The ids the update names (`Ids`). Raises `ClockOutOfRange` if the update names a clock above
    `MAX_CLOCK` (a struct's start or end, an origin, a parent, a deleted range) or a client id
    above 2**53 - 1, and `MalformedUpdate` if it does not follow the v1 layout (trailing bytes
    included).

    Linear in the update's size, a few microseconds per struct in CPython (0.1 s for 1 MiB of
    the smallest structs, where yrs takes 0.03 s to apply them).
    """
    check_header(update)
    data = update
    size = len(data)
    runs: list[Run] = []
    mid_character: set[tuple[int, int]] = set()
    cuts: list[tuple[int, int]] = []
    between: list[Between] = []
    placed: dict[int, list[tuple[int, int]]] = {}  # per client of `between`: ranges it deletes
    kinds = 0
    groups, pos = _count(data, 0)
    for _ in range(groups):
        structs, pos = _count(data, pos)
        client, pos = _uint(data, pos)
        clock, pos = _uint(data, pos)
        start = clock
        needs: list[tuple[int, int]] = []
        for _ in range(structs):
            if pos >= size:
                raise MalformedUpdate("truncated update")
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            kinds |= 1 << ref
            if ref == 0:  # GC: a length
                length, pos = _uint(data, pos)
            elif ref == 10:  # skip: clocks this update does not hold
                length, pos = _uint(data, pos)
                if clock > start:
                    runs.append(Run(client, start, clock, tuple(needs)))
                start = clock + length
                needs = []
            else:
                first = clock == start
                origin = right = None
                if info & 0x80:  # origin: the item goes right after it
                    origin, pos = _read_id(data, pos)
                    cuts.append((origin[0], origin[1] + 1))
                    if first:
                        needs.append(origin)
                if info & 0x40:  # right origin: ... and right before this one
                    right, pos = _read_id(data, pos)
                    cuts.append(right)
                    if first:
                        needs.append(right)
                if not info & 0xC0:  # no origins: the parent, by root name or by item id
                    parent_info, pos = _uint(data, pos)
                    if parent_info == 1:
                        pos = _skip_bytes(data, pos)[1]
                    else:
                        parent, pos = _read_id(data, pos)
                        if first:
                            needs.append(parent)
                    if info & 0x20:  # its key in a map parent
                        pos = _skip_bytes(data, pos)[1]
                if ref == 4:  # a string: as many ticks as UTF-16 units
                    length, pos = _skip_bytes(data, pos)
                    raw = data[pos - length : pos]
                    if raw.isascii():  # C speed: a snapshot's string may take megabytes
                        pass
                    elif _FOUR_BYTE_LEAD.search(raw):  # characters past U+FFFF
                        length = _mark_pairs(raw, client, clock, mid_character)
                    else:
                        length = len(raw.decode("utf-8", "replace"))
                else:
                    length, pos = _skip_content(data, pos, ref)
                if right is not None and origin is not None:
                    between.append(Between(client, clock, length, origin, right, ref not in (1, 6)))
            clock += length
        if client > MAX_CLIENT_ID or clock > MAX_CLOCK:  # the group's end: its largest clock
            raise _out_of_range(client, clock)
        if clock > start:
            runs.append(Run(client, start, clock, tuple(needs)))
    deletes: dict[int, int] = {}
    for item in between:
        placed.setdefault(item.client, [])
    clients, pos = _count(data, pos)
    for _ in range(clients):  # the delete set: per client, (clock, length) ranges
        client, pos = _uint(data, pos)
        ranges, pos = _count(data, pos)
        for _ in range(ranges):
            clock, pos = _uint(data, pos)
            length, pos = _uint(data, pos)
            end = clock + length
            if client > MAX_CLIENT_ID or end > MAX_CLOCK:
                raise _out_of_range(client, end)
            cuts.append((client, clock))
            cuts.append((client, end))
            if length and end > deletes.get(client, 0):  # an empty range deletes nothing
                deletes[client] = end
            if client in placed:
                placed[client].append((clock, end))
    if pos != size:
        raise MalformedUpdate("trailing bytes after the delete set")
    if any(placed.values()):
        merged = {client: _merged(ranges) for client, ranges in placed.items()}
        between = [b._replace(visible=False) if b.visible and _deleted(merged[b.client], b) else b for b in between]
    return Ids(runs, deletes, mid_character, cuts, between, groups, kinds)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges `(start, end)` sorted, the overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _deleted(merged: list[tuple[int, int]], item: Between) -> bool:
    """Whether one of the `_merged` ranges overlaps the item's clocks."""
    at = bisect.bisect_left(merged, (item.clock + item.length,)) - 1
    return at >= 0 and merged[at][1] > item.clock


class Misfit(NamedTuple):
    """Why an update is refused; `ahead`: it goes on past clocks the document lacks (its writer
    holds edits the server has not seen, and may send them)."""

    reason: str
    ahead: bool = False


def misfit(ids: Ids, clocks: Mapping[int, int], mid_character: Set[tuple[int, int]] = frozenset()) -> Misfit | None:
    """Why yrs would hold this update otherwise than Yjs, or than its own replay of the log, in
    a document at `clocks` (its state vector) whose strings have `mid_character` ids (as
    `Ids.mid_character`), or None.

    - A run starting past the clock the document holds for its client waits, in Yjs, until the
      clocks between arrive. yrs keeps it pending only while an item its first struct names is
      missing; once they are all there (other clients' items may arrive first) it integrates it
      around the hole, and the document no longer encodes to what it holds (a snapshot or a
      replay of the log reads back other text). So such a run is taken only if its first
      struct names its own client's previous clock, which cannot arrive before the hole is
      filled. The runs of the update that continue the document count as held.
    - A run that the document holds in part is split where the document's part ends; between
      the two UTF-16 halves of a character yrs does not split the same way when it applies
      updates one by one as when it replays them together. The same holds for an origin,
      a right origin or a deleted range that cuts a character in two.
    """
    for cut in ids.cuts:
        if cut in mid_character or cut in ids.mid_character:
            return Misfit(f"the update cuts a character of client {cut[0]} in two at clock {cut[1]}")
    held = dict(clocks)
    for run in ids.runs:
        have = clocks.get(run.client, 0)
        if run.start < have < run.end and (run.client, have) in ids.mid_character:
            return Misfit(f"structs of client {run.client} split a character at clock {have}, where the document's part of them ends")
        if run.start <= held.get(run.client, 0) < run.end:
            held[run.client] = run.end
    for run in ids.runs:
        have = held.get(run.client, 0)
        if run.start > have and (run.client, run.start - 1) not in run.needs:
            return Misfit(f"structs of client {run.client} start at clock {run.start}, past its {have} known here", ahead=True)
    return None
