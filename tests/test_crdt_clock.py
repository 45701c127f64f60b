"""crdt.clock: state-vector decoding against real pycrdt vectors, clock comparison, JSON shape.

Pure tests: no network, no database; real pycrdt documents.
"""

from __future__ import annotations

import json
import random

import pytest
from pycrdt import Doc, Text, write_var_uint

from crdt.clock import (
    CorruptStateVector,
    Ordering,
    StateVectorReader,
    VectorClock,
    changed_entries,
    clock_json,
    decode_state_vector,
    delete_set_clock,
    encode_state_vector,
)
from crdt.document import CONTENT


def make_doc(client_id: int, text: str = "") -> tuple[Doc, Text]:
    doc: Doc = Doc(client_id=client_id)
    doc[CONTENT] = content = Text()
    if text:
        content += text
    return doc, content


def test_decoding_matches_what_each_client_inserted() -> None:
    # Clocks count UTF-16 units in Yjs; ASCII keeps the arithmetic obvious.
    big_client = 2**53 - 1
    doc, text = make_doc(7, "hello")
    for client_id, chunk in ((300, "x" * 200), (big_client, "y" * 20_000)):
        other, other_text = make_doc(client_id)
        other.apply_update(doc.get_update())
        other_text += chunk
        doc.apply_update(other.get_update(doc.get_state()))
    assert decode_state_vector(doc.get_state()) == {7: 5, 300: 200, big_client: 20_000}


def test_decoding_agrees_with_pycrdt_when_asking_for_a_diff() -> None:
    # pycrdt's own reading of a vector: a diff against our re-encoding of the decoded vector
    # must be exactly the diff against the original bytes.
    rng = random.Random(11)
    docs = [make_doc(1000 + 7919 * k)[0] for k in range(6)]
    hub, _ = make_doc(1)
    for step in range(60):
        doc = rng.choice(docs)
        doc.apply_update(hub.get_update(doc.get_state()))
        text: Text = doc[CONTENT]
        text.insert(rng.randrange(len(text) + 1), "ab" * rng.randrange(1, 80))
        hub.apply_update(doc.get_update(hub.get_state()))
        if step % 7 == 0:
            for peer in docs:
                state = peer.get_state()
                reencoded = encode_state_vector(decode_state_vector(state))
                assert hub.get_update(reencoded) == hub.get_update(state)
                assert VectorClock.from_state_vector(reencoded) == VectorClock.from_state_vector(state)


def test_encoding_a_single_client_vector_gives_pycrdts_bytes() -> None:
    doc, _ = make_doc(123456, "z" * 300)
    assert encode_state_vector({123456: 300}) == doc.get_state()
    assert encode_state_vector({}) == Doc().get_state() == b"\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing at all
        b"\x01\x05",  # one entry declared, clock missing
        b"\x01\x05\x01\x00",  # trailing byte
        b"\x02\x05\x01",  # two entries declared, one present
        b"\x01\x85",  # truncated varint
        b"\x01" + b"\xff" * 11 + b"\x01" + b"\x01",  # varint longer than 10 bytes
        write_var_uint(2**40) + b"\x01\x01",  # hostile count
        b"\x01" + write_var_uint(2**53) + b"\x01",  # client id beyond uint53
        b"\x02\x05\x01\x05\x02",  # duplicate client
    ],
)
def test_malformed_state_vectors_raise_corrupt_state_vector(data: bytes) -> None:
    with pytest.raises(CorruptStateVector):
        decode_state_vector(data)
    assert issubclass(CorruptStateVector, ValueError)


def test_random_garbage_never_escapes_as_another_error() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 40))
        try:
            clocks = decode_state_vector(data)
        except CorruptStateVector:
            continue
        assert encode_state_vector(clocks) == encode_state_vector(decode_state_vector(data))


def test_compare_orders_clocks() -> None:
    a = VectorClock({1: 3, 2: 5})
    assert a.compare(VectorClock({1: 3, 2: 5})) is Ordering.EQUAL
    assert a.compare(VectorClock({1: 3, 2: 6})) is Ordering.BEFORE
    assert a.compare(VectorClock({1: 3, 2: 5, 9: 1})) is Ordering.BEFORE
    assert a.compare(VectorClock({1: 2})) is Ordering.AFTER
    assert a.compare(VectorClock()) is Ordering.AFTER
    assert a.compare(VectorClock({1: 4, 2: 4})) is Ordering.CONCURRENT
    assert a.compare(VectorClock({9: 1})) is Ordering.CONCURRENT
    assert a < VectorClock({1: 3, 2: 6}) and a <= a and a >= VectorClock({2: 5})
    assert not (a < VectorClock({1: 4, 2: 4})) and not (a > VectorClock({1: 4, 2: 4}))


def test_dominates_includes_equality_and_treats_missing_clients_as_zero() -> None:
    a = VectorClock({1: 3})
    assert a.dominates(a)
    assert a.dominates(VectorClock({1: 2, 5: 0}))
    assert not a.dominates(VectorClock({5: 1}))
    assert VectorClock().dominates(VectorClock())
    assert VectorClock({1: 0}) == VectorClock() and hash(VectorClock({1: 0})) == hash(VectorClock())


def test_clocks_of_real_documents_order_as_their_histories() -> None:
    a, text_a = make_doc(1, "base")
    b, text_b = make_doc(2)
    b.apply_update(a.get_update())
    assert VectorClock.from_state_vector(a.get_state()).compare(
        VectorClock.from_state_vector(b.get_state())
    ) is Ordering.EQUAL
    text_a += " from a"
    text_b += " from b"
    clock_a = VectorClock.from_state_vector(a.get_state())
    clock_b = VectorClock.from_state_vector(b.get_state())
    assert clock_a.compare(clock_b) is Ordering.CONCURRENT
    b.apply_update(a.get_update(b.get_state()))
    merged = VectorClock.from_state_vector(b.get_state())
    assert merged > clock_a and merged > clock_b
    assert merged == VectorClock.merge([clock_a, clock_b])


def test_json_shape_is_small_string_keyed_and_round_trips() -> None:
    clock = VectorClock({2**53 - 1: 4, 17: 9})
    stored = clock.to_json()
    assert stored == {"17": 9, str(2**53 - 1): 4}
    assert VectorClock.from_json(json.loads(json.dumps(stored))) == clock
    assert VectorClock.from_json(json.dumps(stored)) == clock  # jsonb read without a codec
    assert VectorClock().to_json() == {}


@pytest.mark.parametrize("bad", [{"1": "3"}, {"1": True}, {"x": 1}, {"1": -1}, [1, 2]])
def test_from_json_rejects_malformed_objects(bad: object) -> None:
    with pytest.raises(ValueError):
        VectorClock.from_json(bad)  # type: ignore[arg-type]


def test_delete_set_clock_covers_the_deleted_items() -> None:
    doc, text = make_doc(42, "0123456789")
    deletions: list[bytes] = []
    doc.observe(lambda event: deletions.append(event.delete_set))
    with doc.transaction():
        del text[1:3]
        del text[5:7]  # positions after the first deletion: items 7 and 8
    assert delete_set_clock(deletions[-1]) == VectorClock({42: 9})
    assert delete_set_clock(b"\x00") == VectorClock()


# StateVectorReader: the incremental decoder behind Document.apply -----------------------------


def hand_encoded(entries: list[tuple[int, int]]) -> bytes:
    """A state vector with its entries in the given order (yrs writes them in hash-map order)."""
    return write_var_uint(len(entries)) + b"".join(write_var_uint(c) + write_var_uint(k) for c, k in entries)


def assert_reader_agrees_with_full_decoding(reader: StateVectorReader, data: bytes) -> None:
    """`read` must return, or raise, exactly what decoding from scratch gives."""
    before = (reader.data, reader.clocks, reader.json)
    try:
        expected = decode_state_vector(data)
    except CorruptStateVector:
        with pytest.raises(CorruptStateVector):
            reader.read(data)
        assert (reader.data, reader.clocks, reader.json) == before  # still the previous vector
        return
    changed = reader.read(data)
    assert changed == changed_entries(before[1], expected)
    assert reader.data == data and reader.clocks == expected
    assert list(reader.clocks) == list(expected)  # same entry order as the bytes
    assert reader.json == VectorClock(expected).to_json()


def test_state_vector_reader_agrees_with_full_decoding_on_random_histories() -> None:
    rng = random.Random(17)
    entries = [(rng.randrange(2**32), rng.randrange(1, 300)) for _ in range(30)]
    entries.append((2**53 - 1, 5))
    reader = StateVectorReader()
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.6:  # one client advances: the fast path, unless its varint grows
            k = rng.randrange(len(entries))
            entries[k] = (entries[k][0], entries[k][1] + rng.randrange(1, 40))
        elif roll < 0.7:  # several clients advance
            for k in rng.sample(range(len(entries)), 3):
                entries[k] = (entries[k][0], entries[k][1] + 1)
        elif roll < 0.75:
            entries.append((rng.randrange(2**32), rng.randrange(1, 10)))
        elif roll < 0.85:
            rng.shuffle(entries)  # another entry order for the same clocks
        elif roll < 0.9:  # swap two clients' clocks: same bytes length, two varints differ
            i, j = rng.sample(range(len(entries)), 2)
            (ci, ki), (cj, kj) = entries[i], entries[j]
            entries[i], entries[j] = (ci, kj), (cj, ki)
        # else: the same vector again
        assert_reader_agrees_with_full_decoding(reader, hand_encoded(entries))


def test_state_vector_reader_is_as_strict_as_decode_state_vector() -> None:
    # Mutating bytes of the previous vector in place keeps the length, so these all meet the
    # fast path's checks first; whatever it accepts must be exactly what a full decode accepts.
    rng = random.Random(23)
    base = hand_encoded([(rng.randrange(2**40), rng.randrange(1, 2**20)) for _ in range(12)])
    for _ in range(3000):
        reader = StateVectorReader()
        reader.read(base)
        data = bytearray(base)
        for _ in range(rng.choice((1, 1, 1, 2))):
            data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        assert_reader_agrees_with_full_decoding(reader, bytes(data))
    reader = StateVectorReader()
    reader.read(b"\x01\x05\x01")
    assert_reader_agrees_with_full_decoding(reader, b"\x01\x05\x00")  # a zero clock: kept, not in json
    assert reader.clocks == {5: 0} and reader.json == {}
    for bad in (b"\x01\x05\x81", b"\x01\x85\x01", b"\x02\x05\x01"):
        assert_reader_agrees_with_full_decoding(reader, bad)


def test_state_vector_reader_never_mutates_what_it_handed_out() -> None:
    reader = StateVectorReader()
    reader.read(hand_encoded([(7, 1), (9, 1)]))
    clocks, json_clock = reader.clocks, reader.json
    reader.read(hand_encoded([(7, 2), (9, 1)]))  # fast path
    reader.read(hand_encoded([(7, 2), (9, 1), (11, 1)]))  # full decode
    assert clocks == {7: 1, 9: 1} and json_clock == {"7": 1, "9": 1}
    assert reader.clocks == {7: 2, 9: 1, 11: 1}
    assert clock_json(reader.clocks) == reader.json == {"7": 2, "9": 1, "11": 1}
