"""Items placed between two ids that are out of order are refused (`crdt.order`), and honest
placements between deleted or new items are taken."""

from __future__ import annotations

import uuid

import pytest
from pycrdt import Doc, Text, write_var_uint

from crdt.document import CorruptUpdate, Document, ItemOutOfOrder
from crdt.operations import Operation
from crdt.replay import rebuild

DOC = uuid.UUID(int=7)


def _id(client: int, clock: int) -> bytes:
    return write_var_uint(client) + write_var_uint(clock)


def placed(client: int, origin: tuple[int, int], right: tuple[int, int], text: str | None = "X", deleted: int = 0) -> bytes:
    """A one-item update of `client` at clock 0 between `origin` and `right`: the string `text`,
    or (`text=None`) `deleted` clocks of deleted content."""
    if text is None:
        info, content = b"\xc1", write_var_uint(deleted)
    else:
        raw = text.encode()
        info, content = b"\xc4", write_var_uint(len(raw)) + raw
    return b"\x01\x01" + _id(client, 0) + info + _id(*origin) + _id(*right) + content + b"\x00"


class Writer:
    """A pycrdt client; `send` hands its last change to the document and keeps it as logged."""

    def __init__(self, client: int, document: Document, log: list[bytes]) -> None:
        self.doc = Doc(client_id=client)
        self.doc["content"] = self.text = Text()
        self.document, self.log = document, log

    def sync(self) -> None:
        for update in self.log:
            self.doc.apply_update(update)

    def send(self, change) -> bytes:
        before = self.doc.get_state()
        change(self.text)
        update = self.doc.get_update(before)
        self.document.apply(update)
        self.log.append(update)
        return update


def _abcd() -> tuple[Document, list[bytes], Writer]:
    document, log = Document(), []
    writer = Writer(101, document, log)
    writer.send(lambda t: t.insert(0, "abcd"))
    return document, log, writer


def _agrees(document: Document, log: list[bytes]) -> None:
    replayed = rebuild([Operation(DOC, i + 1, "a", "insert", {}, u) for i, u in enumerate(log)])
    assert document.text() == replayed.text()
    assert Document.from_state(document.encode_state()).text() == replayed.text()


def test_an_item_after_a_character_and_before_one_left_of_it_is_refused_unapplied() -> None:
    document, log, writer = _abcd()
    before = document.encode_state()
    with pytest.raises(CorruptUpdate, match=r"item \(55, 0\) goes after \(101, 2\) and before \(101, 1\), which comes first"):
        document.apply(placed(55, (101, 2), (101, 1)))
    assert document.encode_state() == before and document.text() == "abcd"
    writer.send(lambda t: t.insert(1, "Y"))
    _agrees(document, log)


def test_out_of_order_between_deleted_characters_is_found_once_applied() -> None:
    """`b` and `c` deleted: nothing visible tells them apart, so the item, shown in the text,
    does; the document then holds it and must be rebuilt (`ItemOutOfOrder`)."""
    document, log, writer = _abcd()
    writer.send(lambda t: t.__delitem__(slice(1, 3)))
    with pytest.raises(ItemOutOfOrder, match="which comes first"):
        document.apply(placed(55, (101, 2), (101, 1)))
    assert ItemOutOfOrder.update_at_fault


def test_deleted_content_between_deleted_characters_in_either_order_is_refused_unapplied() -> None:
    document, log, writer = _abcd()
    writer.send(lambda t: t.__delitem__(slice(1, 3)))
    before = document.encode_state()
    for origin, right in (((101, 2), (101, 1)), ((101, 1), (101, 2))):
        with pytest.raises(CorruptUpdate, match="order cannot be checked") as refused:
            document.apply(placed(55, origin, right, text=None, deleted=2))
        assert not isinstance(refused.value, ItemOutOfOrder)
    assert document.encode_state() == before


def test_naming_an_id_the_document_lacks_is_refused() -> None:
    document, _, _ = _abcd()
    with pytest.raises(CorruptUpdate, match="lacks one of them"):
        document.apply(placed(55, (101, 2), (99, 0)))


def test_an_honest_insert_between_characters_deleted_meanwhile_is_taken() -> None:
    document, log, writer = _abcd()
    late = Writer(202, document, log)
    late.sync()  # before the deletion
    state = late.doc.get_state()
    late.text.insert(2, "X")  # between b and c, which 101 deletes meanwhile
    writer.send(lambda t: t.__delitem__(slice(1, 3)))
    update = late.doc.get_update(state)
    document.apply(update)
    log.append(update)
    assert document.text() == "aXd"
    _agrees(document, log)


def test_typing_deleted_before_it_was_sent_is_taken() -> None:
    """Offline: "hello" typed between b and c, then "ello" deleted, sent as one update (Yjs
    encodes the deleted part as an item after `h`, before `c`)."""
    document, log, writer = _abcd()
    offline = Writer(303, document, log)
    offline.sync()
    state = offline.doc.get_state()
    offline.text.insert(2, "hello")
    del offline.text[3:7]
    offline.text.insert(1, "zz")
    del offline.text[1:3]  # deleted content between two characters that show
    update = offline.doc.get_update(state)
    document.apply(update)
    log.append(update)
    assert document.text() == "abhcd"
    _agrees(document, log)
