"""crdt.overlap and the check `Document.apply` makes with it: an update re-using clocks the
document holds is taken only if it says of them what the document holds.

Pure tests: real pycrdt documents play the clients (a forged id is one client's update with
another client's id written over it).
"""

from __future__ import annotations

import uuid

import pytest
from pycrdt import Doc, Text, write_var_uint

from crdt.document import CONTENT, CorruptUpdate, Document
from crdt.operations import Operation
from crdt.overlap import item_at
from crdt.replay import rebuild

DOC_ID = uuid.UUID(int=1)


class Client:
    """A pycrdt client editing the text; `updates` are the ones it emitted since the last `take`."""

    def __init__(self, client_id: int) -> None:
        self.doc = Doc(client_id=client_id)
        self.doc[CONTENT] = self.text = Text()
        self.updates: list[bytes] = []
        self.doc.observe(lambda event: self.updates.append(event.update))

    def insert(self, index: int, chars: str) -> bytes:
        self.updates.clear()
        self.text.insert(index, chars)
        (update,) = self.updates
        return update


def as_client(update: bytes, client: int) -> bytes:
    """The update (one struct group, one-byte count and client id) with its client id replaced."""
    assert update[0] == 1 and update[1] < 0x80 and update[2] < 0x80
    return update[:2] + write_var_uint(client) + update[3:]


class Room:
    """A document taking updates as the server's room does, and the log of those it took."""

    def __init__(self) -> None:
        self.document = Document()
        self.log: list[Operation] = []

    def send(self, update: bytes) -> bool:
        """True if stored, False if nothing new; raises CorruptUpdate if refused."""
        applied = self.document.apply(update)
        if not applied.changed and not applied.pending:
            return False
        self.log.append(Operation(DOC_ID, len(self.log) + 1, "agent", applied.op_type, applied.op_clock.to_json(), update))
        return True

    def assert_is_its_log(self) -> None:
        replayed = rebuild(self.log)
        assert self.document.text() == replayed.text()
        assert self.document.clock() == replayed.clock()
        assert Document.from_state(self.document.encode_state()).text() == replayed.text()


def test_a_forged_client_id_cannot_fork_the_room_from_its_log() -> None:
    """Client 101 writes "aa"; another client's "aa\\n" arrives as 101's (clocks 0..2, so the
    room holds "\\n" at 101's clock 2); 101 then inserts "aa" at 1 from clocks 2..3, with a right
    origin left of the room's clock 2. Taken, the room read 'aaa\\n' and its replay 'aa\\na'."""
    room, honest, other = Room(), Client(101), Client(55)
    assert room.send(honest.insert(0, "aa"))
    assert room.send(as_client(other.insert(0, "aa\n"), 101))
    room.assert_is_its_log()
    before = room.document.encode_state()
    with pytest.raises(CorruptUpdate, match="restate clock 2"):
        room.send(honest.insert(1, "aa"))
    assert room.document.encode_state() == before  # refused: nothing changed
    room.assert_is_its_log()
    assert room.document.text() == "aa\n"


def test_a_forged_character_on_a_held_clock_is_refused() -> None:
    """Same origins, other text: the update claims the held clock for another character."""
    room, honest, other = Room(), Client(101), Client(55)
    room.send(honest.insert(0, "ab"))
    with pytest.raises(CorruptUpdate, match="restate clock 1"):
        room.send(as_client(other.insert(0, "axy"), 101))
    assert room.document.text() == "ab"


def test_an_honest_update_restating_what_the_room_holds_is_taken() -> None:
    """A client's state sent whole while the room holds its first edits (a resend after
    reconnecting, computed before the room's state reached it): its item straddles the room's
    clock and says of the held clocks what the room holds."""
    room, writer = Room(), Client(7)
    room.send(writer.insert(0, "ab"))
    room.send(writer.insert(0, "X"))  # clock 2, right origin (7, 0)
    writer.insert(1, "cd")  # clocks 3..4, merged by the client with "X": one item 2..4
    whole = writer.doc.get_update(b"\x00")
    held = item_at(whole, 7, 2)
    assert held is not None and (held.start, held.end) == (2, 5)  # it straddles the room's clock 3
    assert room.send(whole)
    assert room.document.text() == str(writer.text)
    room.assert_is_its_log()


def test_an_exact_duplicate_is_taken_and_changes_nothing() -> None:
    room, writer = Room(), Client(7)
    first = writer.insert(0, "hello")
    room.send(first)
    room.send(writer.insert(5, " world"))
    assert room.send(first) is False
    assert room.send(writer.doc.get_update(b"\x00")) is False
    room.assert_is_its_log()


def test_item_at_reads_an_id_inside_an_item_with_its_derived_origin() -> None:
    writer = Client(9)
    writer.insert(0, "a😀b")
    update = writer.doc.get_update(b"\x00")
    start = item_at(update, 9, 0)
    inside = item_at(update, 9, 3)
    assert start is not None and start.origin is None and start.parent == ("root", CONTENT) and start.unit == "a".encode("utf-16-le")
    assert inside is not None and inside.origin == (9, 2) and inside.parent is None and inside.unit == "b".encode("utf-16-le")
    assert (inside.start, inside.end) == (0, 4)
    assert item_at(update, 9, 4) is None and item_at(update, 8, 0) is None


def test_a_forged_update_cannot_cut_into_one_the_room_keeps_pending() -> None:
    """202's "a😀" after its "a" waits (the "a" never arrived); "a😀" of another client arrives
    as 202's clocks 0..2, ending inside the waiting item where it says another character: the
    waiting item would then be placed from the middle of its emoji. Taken, the room and its
    replay held different clocks."""
    room, writer, other = Room(), Client(102), Client(55)
    writer.insert(0, "a")  # never sent
    assert room.send(writer.insert(1, "a😀"))  # stored, pending
    assert room.document.pending()
    with pytest.raises(CorruptUpdate, match="keeps pending"):
        room.send(as_client(other.insert(0, "a😀"), 102))
    assert room.send(writer.doc.get_update(b"\x00"))  # the writer's own state: taken
    assert room.document.text() == str(writer.text) and not room.document.pending()
    room.assert_is_its_log()


def test_an_item_spanning_a_billion_clocks_is_compared_by_item() -> None:
    """Deleted content names clocks without bytes for them: 2**30 of 102's clocks over its
    pending "b" are compared item by item (clock by clock, this filled memory)."""
    room, writer = Room(), Client(102)
    writer.insert(0, "a")  # never sent
    room.send(writer.insert(1, "b"))  # pending
    deleted = b"\x01\x01" + write_var_uint(102) + b"\x00\x01\x01\x07content" + write_var_uint(2**30) + b"\x00"
    room.send(deleted)
    room.assert_is_its_log()
