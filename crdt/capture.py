"""What the observers of a `crdt.document.Document` saw during one `apply` transaction.

Pure: standard library only; the callbacks receive pycrdt's raw (_pycrdt) events.
"""

from __future__ import annotations

from typing import Any

EMPTY_STATE_VECTOR = b"\x00"
EMPTY_DELETE_SET = b"\x00"


class Capture:
    """Collects what the observers saw during one `apply` transaction.

    The observers stay subscribed for the document's lifetime (subscribing and dropping them
    on every `apply` cost 5-20 us) and record only while `active`, so other transactions
    (`apply_many`) pass through them at the cost of a call. The callbacks hold this object,
    not the `Document`: a cycle through yrs-held callbacks would never be freed.

    `in_sync` says the document's reader holds the current state vector: every change to the
    document fires `on_transaction`, which clears it outside `apply`. While it holds, the
    transaction's `before` is the reader's vector and is not read (encoding a state vector is
    linear in the number of clients: about 6 us for 100).
    """

    __slots__ = ("active", "in_sync", "with_delta", "length_before", "fired", "delete_set",
                 "before", "after", "length_after", "delta")

    def __init__(self) -> None:
        self.start(False, 0)
        self.active = False
        self.in_sync = True  # an empty document and an empty reader

    def start(self, with_delta: bool, length_before: int) -> None:
        self.active = True
        self.with_delta = with_delta
        self.length_before = length_before
        self.fired = False
        self.delete_set = EMPTY_DELETE_SET
        self.before = EMPTY_STATE_VECTOR
        self.after = EMPTY_STATE_VECTOR
        self.length_after: int | None = None
        self.delta: list[dict[str, Any]] | None = None

    def on_transaction(self, event: Any) -> None:
        if not self.active:
            self.in_sync = False
            return
        self.fired = True
        self.delete_set = event.delete_set
        self.after = event.after_state
        if not self.in_sync:
            self.before = event.before_state

    def on_text(self, event: Any) -> None:
        if self.active:
            self.length_after = event.target.len(event.transaction)
            if self.with_delta or self.length_after == self.length_before:
                self.delta = [dict(item) for item in event.delta]
