"""crdt.ids and the checks `Document.apply` makes with it: clocks yrs would wrap or truncate,
structs skipping clocks of their client, deletions of unseen items.

Pure tests: real pycrdt documents play the clients; hand-made updates play hostile ones.
"""

from __future__ import annotations

import pytest
from pycrdt import (
    Array,
    Doc,
    Map,
    Text,
    XmlElement,
    XmlFragment,
    XmlText,
    get_state,
    write_var_uint,
)

from crdt.clock import decode_state_vector
from crdt.document import CONTENT, CorruptUpdate, Document
from crdt.ids import MAX_CLOCK, ClockOutOfRange, MalformedUpdate, check_ids


def root_insert(client: int, clock: int, text: str) -> bytes:
    """One string item at the root text `content`, at any client and clock (no origins)."""
    data = text.encode()
    return (
        b"\x01\x01" + write_var_uint(client) + write_var_uint(clock) + b"\x04\x01\x07content"
        + write_var_uint(len(data)) + data + b"\x00"
    )  # fmt: skip


def state(document: Document) -> tuple[str, bytes, bytes]:
    return document.text(), document.state_vector(), document.encode_state()


def test_every_kind_of_content_is_read_and_each_run_ends_where_yrs_says() -> None:
    doc = Doc(client_id=42)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc[CONTENT] = text = Text()
    text += "héllo 😀 wörld"
    text.format(1, 4, {"bold": True, "n": 3, "f": 1.5, "nested": {"a": [1, None, "x", b"\x00\x01"]}})
    text.insert_embed(2, {"image": "x.png"})
    doc["m"] = m = Map()
    m["a"], m["b"], m["c"], m["d"], m["e"], m["f"], m["g"] = 1, [1, {"c": None}], 2**40, -5, 1.25, b"bin", True
    m["sub"] = Map({"x": 1})
    m["arr"] = Array([1, "two", Text("t")])
    doc["x"] = x = XmlFragment()
    x.children.append(XmlElement("p", {"class": "c"}, [XmlText("hi")]))
    m["doc"] = Doc()
    del text[0:3]
    full = doc.get_update(b"\x00")
    for update in [*updates, full]:
        check_ids(update)
    ids = check_ids(full)
    assert [(run.client, run.start, run.end) for run in ids.runs] == [(42, 0, decode_state_vector(get_state(full))[42])]
    assert ids.deletes == {42: 2}  # "hé": two UTF-16 units (pycrdt deletes by UTF-8 bytes)


@pytest.mark.parametrize("clock", [MAX_CLOCK, 2**32 - 2, 2**32 - 1, 2**32, 2**53])
def test_a_clock_past_2_to_the_31_is_refused_and_changes_nothing(clock: int) -> None:
    document = Document()
    document.apply(root_insert(7, 0, "hello"))
    before = state(document)
    with pytest.raises(CorruptUpdate, match="exceeds"):
        document.apply(root_insert(7, clock, "x"))
    with pytest.raises(ClockOutOfRange):
        check_ids(root_insert(7, clock, "x"))
    assert state(document) == before
    assert document.apply(root_insert(7, 5, "!")).changed  # honest edits go on


def test_clocks_in_origins_and_deleted_ranges_are_checked_too() -> None:
    origin = b"\x01\x01\x07\x05\x84\x07" + write_var_uint(2**32) + b"\x01x\x00"
    with pytest.raises(ClockOutOfRange):
        check_ids(origin)
    deleted = b"\x00\x01\x07\x01" + write_var_uint(2**32 - 1) + b"\x02"
    with pytest.raises(ClockOutOfRange):
        check_ids(deleted)
    with pytest.raises(ClockOutOfRange):
        check_ids(root_insert(2**53, 0, "x"))


def test_trailing_bytes_and_unknown_content_are_malformed() -> None:
    with pytest.raises(MalformedUpdate):
        check_ids(root_insert(7, 0, "x") + b"\x00")
    with pytest.raises(MalformedUpdate):
        check_ids(b"\x01\x01\x07\x00\x0b\x01\x07content\x00\x00")  # content type 11 (yrs moves)


def test_a_root_item_skipping_clocks_is_refused_but_one_waiting_for_its_origin_is_pending() -> None:
    document = Document()
    document.apply(root_insert(7, 0, "abc"))
    before = state(document)
    with pytest.raises(CorruptUpdate, match="client 7 start at clock 9, past its 3"):
        document.apply(root_insert(7, 9, "x"))
    assert state(document) == before
    waiting = b"\x01\x01\x07\x09\x84\x07\x08\x01x\x00"  # origin (7, 8): not here yet
    applied = document.apply(waiting)
    assert applied.pending and not applied.changed and state(document) == before


def test_a_deletion_of_unseen_items_is_pending() -> None:
    writer = Doc(client_id=9)
    writer[CONTENT] = text = Text()
    updates: list[bytes] = []
    writer.observe(lambda event: updates.append(event.update))
    text += "abc"
    del text[0:2]
    insert, delete = updates
    document = Document()
    held = document.apply(delete)  # the items are not here: yrs keeps the deletion
    assert held.pending and not held.changed
    document.apply(insert)
    assert document.text() == "c"
    again = document.apply(delete)
    assert not again.pending and not again.changed


def test_structs_held_in_part_that_split_a_character_are_refused() -> None:
    """Client 101's "😀" forged over its "a": the document holds clock 0, so yrs would split the
    emoji between its UTF-16 halves, and not as its replay of the log does (tests/test_fuzz_room.py)."""
    document = Document()
    document.apply(root_insert(101, 0, "a"))
    before = state(document)
    with pytest.raises(CorruptUpdate, match="split a character at clock 1"):
        document.apply(root_insert(101, 0, "😀"))
    assert state(document) == before
    assert document.apply(root_insert(101, 0, "ab")).changed  # split between two characters: kept


def test_origins_and_deletions_cutting_a_character_in_two_are_refused() -> None:
    document = Document()
    document.apply(root_insert(101, 0, "😀"))  # clocks 0 and 1: the two UTF-16 halves
    before = state(document)
    after_high_half = b"\x01\x01\x05\x00\x84\x65\x00\x01x\x00"  # client 5 inserts after (101, 0)
    delete_low_half = b"\x00\x01\x65\x01\x01\x01"  # deletes (101, 1) alone
    for update in (after_high_half, delete_low_half):
        with pytest.raises(CorruptUpdate, match="cuts a character of client 101 in two at clock 1"):
            document.apply(update)
        assert state(document) == before
    after_character = b"\x01\x01\x05\x00\x84\x65\x01\x01x\x00"  # after (101, 1): a whole character
    assert document.apply(after_character).changed and document.text() == "😀x"
    loaded = Document.from_state(document.encode_state())  # a room loaded from the log knows too
    with pytest.raises(CorruptUpdate, match="cuts a character"):
        loaded.apply(delete_low_half)
