"""crdt.operations and the operation a document reports: its type (classification) and the
records stored for it.

Pure tests: no network, no database; real pycrdt documents play the clients.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crdt.clock import VectorClock
from crdt.document import Applied
from crdt.operations import Operation, OpType, Origin, Snapshot, classify
from tests.test_crdt_document import Client, seeded_document

# classification ---------------------------------------------------------------------------------


def classify_edit(edit) -> Applied:  # type: ignore[no-untyped-def]
    document, client = seeded_document()
    with client.doc.transaction():
        edit(client.text)
    assert len(client.updates) == 2
    applied = document.apply(client.last())
    assert document.text() == str(client.text)
    return applied


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.insert(4, "sly "), OpType.INSERT),
        (lambda t: t.insert(0, "é😀"), OpType.INSERT),
        (lambda t: t.insert(4, "sly ", {"bold": True}), OpType.INSERT),
        (lambda t: t.__delitem__(slice(4, 10)), OpType.DELETE),
        (lambda t: t.format(4, 9, {"bold": True}), OpType.FORMAT),
        (lambda t: (t.insert(0, "a"), t.__delitem__(slice(5, 8))), OpType.UPDATE),
        (lambda t: (t.__delitem__(slice(4, 9)), t.insert(4, "rapid")), OpType.UPDATE),  # same length
        (lambda t: (t.__delitem__(slice(0, 1)), t.insert(0, "T")), OpType.UPDATE),
        (lambda t: (t.format(0, 3, {"bold": True}), t.__delitem__(slice(4, 10))), OpType.UPDATE),
        (lambda t: (t.insert(0, "gone"), t.__delitem__(slice(0, 4))), OpType.UPDATE),  # no net text
    ],
)
def test_operation_type_is_derived_from_the_update(edit, expected: OpType) -> None:  # type: ignore[no-untyped-def]
    assert classify_edit(edit).op_type is expected


def test_removing_formatting_is_a_format_operation() -> None:
    document, client = seeded_document()
    client.text.format(0, 9, {"bold": True})
    document.apply(client.last())
    client.text.format(0, 9, {"bold": None})
    applied = document.apply(client.last())
    assert applied.op_type is OpType.FORMAT
    assert document.chunks() == [("the quick brown fox", None)]


def test_delete_of_another_clients_text_clocks_the_deleted_items() -> None:
    document, _ = seeded_document()  # client 5 wrote 19 characters
    other = Client(6)
    other.receive(document.encode_state())
    del other.text[4:10]  # items 4..9 of client 5
    applied = document.apply(other.last())
    assert applied.op_type is OpType.DELETE
    assert applied.op_clock == VectorClock({5: 10})
    assert applied.op_clock.to_json() == {"5": 10}


def test_delta_is_reported_when_asked() -> None:
    document, client = seeded_document()
    client.text.insert(4, "sly ")
    applied = document.apply(client.last(), with_delta=True)
    assert applied.delta == ({"retain": 4}, {"insert": "sly "})
    assert document.apply(client.last(), with_delta=True).delta == ()


def test_classify_from_facts_alone() -> None:
    assert classify(None, structs_added=True, deleted=False, length_change=3) is OpType.INSERT
    assert classify(None, structs_added=False, deleted=True, length_change=-3) is OpType.DELETE
    assert classify(None, structs_added=True, deleted=True, length_change=-1) is OpType.UPDATE
    assert classify(None, structs_added=True, deleted=False) is OpType.INSERT  # another root
    assert classify(None, structs_added=False, deleted=False) is OpType.UPDATE
    assert classify([{"retain": 2, "attributes": {"b": True}}], structs_added=True, deleted=True) is OpType.FORMAT
    assert classify([{"retain": 2}], structs_added=True, deleted=True) is OpType.UPDATE


# records ------------------------------------------------------------------------------------


def test_origins_that_are_stored() -> None:
    assert {o for o in Origin if o.is_stored} == {Origin.CLIENT, Origin.SERVER}


def test_operation_rows_validate_and_decode_their_clock() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    op = Operation("doc", 1, "agent-a", "insert", {"5": 19}, bytearray(b"\x00\x00"), at)
    assert op.op_type is OpType.INSERT and op.update == b"\x00\x00"
    assert op.clock == VectorClock({5: 19})
    with pytest.raises(ValueError):
        Operation("doc", 0, "agent-a", "insert", {}, b"")
    with pytest.raises(ValueError):
        Operation("doc", 1, "agent-a", "rename", {}, b"")
    with pytest.raises(ValueError):
        Snapshot("doc", -1, b"")
