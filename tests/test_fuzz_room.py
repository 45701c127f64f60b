"""Property: a room and its log never disagree, whatever updates clients send.

Hypothesis drives several pycrdt clients editing one text (inserts, deletes, formatting, syncing
from the log now and then) and sends each update, often mutated (bytes changed, inserted or cut,
the first struct group's clock or client id rewritten, old updates replayed, two merged), through
`server.documents.room.Room.apply_update`, the server's own path. An update it returns is appended to the log
(as the committer would); a refused one is dropped; after a yrs panic the room is rebuilt from
the log (as `RoomRegistry` does). After every update the room must equal the log's replay (text,
state vector and encoded state), and every stored update must apply to a fresh client.

Pure: no database, no server. The CI run is bounded and the same every time (40 examples of up
to 30 updates, derandomized: a few seconds). A longer run draws new examples:
`TANDEM_FUZZ_EXAMPLES=20000 pytest -p no:cacheprovider --timeout 0 tests/test_fuzz_room.py`
(one and a half to two minutes here); a failure prints the smallest sequence of steps that
breaks the property. Sequences it found are kept below as fixed regressions (`FOUND`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text, merge_updates, write_var_uint

from crdt.clock import VectorClock
from crdt.document import CorruptUpdate, Document
from crdt.ids import MAX_CLOCK
from crdt.operations import Operation
from crdt.replay import rebuild
from server.documents.room import Room
from tests.test_crdt_order import placed

EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "40"))
# The CI run walks the same examples every time; a longer run (TANDEM_FUZZ_EXAMPLES) new ones.
DERANDOMIZE = "TANDEM_FUZZ_EXAMPLES" not in os.environ
CLIENT_IDS = (101, 202, 303)
DOC_ID = uuid.UUID(int=1)
# Clocks around every boundary that matters: yrs's u32 wrap, its sign bit, and Yjs's 53 bits.
CLOCKS = st.one_of(
    st.integers(0, 40),
    st.sampled_from([MAX_CLOCK - 1, MAX_CLOCK, MAX_CLOCK + 1, 2**32 - 2, 2**32 - 1, 2**32, 2**53 - 1, 2**53]),
    st.integers(0, 2**56),
)


def _var_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated")


def swap_origins(update: bytes, right_clock: int) -> bytes:
    """The update with its first struct's right origin moved to clock `right_clock` of its
    origin's client, when that struct has both origins: an item told to go after one id and
    before another, which may lie left of it."""
    try:
        groups, pos = _var_uint(update, 0)
        if groups == 0:
            return update
        _, pos = _var_uint(update, pos)  # struct count
        _, pos = _var_uint(update, pos)  # client
        _, pos = _var_uint(update, pos)  # clock
        info = update[pos]
        if info & 0xC0 != 0xC0:
            return update
        origin_client, after = _var_uint(update, pos + 1)
        _, after = _var_uint(update, after)  # origin clock
        _, right_end = _var_uint(update, _var_uint(update, after)[1])
    except (ValueError, IndexError):
        return update
    return update[:after] + write_var_uint(origin_client) + write_var_uint(right_clock) + update[right_end:]


def rewrite_first_group(update: bytes, client: int | None = None, clock: int | None = None) -> bytes:
    """The update with its first struct group's client id or start clock replaced."""
    try:
        groups, pos = _var_uint(update, 0)
        if groups == 0:
            return update
        _, pos = _var_uint(update, pos)  # struct count
        client_at = pos
        old_client, pos = _var_uint(update, pos)
        old_clock, pos = _var_uint(update, pos)
    except ValueError:
        return update
    new_client = write_var_uint(old_client if client is None else client)
    new_clock = write_var_uint(old_clock if clock is None else clock)
    return update[:client_at] + new_client + new_clock + update[pos:]


@dataclass
class Edit:
    client: int
    kind: str  # insert, delete, format, sync
    position: int
    text: str


@dataclass
class Mutation:
    kind: str  # none, byte, insert, truncate, clock, client, swap, replay, merge
    index: int = 0
    value: int = 0


EDITS = st.builds(
    Edit,
    client=st.integers(0, len(CLIENT_IDS) - 1),
    kind=st.sampled_from(["insert", "insert", "delete", "format", "sync"]),
    position=st.integers(0, 200),
    text=st.text(alphabet="ab€😀\n", min_size=1, max_size=4),
)
MUTATIONS = st.one_of(
    st.just(Mutation("none")),
    st.builds(Mutation, kind=st.just("byte"), index=st.integers(0, 400), value=st.integers(0, 255)),
    st.builds(Mutation, kind=st.just("insert"), index=st.integers(0, 400), value=st.integers(0, 255)),
    st.builds(Mutation, kind=st.just("truncate"), index=st.integers(0, 400)),
    st.builds(Mutation, kind=st.just("clock"), value=CLOCKS),
    st.builds(Mutation, kind=st.just("client"), value=st.sampled_from([*CLIENT_IDS, 0, 2**53 - 1, 2**53, 2**64])),
    st.builds(Mutation, kind=st.just("swap"), value=st.integers(0, 40)),
    st.builds(Mutation, kind=st.sampled_from(["replay", "merge"]), index=st.integers(0, 400)),
)
STEPS = st.lists(st.tuples(EDITS, MUTATIONS), min_size=1, max_size=30)


def _client(client_id: int, state: bytes | None = None) -> tuple[Doc, Text, list[bytes]]:
    """A pycrdt client (holding `state`, if given) and the list its updates are appended to."""
    doc = Doc(client_id=client_id)
    doc["content"] = text = Text()
    if state is not None:
        doc.apply_update(state)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return doc, text, updates


@dataclass
class Harness:
    """A room, the log it appended to, and the clients writing through it."""

    room: Room = field(default_factory=lambda: Room(DOC_ID, DOC_ID, DOC_ID, Document(), 0))
    log: list[Operation] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # every update sent, stored or not
    clients: list[tuple[Doc, Text, list[bytes]]] = field(default_factory=list)
    panics: int = 0

    def __post_init__(self) -> None:
        self.clients = [_client(client_id) for client_id in CLIENT_IDS]
        self.room.on_panic = self._rebuild

    def _rebuild(self, room: Room) -> None:
        """What `RoomRegistry` does after a panic: the document becomes the log's replay."""
        self.panics += 1
        room.document = rebuild(self.log)

    def edit(self, edit: Edit) -> bytes | None:
        """The client's update for `edit`. A client whose own id another client's structs took
        in the room (a forged id the room could not tell from its own) may hold two structs for
        one id after syncing, and pycrdt then panics on its edits: it starts over from the room,
        as a reloaded editor would. The property is about the room, not about such a client."""
        try:
            return self._edit(edit)
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
            self.clients[edit.client] = _client(CLIENT_IDS[edit.client], self.room.document.encode_state())
            return None

    def _edit(self, edit: Edit) -> bytes | None:
        doc, text, updates = self.clients[edit.client]
        if edit.kind == "sync":
            doc.apply_update(self.room.document.encode_state())
            return None
        chars = str(text)
        length = len(chars)

        def offset(k: int) -> int:  # pycrdt counts text offsets in UTF-8 bytes
            return len(chars[:k].encode())

        updates.clear()
        start = edit.position % (length + 1)
        end = min(length, start + 1 + edit.position % 3)
        if edit.kind == "delete" and start < length:
            del text[offset(start) : offset(end)]
        elif edit.kind == "format" and start < length:
            text.format(offset(start), offset(end), {"bold": edit.position % 2 == 0})
        else:
            text.insert(offset(start), edit.text)
        return updates[-1] if updates else None

    def mutate(self, update: bytes, mutation: Mutation) -> bytes:
        i = mutation.index % (len(update) + 1)
        if mutation.kind == "byte" and update:
            i = mutation.index % len(update)
            return update[:i] + bytes([mutation.value]) + update[i + 1 :]
        if mutation.kind == "insert":
            return update[:i] + bytes([mutation.value]) + update[i:]
        if mutation.kind == "truncate":
            return update[:i]
        if mutation.kind == "clock":
            return rewrite_first_group(update, clock=mutation.value)
        if mutation.kind == "client":
            return rewrite_first_group(update, client=mutation.value)
        if mutation.kind == "swap":
            return swap_origins(update, mutation.value)
        if mutation.kind == "replay" and self.sent:
            return self.sent[mutation.index % len(self.sent)]
        if mutation.kind == "merge" and self.sent:
            try:
                return merge_updates(self.sent[mutation.index % len(self.sent)], update)
            except ValueError:  # the earlier one was corrupt
                return update
        return update

    def send(self, update: bytes) -> None:
        self.sent.append(update)
        try:
            op = self.room.apply_update("fuzz", update)
        except CorruptUpdate:
            return  # refused: nothing stored (after a panic the room was rebuilt)
        if op is None:
            return  # nothing new: nothing stored
        self.room.in_flight.pop(op.update, None)  # committed
        seq = len(self.log) + 1
        self.log.append(Operation(DOC_ID, seq, op.agent_id, op.op_type, VectorClock.from_json(op.vector_clock).to_json(), op.update))

    def check(self) -> None:
        replayed = rebuild(self.log)
        room = self.room.document
        assert room.text() == replayed.text()
        assert room.clock() == replayed.clock()
        assert room.pending() == replayed.pending()
        if not room.pending():  # what a snapshot holds (none is taken while something waits)
            assert Document.from_state(room.encode_state()).text() == replayed.text()
        fresh = Doc()
        fresh["content"] = fresh_text = Text()
        for op in self.log:  # a client applying the log in order reads what the room holds
            fresh.apply_update(op.update)
        assert str(fresh_text) == replayed.text()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    database=None,  # nothing written into the worktree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=STEPS)
def test_room_equals_the_replay_of_its_log(steps: list[tuple[Edit, Mutation]]) -> None:
    harness = Harness()
    for edit, mutation in steps:
        update = harness.edit(edit)
        if update is None:
            continue
        harness.send(harness.mutate(update, mutation))
        harness.check()


def test_a_wrapped_clock_is_refused_and_the_room_stays_the_log() -> None:
    """An update that forks a room unless refused: one item at clock 2**32 - 1 (yrs applies it and
    reports no change, so nothing would store it), then honest edits."""
    harness = Harness()
    honest = harness.edit(Edit(0, "insert", 0, "hello"))
    assert honest is not None
    harness.send(honest)
    wrapped = rewrite_first_group(harness.edit(Edit(1, "insert", 0, "x")) or b"", clock=2**32 - 1)
    before = harness.room.document.encode_state()
    try:
        harness.room.apply_update("fuzz", wrapped)
    except CorruptUpdate as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("the wrapped clock was not refused")
    assert harness.room.document.encode_state() == before
    for position in range(3):
        update = harness.edit(Edit(0, "insert", position, "ab"))
        assert update is not None
        harness.send(update)
        harness.check()
    assert len(harness.log) == 4 and harness.panics == 0


def test_a_forged_client_id_is_refused_and_the_room_stays_the_log() -> None:
    """The smallest fork the id-rewriting mutation found: 101 writes "aa", another client's
    "aa\\n" arrives as 101's (clocks 0..2), then 101 inserts "aa" at 1 from clocks 2..3 with a
    right origin left of the room's clock 2. Taken, the room read 'aaa\\n', its replay 'aa\\na'."""
    harness = Harness()
    harness.send(harness.edit(Edit(0, "insert", 0, "aa")) or b"")
    harness.send(rewrite_first_group(harness.edit(Edit(1, "insert", 0, "aa\n")) or b"", client=101))
    harness.check()
    before = harness.room.document.encode_state()
    try:
        harness.room.apply_update("fuzz", harness.edit(Edit(0, "insert", 1, "aa")) or b"")
    except CorruptUpdate as exc:
        assert "restate clock 2" in str(exc)
    else:
        raise AssertionError("the update placed by a forged item was not refused")
    assert harness.room.document.encode_state() == before
    harness.check()
    assert len(harness.log) == 2 and harness.panics == 0


@pytest.mark.parametrize("deleted_first", [False, True], ids=["shown", "between-deleted"])
def test_an_item_placed_after_its_right_origin_is_refused_and_the_room_stays_the_log(deleted_first: bool) -> None:
    """The fork no forged id needs: after 101's "abc", an item of client 55 that goes after `c`
    and before `b`. Taken, the room read 'aYXbc' once 101 inserted "Y" at 1, its replay
    'aYbcX'. Refused before it is applied while `b` or `c` shows; once applied (the room is
    rebuilt from the log) when both are deleted."""
    harness = Harness()
    harness.send(harness.edit(Edit(0, "insert", 0, "abc")) or b"")
    if deleted_first:
        harness.send(harness.edit(Edit(0, "delete", 1, "")) or b"")  # deletes "bc"
        assert harness.room.document.text() == "a"
    stored = len(harness.log)
    harness.send(placed(55, (101, 2), (101, 1)))
    assert len(harness.log) == stored and harness.panics == (1 if deleted_first else 0)
    harness.check()
    for position in range(3):
        harness.send(harness.edit(Edit(0, "insert", position, "Y")) or b"")
        harness.check()
    assert len(harness.log) == stored + 3


# Sequences the long run found with the id-rewriting mutation, where another client's update
# under a client id meets an update of that id the room keeps pending.
FOUND = {
    "forged item ends inside a pending one": [
        (Edit(1, "insert", 0, "a"), Mutation("truncate", 0)),
        (Edit(1, "insert", 1, "a😀"), Mutation("none")),
        (Edit(0, "insert", 0, "a😀"), Mutation("client", 0, 202)),
        (Edit(1, "insert", 0, "a"), Mutation("none")),
    ],
    "forged item covers a pending one": [
        (Edit(0, "insert", 0, "a"), Mutation("byte", 0, 0)),
        (Edit(2, "insert", 0, "a"), Mutation("none")),
        (Edit(0, "format", 0, "a"), Mutation("client", 0, 202)),
        (Edit(0, "insert", 1, "a"), Mutation("none")),
        (Edit(1, "insert", 0, "😀aa"), Mutation("client", 0, 101)),
        (Edit(0, "delete", 1, "a"), Mutation("none")),
    ],
    "forged pending item surfaces around a hole once another client's item arrives": [
        (Edit(0, "insert", 0, "a"), Mutation("truncate", 0)),
        (Edit(0, "insert", 0, "\n"), Mutation("client", 0, 202)),
        (Edit(1, "insert", 0, "a"), Mutation("client", 0, 101)),
        (Edit(2, "insert", 0, "aa"), Mutation("client", 0, 202)),
    ],
    "an item whose parent is a character": [
        *[(Edit(0, "insert", 0, "a"), Mutation("none"))] * 5,
        (Edit(0, "format", 0, "a"), Mutation("insert", 208, 35)),
    ],
    "an item after a character and before the same one": [
        (Edit(0, "insert", 0, "😀aa"), Mutation("none")),
        (Edit(0, "insert", 2, "a"), Mutation("none")),
        (Edit(0, "insert", 0, "a"), Mutation("none")),
        (Edit(0, "insert", 87, "\n"), Mutation("swap", 0, 2)),
    ],
}


@pytest.mark.parametrize("name", list(FOUND))
def test_a_sequence_the_long_run_found_keeps_the_room_its_log(name: str) -> None:
    harness = Harness()
    for edit, mutation in FOUND[name]:
        update = harness.edit(edit)
        if update is not None:
            harness.send(harness.mutate(update, mutation))
            harness.check()
