"""An item placed between two others must find them in order.

An item names the id it goes right after (its origin) and the id it goes right before (its right
origin). In an honest update the origin comes before the right origin in the document. Any
client can name two ids the other way round (no forged id needed), and such an item has no
place that satisfies both: yrs puts it in one place, Yjs in another, and yrs differently again
depending on how the items around it are split, so the room, the log's replay, a snapshot and a
JS editor would disagree for good.

Document order is read through pycrdt's sticky indices: the count of visible characters before
an id. Two ids are told apart whenever either shows in the text or anything visible lies
between them. Two deleted ids with nothing visible between them tie; then the item decides once
applied: shown in the text, it must land strictly between them. An item that shows nothing
between two such ids cannot be checked and is refused (an honest editor sends one only when it
typed and deleted text, offline, between two characters someone else deleted meanwhile).

Cost: each id read is a walk in yrs from it to the text's start (about 15 ns per block left of
it). An item with both origins costs two, unless it continues an item found in order (typing
on: `Placed`); typing at the end of the text names no right origin and costs nothing.
Pure: pycrdt and `crdt.ids`.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import NamedTuple

from pycrdt import Doc, StickyIndex, Transaction

from crdt.ids import Between, Ids

_BEFORE = b"\x00"  # assoc 0: the position right before the id
_AFTER = b"\x41"  # assoc -1: right after it


def _held(id_: tuple[int, int], clocks: Mapping[int, int]) -> bool:
    return id_[1] < clocks.get(id_[0], 0)


def _varint(n: int) -> bytes:
    """lib0's unsigned varint (pycrdt's `write_var_uint`, without its cost for small numbers)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _index(txn: Transaction, id_: tuple[int, int], assoc: bytes) -> int:
    """Visible characters before `id_` (after it with `_AFTER`, when it shows). `id_` must be
    held: yrs panics on an id it lacks."""
    return StickyIndex.decode(b"\x00" + _varint(id_[0]) + _varint(id_[1]) + assoc).get_index(txn)


def _describe(item: Between) -> str:
    return (
        f"item ({item.client}, {item.clock}) goes after {item.origin} and before {item.right}"
    )


class Refusal(NamedTuple):
    """Why an update is refused; `missing`: it names an id the document lacks (one that catches
    up with the log may take it)."""

    reason: str
    missing: bool = False


Placed = dict[tuple[int, int], tuple[int, int]]
"""Last ids of items found in order, each with its right origin (see `_follows`)."""

MAX_PLACED = 256  # entries a document keeps in its `Placed`; it starts over beyond


def _last(item: Between) -> tuple[int, int]:
    return (item.client, item.clock + item.length - 1)


def _follows(item: Between, placed: Placed, this_update: Placed) -> bool:
    """Whether the item's origin is the last id of an item found in order before the same right
    origin: then origin < right already (typing on: each character goes after the one before
    and before the same right origin; a run of typing split by a deletion, as Yjs encodes it)."""
    return (this_update.get(item.origin) or placed.get(item.origin)) == item.right


def note_placed(items: list[Between], placed: Placed) -> None:
    """Remember items an update added, found in order (bounded: `MAX_PLACED`). Never the ids an
    update restates: yrs skipped those, whatever right origin the update gave them."""
    items = items[-MAX_PLACED:]
    if len(placed) + len(items) > MAX_PLACED:
        placed.clear()
    for item in items:
        placed[_last(item)] = item.right


def _order(txn: Transaction, item: Between, shown_between: bool = False) -> str:
    """Whether the item's origin comes before its right origin: "ordered", "inverted", or "tie"
    (two deleted ids with nothing shown between them). With `shown_between` (the item is
    applied and shows in the text), nothing less than a shown character between them is
    "ordered"."""
    if item.origin == item.right:
        return "inverted"  # after an id and before the same one
    before_origin = _index(txn, item.origin, _BEFORE)
    before_right = _index(txn, item.right, _BEFORE)
    if before_origin < before_right:
        return "ordered"
    if before_origin > before_right or shown_between:
        return "inverted"
    # Equal counts of two ids: the origin is deleted. A right origin that shows comes after it.
    return "ordered" if _index(txn, item.right, _AFTER) > before_right else "tie"


def check_before(doc: Doc, ids: Ids, clocks: Mapping[int, int], placed: Placed) -> tuple[Refusal | None, list[Between]]:
    """Before applying: why the update places an item out of order in `doc` at `clocks` (its
    state vector), or None, and the items to check once applied (`check_after`). `placed`:
    items found in order before (`note_placed` adds this update's once it is taken)."""
    later: list[Between] = []
    walk: list[Between] = []  # both ids held: their order is read in one transaction below
    this_update: Placed = {}
    own: dict[int, list[tuple[int, int]]] | None = None  # the update's own clocks, once needed
    for item in ids.between:
        if _held((item.client, item.clock), clocks):
            continue  # held already: yrs skips it (a resend)
        follows = _follows(item, placed, this_update)
        this_update[_last(item)] = item.right  # found in order below, or the update is refused
        if follows:
            continue
        if _held(item.origin, clocks) and _held(item.right, clocks):
            walk.append(item)
            continue
        own = own if own is not None else _own_clocks(ids)
        if not all(_held(id_, clocks) or _within(id_, own) for id_ in (item.origin, item.right)):
            return Refusal(f"{_describe(item)}, and the document lacks one of them", missing=True), []
        later.append(item)  # named in this update: checked once applied
    if walk:
        with doc.transaction() as txn:
            for item in walk:
                order = _order(txn, item)
                if order == "inverted" or (order == "tie" and not item.visible):
                    return Refusal(_why(item, order)), []
                if order == "tie":
                    later.append(item)  # once applied it shows between them, if they are in order
    return None, later


def check_after(doc: Doc, later: list[Between], clocks: Mapping[int, int]) -> str | None:
    """Once applied, at `clocks`: why one of `later` (from `check_before`) is out of order."""
    for item in later:
        if not _held((item.client, item.clock), clocks):
            return f"{_describe(item)}, and could not be placed"
    with doc.transaction() as txn:
        for item in later:
            order = _order(txn, item, shown_between=item.visible)
            if order != "ordered":
                return _why(item, order)
    return None


def _why(item: Between, order: str) -> str:
    if order == "inverted":
        return f"{_describe(item)}, which comes first"
    return f"{_describe(item)}, deleted items whose order cannot be checked"


def _own_clocks(ids: Ids) -> dict[int, list[tuple[int, int]]]:
    """Per client, the `(start, end)` clocks of the update's runs, sorted."""
    own: dict[int, list[tuple[int, int]]] = {}
    for run in ids.runs:
        own.setdefault(run.client, []).append((run.start, run.end))
    for runs in own.values():
        runs.sort()
    return own


def _within(id_: tuple[int, int], own: Mapping[int, list[tuple[int, int]]]) -> bool:
    """Whether the update's own structs (`_own_clocks`) hold `id_`."""
    runs = own.get(id_[0], ())
    at = bisect.bisect_right(runs, (id_[1], float("inf"))) - 1
    return at >= 0 and runs[at][0] <= id_[1] < runs[at][1]
