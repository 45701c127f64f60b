"""Updates that cost a room far more than their size suggests, built with pycrdt as a client
would make them (docs/protocol.md section 7: `max_update_clients`, `max_update_apply_ms`)."""

from __future__ import annotations

from pycrdt import ContentAttribute, Doc, Encoder, IdMap, Text, get_state

from crdt.clock import decode_state_vector


def one_item_state(chars: int) -> bytes:
    """A document whose text is one item of `chars` characters (a single paste)."""
    doc = Doc()
    doc.get("content", type=Text).insert(0, "x" * chars)
    return doc.get_update()


def deletion_only_update(state: bytes, ranges: int) -> bytes:
    """What a client holding `state` (one item) sends after deleting every other character of
    its first `2 * ranges`: no structs, and a delete set (built with pycrdt's `IdMap`) of
    `ranges` one-character ranges, 3-4 bytes each. Against an empty document it does nothing;
    against `state` each range splits the item, copying its tail. (Deleting them through a
    pycrdt Text takes minutes: each deletion walks the text.)"""
    (client,) = decode_state_vector(get_state(state))
    deleted = IdMap()
    mark = [ContentAttribute("deleted", True)]  # an IdMap ignores ranges without attributes
    for i in range(ranges):
        deleted.insert(client, 2 * i, 1, mark)
    return b"\x00" + deleted.as_id_set().encode()  # no struct groups, then the delete set


def deletions_ahead(client: int, start: int, ranges: int) -> bytes:
    """Deletions of `ranges` one-clock ranges of `client`'s items from clock `start` on, items no
    document holds yet: yrs keeps them waiting and applies them, splitting, when a later update
    brings those items (e.g. `client` pasting that many characters)."""
    deleted = IdMap()
    mark = [ContentAttribute("deleted", True)]
    for i in range(ranges):
        deleted.insert(client, start + 2 * i, 1, mark)
    return b"\x00" + deleted.as_id_set().encode()


def many_clients_update(count: int, first_client: int = 1_000_000) -> bytes:
    """A v1 update of `count` struct groups, one per client, each a one-clock GC struct (about
    7 bytes a client, written with pycrdt's lib0 encoder): applied, it adds `count` entries to
    the document's state vector."""
    enc = Encoder()
    enc.write_var_uint(count)
    for client in range(first_client, first_client + count):
        for value in (1, client, 0, 0, 1):  # one struct, client, clock 0; GC struct info, length
            enc.write_var_uint(value)
    enc.write_var_uint(0)  # an empty delete set
    return enc.to_bytes()
