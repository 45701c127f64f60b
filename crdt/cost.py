"""What an update costs the document it is applied to, measured without touching that document.

Applying an update to an empty document costs little whatever it holds, but each struct or
deleted range that lands inside a live item makes yrs split that item (copying the item's
tail), so the same bytes can cost a thousand times more against a real document: 0.5 MB of
deletions took 7 ms against an empty document and 1.1-2.4 s against one 300,000-character item.
`apply_cpu_s` times an update against a copy of the real state; `struct_groups` reads how many
clients' structs it carries. A deletion of items a document does not hold yet waits in it and is
applied, at its full cost, with whichever later update brings them, where no timing of that
later update against the document's state sees it coming: `deletion_reach` says how far an
update's deletions reach beyond its own structs, for the server to compare with the document.
Pure: imports only pycrdt and `crdt`; no I/O, no asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pycrdt import Decoder, Encoder, get_state, get_update, merge_updates, write_var_uint

from crdt.clock import decode_state_vector, delete_set_clock
from crdt.document import Document
from crdt.ids import check_ids

# Struct kinds (`Ids.kinds` bits) whose bytes hold nothing yrs parses beyond what `check_ids`
# reads: GC, deleted and string. Types (whose type refs yrs extends beyond Yjs's), JSON, `any`,
# binary, embed, format and subdocument content, and skip structs, are left to yrs.
PLAIN_KINDS = (1 << 0) | (1 << 1) | (1 << 4)

_MAX_CLOCK = 2**32 - 1  # yrs clocks are u32: a state vector entry covering all of a client
_MAX_CLOCK_VARINT = write_var_uint(_MAX_CLOCK)


def struct_groups(update: bytes) -> int:
    """The update's count of struct groups: a v1 update starts with it, and Yjs and yrs write
    one group per client, so it bounds the distinct client ids whose structs the update carries
    (each a new entry of the document's state vector). Raises for an update without one."""
    return Decoder(update).read_var_uint()


def plain_measures(update: bytes) -> tuple[int, dict[int, int]] | None:
    """`(struct_groups(update), deletion_reach(update))` read in Python alone, for a well-formed
    update of plain structs (`PLAIN_KINDS`) with one run of structs per group and no client
    twice; None for any other update, whose measures take yrs. Linear in the update's size
    (`check_ids`); a keystroke's update takes about 10 us."""
    try:
        ids = check_ids(update)
    except ValueError:
        return None
    if ids.kinds & ~PLAIN_KINDS:
        return None
    own_end = {run.client: run.end for run in ids.runs}
    if len(ids.runs) != ids.groups or len(own_end) != ids.groups:
        return None  # a group without structs, or a client in two groups
    reach = {client: end for client, end in ids.deletes.items() if client not in own_end or end > own_end[client]}
    return ids.groups, reach


def apply_cpu_s(state: bytes, update: bytes) -> float:
    """CPU seconds `Document.apply` (what a room runs on its event loop) takes to apply `update`
    to a fresh document holding `state` (the room's `encode_state()`). Thread CPU time, not
    wall time: the figure does not grow when the host is busy. The document's observers and
    clock bookkeeping are included: for a replacement of a fragmented document's whole text
    they cost 3-4 times yrs's own work. Raises `CorruptUpdate` as `Document.apply` does."""
    document = Document.from_state(state)
    start = time.thread_time()
    document.apply(update)
    return time.thread_time() - start


def deletion_reach(update: bytes) -> dict[int, int]:
    """`{client: clock}` for each client whose items the update deletes beyond the structs it
    carries itself: the end of its deletions (exclusive), which a document must have reached
    for none of them to wait. Linear in the update's size once per client of its structs (the
    work is pycrdt's: dropping structs by state vector, merging, reading states).

    The delete set follows the structs section, which cannot be skipped without decoding every
    struct, so the structs are dropped instead: clients whose structs start at clock 0 are
    known from `get_state` (when there are several); each other client is the first group
    left after dropping those known so far (a one-client update: one pycrdt call). A client's own end clock is its `get_state` once a GC struct fills its clocks
    below its first struct. Raises ValueError when the update repeats a client's group."""
    groups = struct_groups(update)
    # Most updates carry one client's structs: its group is the first, read from the header.
    known = decode_state_vector(get_state(update)) if groups > 1 else {}
    covered = dict.fromkeys(known, _MAX_CLOCK)
    starts = dict.fromkeys(known, 0)
    for _ in range(groups + 1):
        rest = get_update(update, _covering(covered))
        head = Decoder(rest)
        if head.read_var_uint() == 0:  # no structs left: the rest is the delete set
            break
        head.read_var_uint()  # structs in the group
        client, start = head.read_var_uint(), head.read_var_uint()
        if client in covered:
            raise ValueError(f"client {client} has two struct groups")
        covered[client] = _MAX_CLOCK
        starts[client] = start
    else:
        raise ValueError("structs left after dropping every struct group")
    if rest[1:] == b"\x00":  # no deletions: most updates
        return {}
    reach = delete_set_clock(rest[1:]).clocks
    beyond = {}
    for client, end in reach.items():
        if client not in starts or end > _own_end(update, client, starts[client], covered):
            beyond[client] = end
    return beyond


def _covering(clients: Iterable[int]) -> bytes:
    """A state vector holding every clock of `clients` (`encode_state_vector` without sorting
    or checks: this runs for every update)."""
    entries = [write_var_uint(client) + _MAX_CLOCK_VARINT for client in clients]
    return write_var_uint(len(entries)) + b"".join(entries)


def _own_end(update: bytes, client: int, start: int, covered: dict[int, int]) -> int:
    """The end clock of `client`'s structs in `update`, whose first struct is at `start`."""
    own = get_update(update, _covering(c for c in covered if c != client))
    if start:
        filler = Encoder()
        for value in (1, 1, client, 0, 0, start, 0):  # one GC struct of clocks 0..start; no deletions
            filler.write_var_uint(value)
        own = merge_updates(filler.to_bytes(), own)
    return decode_state_vector(get_state(own)).get(client, 0)
