"""The document model: one pycrdt `Doc` whose shared root is the Y.Text named `CONTENT`.

Owns applying updates (validation by application), state vectors, diffs and full-state
encoding. Every Tandem content type (text, markdown, code, json, yaml) is stored as that text.
Pure: imports only pycrdt, the other `crdt` modules and the standard library; no
asyncio, no I/O. Not thread-safe: one thread at a time per `Document` (pycrdt allows the
thread to change between calls, so the server may run `apply` in a worker thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pycrdt import Doc, Text

from crdt.applied import Applied, _applied
from crdt.capture import EMPTY_DELETE_SET, EMPTY_STATE_VECTOR, Capture
from crdt.clock import (
    CorruptStateVector,
    StateVectorReader,
    VectorClock,
    decode_state_vector,
    delete_set_clock,
    encode_state_vector,
)
from crdt.ids import Between, Ids, MalformedUpdate, Run, check_header, check_ids, misfit
from crdt.operations import Origin, classify
from crdt.order import Placed, check_after, check_before, note_placed
from crdt.overlap import straddle_misfit, waiting_misfit

CONTENT = "content"
"""Name of the shared Y.Text root; y-websocket editors and agents must use the same name."""



class CorruptUpdate(ValueError):
    """The bytes are not a Yjs v1 update (garbage, truncated, empty). The document is unchanged."""


class UpdateTooLarge(ValueError):
    """The update exceeds the document's `max_update_bytes`; it was not decoded at all."""


class DocumentPanicked(CorruptUpdate):
    """yrs panicked, or gave up midway, applying the update. The document may hold part of
    it: rebuild it from the log before using it again. Whether the update is at fault is unknown (a document
    that already diverged from the log panics on honest updates too)."""

    update_at_fault = False


class UpdateAhead(CorruptUpdate):
    """The update's structs start past the clocks the document holds for their client: its
    writer has edits the server has not seen (Yjs would keep it waiting for them; yrs cannot
    hold it exactly). The document is unchanged; once the writer sends what it lacks, it fits."""


class OriginsMissing(CorruptUpdate):
    """The update places an item between two ids and the document lacks one of them, so their
    order cannot be checked (`crdt.order`). The document is unchanged; one that catches up with
    the log may take it."""


class ItemOutOfOrder(DocumentPanicked):
    """Applied, the update placed an item outside the two ids it names (`crdt.order`): the
    document holds it, so rebuild it from the log, and refuse the update (it is at fault)."""

    update_at_fault = True


def _is_panic(exc: BaseException) -> bool:
    # pyo3 turns a Rust panic into pyo3_runtime.PanicException, a BaseException subclass that
    # cannot be imported by name. A panic inside yrs must not kill the caller's thread.
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"


class Document:
    """A collaborative text document backed by a pycrdt `Doc`.

    Memory: pycrdt keeps every struct ever inserted (deleted text is tombstoned, its content
    garbage-collected) plus one state-vector entry per client id ever seen, so memory grows with
    the history, not just with the visible text (100,000 small edits: ~82 KB of text, 1.3 MB
    encoded state). CPU: yrs places structs by their origin ids without walking the text, but
    `apply` reads the position of both origins of an item placed between two ids
    (`crdt.order`: a walk from each to the text's start, unless the item continues one found
    in order); it adds observer and clock bookkeeping (bench/bench_apply.py on a
    shared 2-core machine: about 25-35 us per small update with 5 clients and 40-60 us with
    100, versus 5-8 us for a bare pycrdt apply); `state_vector` is linear in the number of
    clients; `encode_state` and `diff` are linear in the document.

    Hostile input: yrs decodes the whole update before integrating anything, so a failing
    `apply` leaves the document unchanged (the tests check garbage, every truncation of valid
    updates, and mutations). yrs does trust the leading struct-group count and sizes a table
    from it (4 random bytes cost 0.3 s, 20 crafted ones 512 MB), so `crdt.ids.check_header` rejects
    counts that cannot fit before yrs sees them. Other crafted inputs may still cost CPU, so the
    server should run `apply` on client input off the event loop and set `max_update_bytes`.
    yrs counts clocks in 32 bits where Yjs has 53: `crdt.ids.check_ids` refuses clocks above
    2**31 before yrs sees them (one past 2**32 - 1 wraps, and yrs then applies an update while
    reporting no change, and panics on later honest ones), and structs that skip clocks of their
    own client (Yjs would hold them pending; yrs may integrate them around a hole that its
    encoding does not reproduce). It costs about 1 us per struct. An item placed between two ids
    that are out of order is refused (`crdt.order`), before it is applied when their order
    shows, or after (`ItemOutOfOrder`: rebuild the document from the log) when only the item
    itself can show it.
    A Rust panic inside yrs becomes `DocumentPanicked`; after one the document state is unknown
    and the caller should rebuild it from the log.
    """

    def __init__(self, *, client_id: int | None = None, max_update_bytes: int | None = None) -> None:
        """`client_id` only matters for edits made on this document (origin SERVER).
        `max_update_bytes` (None: unlimited) is checked before any decoding."""
        self._doc: Doc = Doc(client_id=client_id)
        self._text = Text()
        self._doc[CONTENT] = self._text
        self.max_update_bytes = max_update_bytes
        self._reader = StateVectorReader()  # the last state vector `apply` decoded
        self._capture = Capture()
        # Raw (_pycrdt) subscriptions: pycrdt's wrapped events eagerly convert target, path and
        # transaction, and compute the delta, for every event; we read only what we need.
        # `Doc._doc` (the native document) is private: tests/test_pycrdt_contract.py holds it.
        self._subscriptions = (
            self._doc._doc.observe(self._capture.on_transaction),
            self._text.integrated.observe(self._capture.on_text),
        )
        self._length = 0  # text length in UTF-8 bytes; the text changes only through apply*
        # Ids between the two UTF-16 halves of the characters past U+FFFF it was given (as
        # `crdt.ids.Ids.mid_character`): an update cutting there is refused (`_check_ids`).
        self._mid_character: set[tuple[int, int]] = set()
        # Ids of structs and deletions it was given that wait for others (`pending`).
        self._waiting: list[tuple[int, int]] = []
        # ... and their runs of structs, with the update holding each (`crdt.overlap`).
        self._waiting_runs: list[tuple[Run, bytes]] = []
        # Items found in order, which the next ones may continue (`crdt.order.Placed`).
        self._placed: Placed = {}

    @classmethod
    def from_state(cls, state: bytes, **kwargs: Any) -> Document:
        """A document holding `state` (from `encode_state`, or any update). Raises `CorruptUpdate`.

        Loads through `apply_many` (no observers, no pending check): about the cost of a bare
        pycrdt apply, roughly 0.15 s for a 1.3 MB state of 100,000 edits. `max_update_bytes`
        (in `kwargs`) limits later updates, not this state.
        """
        max_update_bytes = kwargs.pop("max_update_bytes", None)
        document = cls(**kwargs)
        document.apply_many((state,))
        document.max_update_bytes = max_update_bytes
        return document

    # applying ------------------------------------------------------------------------------

    def apply(self, update: bytes, origin: Origin = Origin.CLIENT, *, with_delta: bool = False) -> Applied:
        """Apply one update and report what it did.

        Raises `UpdateTooLarge` before decoding if the update exceeds `max_update_bytes`, and
        `CorruptUpdate` if the bytes are not an update, name clocks above 2**31, or skip clocks
        of a client (`_check_ids`); in both cases the document is unchanged.
        `DocumentPanicked` (a `CorruptUpdate`) says yrs panicked: the document may have changed.

        Cost: yrs integration, the encoded state vector after it, and decoding what changed in
        that vector: usually one clock, so a few microseconds, but a full decode (about 1 ms
        per 1,000 clients the document has seen) when a client is new, a clock varint grows, or
        several clients advance at once (see `crdt.clock.StateVectorReader`). The text delta
        costs a walk over the whole text (about 25 us per 1,000 items), so it is computed only
        when `with_delta` is set (blame) or when the text changed without changing length
        (needed to tell a reformat from a replacement); in other cases `Applied.delta` is None.
        The bulk path (`apply_many`) pays for none of this: the observers ignore it.
        """
        update = bytes(update)
        self._check_size(update)
        if not update:
            raise CorruptUpdate("empty update")
        ids = self._check_ids(update)
        # Updates from the log (another node's, in seq order) were checked where they were taken.
        unplaced, fresh = self._check_order(ids) if ids.between and origin is not Origin.FANOUT else ((), ())
        capture = self._capture
        length_before = self._length
        capture.start(with_delta, length_before)
        try:
            self._apply_native(update)
        except BaseException:
            capture.in_sync = False  # after a panic the document may have changed anyway
            raise
        finally:
            capture.active = False
        if ids.mid_character:
            self._mid_character |= ids.mid_character

        reader = self._reader
        if capture.fired:
            state_vector = capture.after
            if not capture.in_sync:
                reader.read(capture.before)
            capture.in_sync = False  # until the reader holds `after`
            advanced = reader.read(capture.after)  # compared decoded: entry order may vary
            structs_added = bool(advanced)
            deleted = capture.delete_set != EMPTY_DELETE_SET
            if deleted:
                for client, clock in delete_set_clock(capture.delete_set).clocks.items():
                    if clock > advanced.get(client, 0):
                        advanced[client] = clock
        else:
            state_vector = self.state_vector()
            reader.read(state_vector)
            structs_added = deleted = False
            advanced = {}
        capture.in_sync = True
        if unplaced:
            reason = check_after(self._doc, unplaced, reader.clocks)
            if reason is not None:
                raise ItemOutOfOrder(reason)
        if fresh:
            note_placed(fresh, self._placed)
        # Structs of `update` that the document still lacks after applying it are pending (its
        # runs cannot leave a hole: `_check_ids`), and so are deletions of items it lacks: yrs
        # keeps both and applies them once what they need arrives. Read from the update's ids,
        # not by yrs diffing it against the whole state vector (linear in the clients).
        clocks = reader.clocks
        waiting = [(run.client, run.end) for run in ids.runs if run.end > clocks.get(run.client, 0)]
        waiting += [(client, end) for client, end in ids.deletes.items() if end > clocks.get(client, 0)]
        pending = bool(waiting)
        if waiting:
            self._waiting += waiting
            self._waiting_runs += [(run, update) for run in ids.runs if run.end > clocks.get(run.client, 0)]
        delta = None if capture.delta is None else tuple(capture.delta)
        if with_delta and delta is None:
            delta = ()  # the text did not change
        length_after = length_before if capture.length_after is None else capture.length_after
        self._length = length_after
        return _applied(
            update=update,
            origin=origin,
            changed=capture.fired,
            pending=pending,
            op_type=classify(
                delta,
                structs_added=structs_added,
                deleted=deleted,
                length_change=length_after - length_before,
            ),
            state_vector=state_vector,
            clocks=reader.clocks,
            op_clocks=advanced,
            delta=delta,
            _clock_json=reader.json,
        )

    def apply_many(self, updates: Iterable[bytes]) -> int:
        """Apply updates in order inside one transaction, without reporting; returns the count.

        The replay path: linear in the total update size (one commit, no per-update events).
        Unlike `apply`, a `CorruptUpdate` here leaves the updates before the bad one applied;
        its message names the failing index. Use it for updates that were validated before: it
        checks nothing `crdt.ids` checks, only notes the characters past U+FFFF they write
        (about 1 us per struct), which `apply` keeps later updates from cutting in two.
        """
        count = 0
        with self._doc.transaction():
            for count, update in enumerate(updates, start=1):
                update = bytes(update)
                self._check_size(update)
                try:
                    ids = check_ids(update)
                except ValueError:
                    pass  # stored before these checks existed: yrs alone decides
                else:
                    self._mid_character |= ids.mid_character
                    self._waiting += [(run.client, run.end) for run in ids.runs]
                    self._waiting_runs += [(run, update) for run in ids.runs]
                    self._waiting += ids.deletes.items()
                try:
                    self._apply_raw(update)
                except CorruptUpdate as exc:
                    self._length = len(self._text)
                    raise CorruptUpdate(f"update #{count}: {exc}") from exc
        self._length = len(self._text)
        self.pending()  # keep only what still waits
        return count

    def pending(self) -> bool:
        """Whether structs or deletions it was given still wait for others (`Applied.pending`).
        yrs keeps them, but `encode_state` leaves them out: a snapshot taken now would lose
        them. Linear in the number of such ids (none, in a document whose updates all arrived)."""
        if self._waiting:
            clocks = decode_state_vector(self.state_vector())
            self._waiting = [(client, end) for client, end in self._waiting if end > clocks.get(client, 0)]
            self._prune_waiting_runs(clocks)
        return bool(self._waiting)

    def _prune_waiting_runs(self, clocks: Mapping[int, int]) -> None:
        """Drop the waiting runs the document now holds (and their updates' bytes)."""
        self._waiting_runs = [(run, u) for run, u in self._waiting_runs if run.end > clocks.get(run.client, 0)]

    def _check_size(self, update: bytes) -> None:
        if self.max_update_bytes is not None and len(update) > self.max_update_bytes:
            raise UpdateTooLarge(f"update of {len(update)} bytes exceeds {self.max_update_bytes}")

    def _check_ids(self, update: bytes) -> Ids:
        """Refuse what yrs would read otherwise than Yjs, or hold otherwise than its own replay
        (`crdt.ids`): clocks above 2**31, structs that skip clocks of their client, structs
        the document holds in part when the part ends inside a character, and items that go on
        past the clocks it holds while saying of them otherwise (`crdt.overlap`). Returns what it
        read. Only `apply` checks this; `apply_many` replays updates that
        passed it."""
        try:
            ids = check_ids(update)
        except ValueError as exc:
            raise CorruptUpdate(str(exc)) from exc
        if ids.runs or ids.cuts:
            clocks = self._reader.clocks if self._capture.in_sync else decode_state_vector(self.state_vector())
            found = misfit(ids, clocks, self._mid_character)
            if found is not None:
                raise (UpdateAhead if found.ahead else CorruptUpdate)(found.reason)
            reason = straddle_misfit(
                update, ids, clocks, lambda client, clock: self.diff(encode_state_vector({**clocks, client: clock}))
            )
            if reason is None and self._waiting_runs:
                self._prune_waiting_runs(clocks)
                reason = waiting_misfit(update, ids, self._waiting_runs)
            if reason is not None:
                raise CorruptUpdate(reason)
        return ids

    def _check_order(self, ids: Ids) -> tuple[list[Between], list[Between]]:
        """Refuse an item placed between two ids that are out of order (`crdt.order`); returns
        the items that can only be checked once applied, and the items the document lacks."""
        clocks = self._reader.clocks if self._capture.in_sync else decode_state_vector(self.state_vector())
        fresh = [b for b in ids.between if b.clock >= clocks.get(b.client, 0)]
        refusal, later = check_before(self._doc, ids, clocks, self._placed)
        if refusal is not None:
            raise (OriginsMissing if refusal.missing else CorruptUpdate)(refusal.reason)
        return later, fresh

    def _apply_native(self, update: bytes) -> None:
        """`_apply_raw` in a transaction of its own on pycrdt's native document: pycrdt's
        Python transaction (leases, origin table, locks) costs about 3 us per update here, as
        much as yrs applying a small update. Committed whatever happens, as pycrdt does, and
        always dropped, or the document would stay locked. Not inside another transaction."""
        native = self._doc._doc
        txn = native.create_transaction()
        try:
            try:
                native.apply_update(txn, update)
            finally:
                txn.commit()
        except BaseException as exc:
            _raise_corrupt(exc)
            raise
        finally:
            txn.drop()

    def _apply_raw(self, update: bytes) -> None:
        try:
            check_header(update)
        except MalformedUpdate as exc:
            raise CorruptUpdate(str(exc)) from exc
        try:
            self._doc.apply_update(update)
        except BaseException as exc:
            _raise_corrupt(exc)
            raise

    # reading -------------------------------------------------------------------------------

    def text(self) -> str:
        """The current text. Note: pycrdt counts text offsets (deltas, lengths) in UTF-8 bytes."""
        return str(self._text)

    def chunks(self) -> list[tuple[Any, dict[str, Any] | None]]:
        """The text as formatted chunks `(content, attributes)`; embeds appear as their value
        (each counts one offset unit, and `text()` leaves them out)."""
        return self._text.diff()

    def state_vector(self) -> bytes:
        """The Yjs v1 state vector (sync step 1 payload). Linear in the number of clients."""
        return self._doc.get_state()

    def clock(self) -> VectorClock:
        """The decoded state vector."""
        return VectorClock.from_state_vector(self.state_vector())

    def diff(self, remote_state_vector: bytes) -> bytes:
        """Exactly what a peer at `remote_state_vector` is missing (sync step 2 payload).

        Holds every struct the peer has not seen plus the whole delete set (Yjs sends all
        deletions, since state vectors do not track them); applying it twice changes nothing.
        Raises `CorruptStateVector` for malformed vectors. Linear in the document size.
        """
        remote_state_vector = bytes(remote_state_vector)
        decode_state_vector(remote_state_vector)  # strict check; yrs is laxer about trailing bytes
        try:
            return self._doc.get_update(remote_state_vector)
        except ValueError as exc:
            raise CorruptStateVector(str(exc)) from exc

    def encode_state(self) -> bytes:
        """The whole document as one update (what `document_snapshots.state` stores), without
        what is `pending` (yrs leaves it out). Linear in the document size, tombstones included."""
        return self._doc.get_update(EMPTY_STATE_VECTOR)

    def __repr__(self) -> str:
        return f"<Document {len(self._text)} bytes, clients={len(self.clock())}>"


def _raise_corrupt(exc: BaseException) -> None:
    """Raise `CorruptUpdate` from what yrs raised for bytes that are not an update: ValueError,
    a Rust panic or a RuntimeError (both `DocumentPanicked`). Returns for anything else (the
    caller re-raises it)."""
    if isinstance(exc, ValueError):
        raise CorruptUpdate(str(exc) or "invalid update") from exc
    if _is_panic(exc):
        raise DocumentPanicked(f"yrs panicked: {exc}") from exc
    if isinstance(exc, RuntimeError):  # yrs gave up midway (e.g. a parent that is no type)
        raise DocumentPanicked(f"yrs failed midway: {exc}") from exc
