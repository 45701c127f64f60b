"""crdt.document: applying updates, corrupt input, diffs, pending structs and the stored clock.

Pure tests: no network, no database; real pycrdt documents play the clients.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import threading
import weakref

import pytest
from pycrdt import Doc, Text, merge_updates

from crdt.clock import (
    CorruptStateVector,
    VectorClock,
    changed_entries,
    decode_state_vector,
)
from crdt.document import CONTENT, Applied, CorruptUpdate, Document, UpdateTooLarge
from crdt.operations import OpType, Origin


class Client:
    """A simulated editor: a pycrdt Doc whose every transaction yields one update."""

    def __init__(self, client_id: int, text: str = "") -> None:
        self.doc: Doc = Doc(client_id=client_id)
        self.doc[CONTENT] = self.text = Text()
        self.updates: list[bytes] = []
        self.doc.observe(lambda event: self.updates.append(event.update))
        if text:
            self.text += text

    def last(self) -> bytes:
        return self.updates[-1]

    def receive(self, update: bytes) -> None:
        self.doc.apply_update(update)


def snapshot_of(document: Document) -> tuple[str, bytes, bytes]:
    return document.text(), document.state_vector(), document.encode_state()


def seeded_document() -> tuple[Document, Client]:
    client = Client(5, "the quick brown fox")
    document = Document()
    document.apply(client.last())
    return document, client


# corrupt input ------------------------------------------------------------------------------


def test_empty_bytes_raise_corrupt_update() -> None:
    document, _ = seeded_document()
    before = snapshot_of(document)
    with pytest.raises(CorruptUpdate):
        document.apply(b"")
    assert snapshot_of(document) == before


def test_random_garbage_raises_corrupt_update_and_changes_nothing() -> None:
    document, _ = seeded_document()
    before = snapshot_of(document)
    rng = random.Random(20240611)
    for _ in range(400):
        garbage = rng.randbytes(rng.randrange(1, 48))
        with pytest.raises(CorruptUpdate):
            document.apply(garbage)
    assert snapshot_of(document) == before


def test_every_truncation_of_a_valid_update_is_corrupt_and_changes_nothing() -> None:
    document, _ = seeded_document()
    author = Client(9)
    author.receive(document.encode_state())
    author.text.insert(4, "very ", {"bold": True})
    del author.text[0:4]
    author.text += " jumps 😀 é"
    update = author.doc.get_update(document.state_vector())
    before = snapshot_of(document)
    for cut in range(len(update)):
        with pytest.raises(CorruptUpdate):
            document.apply(update[:cut])
        assert snapshot_of(document) == before
    assert document.apply(update).changed
    assert document.text() == str(author.text)


def test_mutated_updates_either_fail_cleanly_or_apply() -> None:
    # A flipped byte may still decode (e.g. a different character); when it does not, nothing
    # of it may have been integrated.
    source = Client(77)
    source.text += "hello world"
    del source.text[2:5]
    source.text.format(0, 3, {"italic": True})
    source.text.insert(3, "zz")
    rng = random.Random(8)
    for _ in range(600):
        update = bytearray(rng.choice(source.updates))
        update[rng.randrange(len(update))] = rng.randrange(256)
        document, _ = seeded_document()
        before = snapshot_of(document)
        try:
            document.apply(bytes(update))
        except CorruptUpdate:
            assert snapshot_of(document) == before


def test_hostile_group_count_is_rejected_before_yrs_allocates() -> None:
    # 20 bytes declaring 2**28 struct groups make yrs allocate ~512 MB before failing; the
    # header check refuses them without asking yrs. (Other crafted inputs may still cost CPU:
    # the server validates off the event loop.)
    document, _ = seeded_document()
    before = snapshot_of(document)
    with pytest.raises(CorruptUpdate, match="struct groups"):
        document.apply(b"\x80\x80\x80\x80\x01" + b"\x00" * 20)
    assert snapshot_of(document) == before


def test_oversized_update_is_refused_before_decoding() -> None:
    document = Document(max_update_bytes=64)
    client = Client(3, "x" * 100)
    with pytest.raises(UpdateTooLarge):
        document.apply(client.last())
    assert document.text() == "" and document.state_vector() == b"\x00"
    assert not issubclass(UpdateTooLarge, CorruptUpdate)


# applying and syncing -------------------------------------------------------------------------


def test_duplicate_update_changes_nothing() -> None:
    document, client = seeded_document()
    again = document.apply(client.last())
    assert not again.changed and not again.pending
    assert again.op_clock == VectorClock()
    assert document.text() == "the quick brown fox"


def test_applied_reports_state_after_the_update() -> None:
    document, client = seeded_document()
    client.text += "!"
    applied = document.apply(client.last(), Origin.FANOUT)
    assert isinstance(applied, Applied)
    # Built without the dataclass __init__ (crdt.document._applied): every field is there and
    # the instance is the one the dataclass would have built.
    values = {f.name: getattr(applied, f.name) for f in dataclasses.fields(Applied)}
    assert applied == Applied(**values) and hash(applied) == hash(Applied(**values))
    assert applied.origin is Origin.FANOUT
    assert applied.state_vector == document.state_vector()
    assert applied.clock == document.clock() == VectorClock({5: 20})
    assert applied.op_clock == VectorClock({5: 20})
    assert applied.update == client.last()


def test_update_is_pending_until_another_clients_structs_arrive() -> None:
    client, other = Client(11), Client(12)
    client.text += "hello"
    client.text += " world"
    first, second = client.updates
    other.receive(first)
    other.receive(second)
    other.text += "!"
    document = Document()
    document.apply(first)
    waiting = document.apply(other.last())  # its origin is in `second`
    assert waiting.pending and not waiting.changed and document.text() == "hello"
    resolved = document.apply(second)
    assert resolved.changed and not resolved.pending
    assert document.text() == "hello world!"
    assert resolved.op_clock == VectorClock({11: 11, 12: 1})  # the surfaced pending struct included


def test_update_skipping_clocks_of_its_own_client_is_refused_and_changes_nothing() -> None:
    """Yjs would hold it pending; yrs integrates it around a hole (its origin is known) that
    encoding the document does not reproduce, so it is refused (crdt/ids.py)."""
    client = Client(11)
    client.text += "hello"
    client.text += "!"
    client.text.insert(0, ">")  # its right origin (11, 0) is known to the document
    first, _, third = client.updates
    document = Document()
    document.apply(first)
    before = snapshot_of(document)
    with pytest.raises(CorruptUpdate, match="client 11 start at clock 6, past its 5"):
        document.apply(third)
    assert snapshot_of(document) == before
    assert not document.apply(first).changed  # what it holds is unchanged


def test_two_documents_exchanging_diffs_converge() -> None:
    rng = random.Random(5)
    left, right = Document(), Document()
    left_client, right_client = Client(1), Client(2)
    for round_ in range(30):
        for client, document in ((left_client, left), (right_client, right)):
            client.receive(document.diff(client.doc.get_state()))
            length = len(client.text)
            if length > 5 and rng.random() < 0.4:
                start = rng.randrange(length - 3)
                del client.text[start : start + 2]
            else:
                client.text.insert(rng.randrange(length + 1), f"<{round_}>")
            document.apply(client.doc.get_update(document.state_vector()))
        left.apply(right.diff(left.state_vector()))
        right.apply(left.diff(right.state_vector()))
        assert left.text() == right.text()
        assert left.clock() == right.clock()


def test_diff_is_exactly_what_the_remote_lacks() -> None:
    document, client = seeded_document()
    remote = Document()
    remote.apply(document.encode_state())
    client.text.insert(4, "sly ")
    document.apply(client.last())
    other = Client(6)
    other.receive(document.encode_state())
    del other.text[0:4]
    document.apply(other.last())

    missing = document.diff(remote.state_vector())
    assert len(missing) < len(document.encode_state())
    applied = remote.apply(missing)
    assert applied.changed
    assert remote.text() == document.text() == "sly quick brown fox"
    assert remote.clock() == document.clock()
    assert not remote.apply(missing).changed
    assert not remote.apply(document.diff(remote.state_vector())).changed


def test_diff_rejects_malformed_state_vectors() -> None:
    document, _ = seeded_document()
    for bad in (b"", b"\x01\x05", b"\x01\x05\x01\x00", b"\xff\xff"):
        with pytest.raises(CorruptStateVector):
            document.diff(bad)


def test_state_round_trips_through_encode_state() -> None:
    document, client = seeded_document()
    client.text.format(0, 3, {"bold": True})
    document.apply(client.last())
    client.text += " 😀 é"
    document.apply(client.last())
    copy = Document.from_state(document.encode_state())
    assert copy.text() == document.text() == "the quick brown fox 😀 é"
    assert copy.clock() == document.clock()
    assert copy.chunks() == document.chunks()
    with pytest.raises(CorruptUpdate):
        Document.from_state(b"\x05junk")


def test_a_document_can_be_used_from_a_worker_thread() -> None:
    # The server validates updates off the event loop: the Doc is created in one thread and
    # applied to in another (one thread at a time).
    document, client = seeded_document()
    client.text += " jumps"
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(document.apply(client.last())))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert isinstance(results[0], Applied) and results[0].changed
    assert document.text() == "the quick brown fox jumps"



# the stored clock -------------------------------------------------------------------------------


def assert_clocks_consistent(applied: Applied, document: Document, before: bytes) -> None:
    """`clock_json()` is what `clock.to_json()` gives, and both are the document's state after
    the update; `op_clock` holds at least what the update advanced (deletions may add more)."""
    assert applied.clock_json() == applied.clock.to_json()
    assert applied.clock == VectorClock.from_state_vector(applied.state_vector) == document.clock()
    assert applied.state_vector == document.state_vector()
    advanced = changed_entries(decode_state_vector(before), decode_state_vector(applied.state_vector))
    assert all(applied.op_clock.get(client) >= clock for client, clock in advanced.items())


def test_clock_json_is_the_state_and_clock_text_the_op_clock_on_every_kind_of_update() -> None:
    rng = random.Random(29)
    document = Document()
    clients = [Client(rng.randrange(1, 2**32)) for _ in range(60)] + [Client(2**53 - 1)]
    for step in range(600):
        client = rng.choice(clients)
        client.receive(document.encode_state())  # synced before it edits, like an editor
        length = len(client.text)
        if length and rng.random() < 0.2:
            start = rng.randrange(length)
            del client.text[start : min(length, start + rng.randrange(1, 4))]
        else:
            client.text.insert(rng.randrange(length + 1), "".join(rng.choices("xyz", k=3)))
        before = document.state_vector()
        applied = document.apply(client.last())
        assert applied.changed and not applied.pending
        assert_clocks_consistent(applied, document, before)
        if applied.op_type is OpType.INSERT:
            assert applied.op_clock.clocks == changed_entries(
                decode_state_vector(before), decode_state_vector(applied.state_vector)
            )
        if step % 50 == 0:  # an update that changes nothing
            again = document.apply(client.last())
            assert not again.changed and again.op_clock == VectorClock()
            assert again.clock_json() == again.clock.to_json() == applied.clock_json()
        assert json.loads(applied.clock_text()) == applied.op_clock.to_json()  # the log's text
        if step % 75 == 0:  # bulk loading between two applies: no observer records it
            other = rng.choice(clients)
            other.text += "bulk"
            document.apply_many([other.last()])
    assert len(document.clock()) > 50


def test_clock_json_after_loading_pending_updates_and_several_clients_at_once() -> None:
    first, second = Client(21), Client(22)
    first.text += "one"
    second.receive(first.last())
    second.text += " two"
    first.text += "!"
    document = Document.from_state(Client(23, "seed").last())
    before = document.state_vector()
    waiting = document.apply(second.last())  # depends on first's "one"
    assert waiting.pending and not waiting.changed
    assert waiting.clock_json() == waiting.clock.to_json() == {"23": 4}
    both = merge_updates(first.updates[0], first.last())  # two clients advance in one update
    before = document.state_vector()
    applied = document.apply(both)
    assert_clocks_consistent(applied, document, before)
    assert applied.clock_json() == {"21": 4, "22": 4, "23": 4}
    assert applied.op_clock == VectorClock({21: 4, 22: 4})
    assert sorted(document.text()) == sorted("seed" + "one!" + " two")  # interleaving is yrs's


def test_clock_json_returns_a_copy() -> None:
    document, client = seeded_document()
    client.text += "!"
    applied = document.apply(client.last())
    applied.clock_json()["5"] = 0
    assert applied.clock_json() == {"5": 20}
    client.text += "?"
    assert document.apply(client.last()).clock_json() == {"5": 21}


def test_clocks_stay_right_after_a_refused_update() -> None:
    document, client = seeded_document()
    client.text += "!"
    with pytest.raises(CorruptUpdate):
        document.apply(client.last()[:-1])
    before = document.state_vector()
    applied = document.apply(client.last())
    assert_clocks_consistent(applied, document, before)
    assert applied.op_clock == VectorClock({5: 20}) and applied.clock_json() == {"5": 20}

def test_the_stored_clock_stays_small_after_a_many_client_update() -> None:
    """One update from 2,000 clients stores 2,000 entries once; the edits after it store only
    their own client, not the document's whole state vector (docs/schema.md)."""
    crowd = merge_updates(*(Client(10_000 + k, "x").last() for k in range(2000)))
    document, client = seeded_document()
    client.receive(crowd)
    many = document.apply(crowd)
    assert len(json.loads(many.clock_text())) == 2000 and len(many.clock_json()) == 2001
    for ch in "abc":
        client.text += ch
        applied = document.apply(client.last())
        assert json.loads(applied.clock_text()) == {"5": applied.clocks[5]}
        assert len(applied.clock_text()) < 20 and len(applied.clock_json()) == 2001


def test_a_dropped_document_is_freed() -> None:
    # Its observers live as long as the pycrdt Doc; they must not keep the Document alive.
    document, client = seeded_document()
    client.text += "!"
    document.apply(client.last())
    ref = weakref.ref(document)
    del document
    gc.collect()
    assert ref() is None


def test_what_is_pending_is_left_out_of_the_encoded_state_until_it_is_in() -> None:
    """yrs's encoding leaves pending structs out, so a snapshot is only right when `pending()`
    is False (server/documents/rooms.py stores none before)."""
    client, other = Client(11), Client(12)
    client.text += "hello"
    client.text += " world"
    first, second = client.updates
    other.receive(first)
    other.receive(second)
    other.text += "!"
    document = Document()
    document.apply(first)
    assert not document.pending()
    document.apply(other.last())
    assert document.pending()
    assert Document.from_state(document.encode_state()).text() == "hello"  # the "!" is not in it
    loaded = Document()
    loaded.apply_many([first, other.last()])  # the replay path knows what waits too
    assert loaded.pending()
    document.apply(second)
    assert not document.pending() and document.text() == "hello world!"
    assert Document.from_state(document.encode_state()).text() == "hello world!"
