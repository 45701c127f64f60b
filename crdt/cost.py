"""What an update costs the document it is applied to, measured without touching that document.

Applying an update to an empty document costs little whatever it holds, but each struct or
deleted range that lands inside a live item makes yrs split that item (copying the item's
tail), so the same bytes can cost a thousand times more against a real document: 0.5 MB of
deletions took 7 ms against an empty document and 1.1-2.4 s against one 300,000-character item.
`apply_cpu_s` times an update against a copy of the real state; `struct_groups` reads how many
clients' structs it carries. Pure: imports only pycrdt and `crdt.document`; no I/O, no asyncio.
"""

from __future__ import annotations

import time

from pycrdt import Decoder

from crdt.document import Document


def struct_groups(update: bytes) -> int:
    """The update's count of struct groups: a v1 update starts with it, and Yjs and yrs write
    one group per client, so it bounds the distinct client ids whose structs the update carries
    (each a new entry of the document's state vector). Raises for an update without one."""
    return Decoder(update).read_var_uint()


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
