"""Replay: rebuild a document from the operation log (optionally on top of a snapshot), compare
two rebuilds, and attribute the text to the agents that wrote it.

Pure functions over iterables of `Operation` rows; the store feeds them, in `seq` order. Imports
only pycrdt (through `crdt.document`), the other `crdt` modules and the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from crdt.clock import VectorClock
from crdt.document import Document
from crdt.operations import Operation, Origin, Snapshot

_EMBED = b"\xff"
"""Placeholder for an embed in blame runs: one offset unit in pycrdt, absent from the text, and
a byte that never occurs in UTF-8, so it can be dropped without touching real text."""

DEFAULT_BATCH_OPS = 1000
"""Updates applied per pycrdt transaction by `rebuild` (bounded so one commit stays small)."""


class ReplayError(ValueError):
    """The log cannot be replayed as asked: out of order, a gap in `seq`, mixed documents,
    a bound that lies before the snapshot, or `until_time` with rows lacking `created_at`."""


@dataclass(frozen=True, slots=True)
class Span:
    """A run of the current text and the agent that inserted it (None: before the history
    given to `blame`, i.e. inside the snapshot it started from)."""

    text: str
    agent_id: str | None


@dataclass(frozen=True, slots=True)
class Verification:
    """Outcome of `verify`; truthy when both documents agree."""

    text_equal: bool
    state_vector_equal: bool

    @property
    def ok(self) -> bool:
        return self.text_equal and self.state_vector_equal

    def __bool__(self) -> bool:
        return self.ok


def rebuild(
    operations: Iterable[Operation],
    snapshot: Snapshot | None = None,
    *,
    until_seq: int | None = None,
    until_time: datetime | None = None,
    until_clock: VectorClock | bytes | None = None,
    batch_ops: int = DEFAULT_BATCH_OPS,
) -> Document:
    """Rebuild the document: the snapshot's state, then every operation after it, in order.

    `operations` must be in ascending `seq` order; rows at or below the snapshot's seq are
    skipped, so the store may pass either the tail or the whole log. The rows after the
    snapshot must be contiguous (snapshot.seq + 1, +2, ...); a gap raises `ReplayError`
    rather than silently producing a different document.

    Bounds (combinable; an operation is applied only if it passes all of them):
    - `until_seq`: operations with `seq <= until_seq` (past the end of the log: all of it).
      Must not be below the snapshot's seq.
    - `until_time`: the log prefix whose `created_at <= until_time`, stopping at the first row
      past it (timestamps from several nodes may interleave; a prefix is a state that really
      existed, a filter might not be).
    - `until_clock`: exactly the operations whose `vector_clock` (their own clock) is dominated
      by the clock: for a state vector the document really had, the operations whose structs it
      holds. A state vector records insertions only, so deletions are placed by the items they delete:
      a deletion is included once the clock covers what it deleted, even if it happened later.
      Use `until_seq`/`until_time` for exact time travel. With a snapshot, the snapshot's state
      vector must itself be dominated by the clock.

    Cost: linear in the number and size of operations (updates are applied `batch_ops` per
    pycrdt transaction; `pycrdt.merge_updates` is deliberately not used, it is superlinear).
    Memory: the document plus one batch of updates. Stops reading `operations` at the first
    row past `until_seq`/`until_time`.
    """
    if batch_ops < 1:
        raise ValueError("batch_ops must be >= 1")
    clock = VectorClock.from_state_vector(until_clock) if isinstance(until_clock, bytes) else until_clock
    base_seq = snapshot.seq if snapshot is not None else 0
    if until_seq is not None and until_seq < base_seq:
        raise ReplayError(f"until_seq {until_seq} is before the snapshot at seq {base_seq}")
    if until_time is not None and snapshot is not None and snapshot.created_at is not None:
        if snapshot.created_at > until_time:
            raise ReplayError("until_time is before the snapshot was taken")
    document = Document.from_state(snapshot.state) if snapshot is not None else Document()
    if clock is not None and not clock.dominates(document.clock()):
        raise ReplayError("the snapshot holds operations the clock has not seen; replay from scratch")
    selected = _select(_checked(operations, snapshot), until_seq, until_time, clock)
    updates = (op.update for op in selected)
    while True:
        batch = list(islice(updates, batch_ops))
        if not batch:
            break
        document.apply_many(batch)
    return document


def verify(expected: Document | bytes, actual: Document | bytes) -> Verification:
    """Compare two documents (or encoded states): same text and same state vector.

    Linear in the document sizes (states are decoded into fresh documents).
    """
    a = expected if isinstance(expected, Document) else Document.from_state(expected)
    b = actual if isinstance(actual, Document) else Document.from_state(actual)
    return Verification(
        text_equal=a.text() == b.text(),
        state_vector_equal=a.clock() == b.clock(),  # decoded: byte order of entries may differ
    )


def blame(operations: Iterable[Operation], snapshot: Snapshot | None = None) -> list[Span]:
    """The current text split into spans, each with the agent whose operation inserted it.

    Replays the log one operation at a time and follows each update's text delta: inserted
    text belongs to that operation's `agent_id`; text from the snapshot has agent None. (pycrdt
    does not expose the Yjs item ids of the text, so item-level client ids cannot be read; a
    delta is what an operation visibly did. Text that was pending and surfaced with a later
    operation is credited to that later operation.) Adjacent spans of one agent are merged.

    Cost: each operation walks the spans up to its last change, so O(operations x spans) in the
    worst case; meant for one document on demand, not for the hot path. Same ordering rules
    and `ReplayError`s as `rebuild`.
    """
    document = Document.from_state(snapshot.state) if snapshot is not None else Document()
    runs: list[list[Any]] = []  # [utf-8 bytes, agent_id]; pycrdt deltas count UTF-8 bytes
    initial = b"".join(v.encode() if isinstance(v, str) else _EMBED for v, _ in document.chunks())
    if initial:
        runs.append([initial, None])
    for op in _checked(operations, snapshot):
        applied = document.apply(op.update, Origin.REPLAY, with_delta=True)
        if applied.delta:
            runs = _apply_delta(runs, applied.delta, op.agent_id)
    spans = (Span(chunk.replace(_EMBED, b"").decode(errors="replace"), agent) for chunk, agent in runs)
    return [span for span in spans if span.text]


# internals ---------------------------------------------------------------------------------


def _checked(operations: Iterable[Operation], snapshot: Snapshot | None) -> Iterator[Operation]:
    """Yield the operations after the snapshot, checking order, contiguity and document."""
    expected = (snapshot.seq if snapshot is not None else 0) + 1
    doc_id = snapshot.doc_id if snapshot is not None else None
    previous = 0
    for op in operations:
        if doc_id is None:
            doc_id = op.doc_id
        elif op.doc_id != doc_id:
            raise ReplayError(f"operation seq {op.seq} belongs to document {op.doc_id}, not {doc_id}")
        if op.seq <= previous:
            raise ReplayError(f"operations out of order: seq {op.seq} after {previous}")
        previous = op.seq
        if op.seq < expected:
            continue  # already inside the snapshot
        if op.seq != expected:
            raise ReplayError(f"gap in the log: expected seq {expected}, got {op.seq}")
        expected += 1
        yield op


def _select(
    operations: Iterator[Operation],
    until_seq: int | None,
    until_time: datetime | None,
    clock: VectorClock | None,
) -> Iterator[Operation]:
    for op in operations:
        if until_seq is not None and op.seq > until_seq:
            return
        if until_time is not None:
            if op.created_at is None:
                raise ReplayError(f"operation seq {op.seq} has no created_at; cannot bound by time")
            if op.created_at > until_time:
                return
        if clock is not None and not clock.dominates(op.clock):
            continue
        yield op


def _apply_delta(runs: list[list[Any]], delta: Iterable[dict[str, Any]], agent_id: str) -> list[list[Any]]:
    """Apply a Quill-style delta (UTF-8 byte offsets) to attributed runs; returns new runs."""
    out: list[list[Any]] = []
    i = 0  # index of the next unconsumed run
    head: list[Any] | None = None  # remainder of a split run, consumed before runs[i]

    def take(n: int, keep: bool) -> None:
        nonlocal i, head
        while n > 0:
            if head is None:
                if i >= len(runs):
                    raise ReplayError("text delta runs past the end of the text")
                head = runs[i]
                i += 1
            chunk, agent = head
            part = chunk[:n]
            if keep:
                _push(out, part, agent)
            n -= len(part)
            head = [chunk[len(part) :], agent] if len(part) < len(chunk) else None

    for item in delta:
        if "insert" in item:
            value = item["insert"]
            data = value.encode() if isinstance(value, str) else _EMBED
            _push(out, data, agent_id)
        elif "delete" in item:
            take(int(item["delete"]), keep=False)
        elif "retain" in item:
            take(int(item["retain"]), keep=True)
    if head is not None:
        _push(out, head[0], head[1])
    if i < len(runs):
        _push(out, runs[i][0], runs[i][1])  # may merge with the last changed run
        out.extend(runs[i + 1 :])  # untouched tail, shared: `_push` replaces runs, never edits
    return out


def _push(out: list[list[Any]], chunk: bytes, agent: str | None) -> None:
    """Append a run, merging with the last one when the agent matches (by replacing it, so
    runs shared with the previous list are never modified)."""
    if not chunk:
        return
    if out and out[-1][1] == agent:
        out[-1] = [out[-1][0] + chunk, agent]
    else:
        out.append([chunk, agent])
