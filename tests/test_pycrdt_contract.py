"""The pycrdt internals Tandem relies on, each with the exact shape it uses.

pycrdt is pinned to a tested range (pyproject.toml), but crdt/ and server/ reach past its public
API for speed: the native document under `Doc`, raw observer events, the native `Doc`
constructor and the position fields of `Decoder`. Each test names the Tandem module that
depends on what it checks, so a pycrdt release that changes one fails here first, loudly.
Pure tests: no network, no database.
"""

from __future__ import annotations

import pycrdt
import pytest
from pycrdt import Decoder, Doc, Text, write_var_uint
from pycrdt._pycrdt import Doc as NativeDoc

from crdt.clock import decode_state_vector, delete_set_clock
from crdt.document import CONTENT, _is_panic


def relied_on_by(module: str, what: str) -> str:
    return f"pycrdt {pycrdt.__version__} changed {what}, which {module} relies on"


def editor(client_id: int, text: str) -> tuple[Doc, Text, list[bytes]]:
    """A pycrdt document playing a client: its root text holds `text`; every transaction's
    update is appended to the returned list."""
    doc: Doc = Doc(client_id=client_id)
    doc[CONTENT] = root = Text()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    root += text
    return doc, root, updates


def nonzero(state_vector: bytes) -> dict[int, int]:
    return {client: clock for client, clock in decode_state_vector(state_vector).items() if clock}


def server_doc() -> tuple[Doc, Text]:
    doc: Doc = Doc()
    doc[CONTENT] = root = Text()
    return doc, root


def native_apply(doc: Doc, update: bytes) -> None:
    """What `crdt.document.Document._apply_native` does."""
    native = doc._doc
    txn = native.create_transaction()
    try:
        try:
            native.apply_update(txn, update)
        finally:
            txn.commit()
    finally:
        txn.drop()


# crdt/document.py: the native document under pycrdt.Doc ---------------------------------------


def test_doc_holds_its_native_document_as_underscore_doc() -> None:
    doc, _ = server_doc()
    why = relied_on_by("crdt/document.py (Document.__init__, _apply_native)", "Doc._doc")
    assert isinstance(getattr(doc, "_doc", None), NativeDoc), why
    for name in ("create_transaction", "apply_update", "observe", "get_state"):
        assert callable(getattr(doc._doc, name, None)), f"{why}: native Doc.{name}"


def test_a_native_transaction_applies_an_update_the_wrapper_then_reads() -> None:
    _, _, updates = editor(5, "héllo")
    doc, root = server_doc()
    native_apply(doc, updates[-1])
    why = relied_on_by(
        "crdt/document.py (Document._apply_native)", "native create_transaction/apply_update/commit/drop"
    )
    assert str(root) == "héllo", why
    assert decode_state_vector(doc.get_state()) == {5: 5}, why
    # The native transaction, dropped, leaves the wrapper free to open its own.
    with doc.transaction():
        pass
    _, _, more = editor(6, "!")
    doc.apply_update(more[-1])
    assert len(str(root)) == 6, why


def test_native_apply_update_raises_value_error_for_bytes_that_are_no_update() -> None:
    doc, root = server_doc()
    why = relied_on_by(
        "crdt/document.py (_raise_corrupt: ValueError means CorruptUpdate)", "native apply_update's error"
    )
    for garbage in (b"\xff\xff\xff", b"\x01", b"garbage bytes here"):
        with pytest.raises(ValueError):
            native_apply(doc, garbage)
    assert str(root) == "" and doc.get_state() == b"\x00", why


def test_a_yrs_panic_surfaces_as_pyo3_runtime_panic_exception() -> None:
    doc, _ = server_doc()
    native_apply(doc, editor(7, "hello")[2][-1])
    # A struct at clock 2**32 - 1 after clock 5: yrs panics pushing it (crdt/ids.py refuses it
    # before yrs sees it; here it reaches yrs on purpose). The document is thrown away after.
    data = b"x"
    wrapping = (
        b"\x01\x01" + write_var_uint(7) + write_var_uint(2**32 - 1) + b"\x04\x01\x07content"
        + write_var_uint(len(data)) + data + b"\x00"
    )  # fmt: skip
    with pytest.raises(BaseException) as raised:
        native_apply(doc, wrapping)
    why = relied_on_by("crdt/document.py (_is_panic) and server/documents/checker.py", "how a Rust panic surfaces")
    assert _is_panic(raised.value), f"{why}: got {type(raised.value).__module__}.{type(raised.value).__name__}"
    assert not isinstance(raised.value, Exception), why  # caught as BaseException on purpose


# crdt/capture.py: raw observer events ----------------------------------------------------------


def test_native_observe_passes_raw_transaction_events_with_states_and_delete_set() -> None:
    client, client_text, updates = editor(5, "hello")
    doc, _ = server_doc()
    events = []
    kinds = []

    def on_transaction(event: pycrdt.TransactionEvent) -> None:
        # Read inside the callback, as Capture does: the event is invalid once it returns.
        kinds.append(type(event))
        events.append((event.before_state, event.after_state, event.delete_set))

    subscription = doc._doc.observe(on_transaction)
    why = relied_on_by("crdt/capture.py (Capture.on_transaction)", "the raw TransactionEvent")
    assert isinstance(subscription, pycrdt.Subscription), why

    native_apply(doc, updates[-1])
    assert kinds == [pycrdt.TransactionEvent], why
    before, after, delete_set = events[0]
    # yrs may list the clients an update touches at clock 0: compare decoded, zeros dropped.
    assert nonzero(before) == {}, why
    assert after == doc.get_state(), why
    assert delete_set == b"\x00", f"{why}: no deletion is an empty delete set, b'\\x00'"

    del client_text[1:3]
    native_apply(doc, updates[-1])
    assert len(events) == 2, why
    assert nonzero(events[1][0]) == nonzero(after) == {5: 5}, why
    assert delete_set_clock(events[1][2]).clocks == {5: 3}, f"{why}: delete_set encodes the deleted ids"

    # A duplicate changes nothing and fires nothing: `Applied.changed` is whether it fired.
    native_apply(doc, updates[0])
    assert len(events) == 2, f"{why}: an update the document already holds must not fire observers"
    subscription.drop()
    del client


def test_text_integrated_observe_passes_raw_text_events() -> None:
    _, _, updates = editor(5, "héllo")
    doc, root = server_doc()
    events = []
    why = relied_on_by("crdt/document.py and crdt/capture.py (Capture.on_text)", "Text.integrated or the raw TextEvent")
    integrated = root.integrated
    subscription = integrated.observe(
        lambda event: events.append((event.target.len(event.transaction), [dict(d) for d in event.delta]))
    )
    native_apply(doc, updates[-1])
    # Length and offsets in UTF-8 bytes, read inside the transaction the event carries.
    assert events == [(6, [{"insert": "héllo"}])], why
    subscription.drop()  # held until here: a dropped subscription stops firing


# server/documents/checker.py: the native Doc built directly --------------------------------------------


def test_native_doc_builds_from_three_positional_defaults_and_applies_to_its_root_text() -> None:
    _, _, updates = editor(9, "abc")
    why = relied_on_by("server/documents/checker.py (check_updates)", "pycrdt._pycrdt.Doc(client_id, skip_gc, guid)")
    doc = NativeDoc(None, None, None)
    txn = doc.create_transaction()
    try:
        root = doc.get_or_insert_text(txn, CONTENT)
        doc.apply_update(txn, updates[-1])
        txn.commit()
        assert root.get_string(txn) == "abc", why
        assert decode_state_vector(doc.get_state(txn)) == {9: 3}, why
    finally:
        txn.drop()


# server/wire/y_protocols.py: Decoder's position fields --------------------------------------------------


def test_decoder_exposes_its_stream_position_and_remaining_length() -> None:
    why = relied_on_by("server/wire/y_protocols.py (_Decoder.read_var_uint)", "Decoder.stream/i0/length")
    frame = write_var_uint(300) + write_var_uint(2) + b"ab"
    decoder = Decoder(frame)
    assert (decoder.stream, decoder.i0, decoder.length) == (frame, 0, len(frame)), why
    assert decoder.read_var_uint() == 300, why
    assert (decoder.i0, decoder.length) == (2, len(frame) - 2), why
    assert decoder.read_message() == b"ab", why
    assert (decoder.i0, decoder.length) == (len(frame), 0), why
    assert decoder.read_message() is None, why


def test_decoder_read_message_goes_through_an_overridden_read_var_uint() -> None:
    calls = []

    class Counting(Decoder):
        def read_var_uint(self) -> int:
            calls.append(self.i0)
            return super().read_var_uint()

    assert Counting(write_var_uint(1) + b"z").read_message() == b"z"
    why = relied_on_by("server/wire/y_protocols.py (_Decoder bounds lengths read by read_message)", "Decoder.read_message")
    assert calls == [0], why
