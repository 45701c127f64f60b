"""Updates that restate clocks a document already holds, and where they may not.

yrs (and Yjs) skip the ids of an update that the document holds. When one item of the update
straddles the document's clock for its client (it starts below it and ends past it), the
integrated remainder takes the held item at the clock just below as its left origin, and keeps
the right origin the update gave it. An honest update says of that held id what the document
holds, so the pair is consistent. An update that re-uses a client's clocks with other structs
(a forged or colliding client id) may pair a held left origin with a right origin that lies to
its left: then where the remainder lands depends on how the document's items happen to be
split or merged, which differs between applying updates one by one (the room) and replaying
them in one transaction (the log's replay), and between clients. `straddle_misfit` refuses
such an update; the held id is read from the document's own encoding of it (a diff), so the
check costs a diff, and only for an update with an item straddling the document's clock.

Between an update and one the document keeps pending (it waits for other structs) it is
stricter: yrs merges the two when it next applies one, and which version of a shared id
survives depends on how the applies are grouped, so `waiting_misfit` asks both to say the same
of every id they share. Items entirely below the document's clock are skipped the same way on
every path, so a whole duplicate (a resend) is not read back. Pure: standard library and
`crdt.ids`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from crdt.ids import Ids, MalformedUpdate, Run, _count, _read_id, _skip_bytes, _skip_content, _uint


class Item(NamedTuple):
    """What an update says of one id `(client, clock)`: the item holding it starts at `start`
    and ends at `end` (exclusive); `origin` is the id's left origin (the previous id of the
    item inside it), `right` the item's right origin, `parent` its parent when the id carries
    it (an item's first id without origins: `("root", name)` or `("item", id)`), `unit` its
    UTF-16 code unit (two bytes, little-endian) when the item is a string (None for other
    content, or deleted)."""

    start: int
    end: int
    origin: tuple[int, int] | None
    right: tuple[int, int] | None
    parent: tuple[str, object] | None
    unit: bytes | None


def _items(update: bytes, client: int) -> Iterator[tuple[Item, bytes | None]]:
    """The items of `client` in `update`, each as said of its first id, with its string content
    as UTF-16-LE bytes (None if it is not a string); GC and skip structs hold no placement and
    are left out. Reads the v1 layout as `crdt.ids.check_ids` does; raises `MalformedUpdate`
    on bytes that do not follow it."""
    data = update
    groups, pos = _count(data, 0)
    for _ in range(groups):
        structs, pos = _count(data, pos)
        group_client, pos = _uint(data, pos)
        start, pos = _uint(data, pos)
        for _ in range(structs):
            if pos >= len(data):
                raise MalformedUpdate("truncated update")
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            origin = right = parent = raw = None
            if ref in (0, 10):  # GC, skip: a length
                length, pos = _uint(data, pos)
            else:
                if info & 0x80:
                    origin, pos = _read_id(data, pos)
                if info & 0x40:
                    right, pos = _read_id(data, pos)
                if not info & 0xC0:
                    parent_info, pos = _uint(data, pos)
                    if parent_info == 1:
                        n, pos = _skip_bytes(data, pos)
                        parent = ("root", data[pos - n : pos].decode("utf-8", "replace"))
                    else:
                        parent_id, pos = _read_id(data, pos)
                        parent = ("item", parent_id)
                    if info & 0x20:  # its key in a map parent
                        at = pos
                        pos = _skip_bytes(data, pos)[1]
                        parent = (parent[0], (parent[1], data[at:pos]))
                if ref == 4:
                    n, pos = _skip_bytes(data, pos)
                    raw = data[pos - n : pos].decode("utf-8", "replace").encode("utf-16-le")
                    length = len(raw) // 2
                else:
                    length, pos = _skip_content(data, pos, ref)
            if group_client == client and ref not in (0, 10):
                yield Item(start, start + length, origin, right, parent, None), raw
            start += length


def _said(item: Item, raw: bytes | None, client: int, clock: int) -> Item:
    """`item` (of `client`) as said of its id at `clock`: inside it, the left origin is the
    id before and the parent goes without saying."""
    offset = clock - item.start
    unit = raw[2 * offset : 2 * offset + 2] if raw is not None else None
    if offset:
        return item._replace(origin=(client, clock - 1), parent=None, unit=unit)
    return item._replace(unit=unit)


def item_at(update: bytes, client: int, clock: int) -> Item | None:
    """What `update` says of id `(client, clock)`, or None if no item of it holds that id."""
    for item, raw in _items(update, client):
        if item.start <= clock < item.end:
            return _said(item, raw, client, clock)
    return None


def straddle_misfit(
    update: bytes, ids: Ids, clocks: Mapping[int, int], held: Callable[[int, int], bytes]
) -> str | None:
    """Why the document at `clocks` (its state vector) cannot take `update` as its replay
    would, or None: an item of the update straddles the document's clock `have` for its client
    and says of id `have - 1` other than the document does (left origin, right origin, parent,
    or a different character where both hold text). `held(client, clock)` is the document's
    encoding of its items of `client` from `clock` on (a diff)."""
    for run in ids.runs:
        have = clocks.get(run.client, 0)
        if not run.start < have < run.end:
            continue
        said = item_at(update, run.client, have - 1)
        if said is None or said.end <= have:
            continue  # the remainder starts an item of its own: it names its own origins
        holds = item_at(held(run.client, have - 1), run.client, have - 1)
        if holds is None or _differs(said, holds):
            return (
                f"structs of client {run.client} restate clock {have - 1}, which the document "
                "holds, otherwise than it holds it"
            )
    return None


def waiting_misfit(update: bytes, ids: Ids, waiting: Iterable[tuple[Run, bytes]]) -> str | None:
    """Why `update` and a run the document keeps pending (`waiting`: the run and its update)
    cannot both be taken as the log's replay takes them, or None: they share ids of a client
    and say different things of one of them. yrs merges a pending update with the next one
    it applies, and which of two versions of an id survives, and where the later of the two
    resumes, then depends on the order and grouping of the applies."""
    for run in ids.runs:
        for other, other_update in waiting:
            low, high = max(run.start, other.start), min(run.end, other.end)
            if other.client != run.client or low >= high:
                continue
            clock = _first_difference(
                [*_items(update, run.client)], [*_items(other_update, run.client)], run.client, low, high
            )
            if clock is not None:
                return (
                    f"structs of client {run.client} say of clock {clock} otherwise than an "
                    "update the document keeps pending"
                )
    return None


def _first_difference(
    ours: list[tuple[Item, bytes | None]], theirs: list[tuple[Item, bytes | None]], client: int, low: int, high: int
) -> int | None:
    """The first clock from `low` to `high` (exclusive) held by items of both lists (each in
    clock order) that they say different things of, or None. Walks the items, not the clocks
    (an item of deleted content may span two billion of them): inside both items only the
    characters can differ."""
    i = j = 0
    while i < len(ours) and j < len(theirs):
        (a, a_raw), (b, b_raw) = ours[i], theirs[j]
        lo, hi = max(a.start, b.start, low), min(a.end, b.end, high)
        if lo < hi:
            if _differs(_said(a, a_raw, client, lo), _said(b, b_raw, client, lo)):
                return lo
            if a_raw is not None and b_raw is not None:
                a_units = a_raw[2 * (lo - a.start) : 2 * (hi - a.start)]
                b_units = b_raw[2 * (lo - b.start) : 2 * (hi - b.start)]
                if a_units != b_units:
                    return lo + next(k for k in range(0, len(a_units), 2) if a_units[k : k + 2] != b_units[k : k + 2]) // 2
        if a.end <= b.end:
            i += 1
        else:
            j += 1
    return None


def _differs(said: Item, holds: Item) -> bool:
    """Whether two accounts of one id disagree; a parent or character one of them does not
    carry (inside an item; deleted content) counts as agreeing."""
    if (said.origin, said.right) != (holds.origin, holds.right):
        return True
    if said.parent is not None and holds.parent is not None and said.parent != holds.parent:
        return True
    return said.unit is not None and holds.unit is not None and said.unit != holds.unit
