"""The update checker's wire (server/documents/checker.py): requests and replies over its pipes.

All integers little-endian. Request = u32 count, u32 byte length of the rest, then per update
the u32 length and bytes of the state to apply it to (empty: an empty document) and its own u32
length and bytes. Reply = u32 byte length of the rest, then per update either the u32 length of
a UTF-8 reason, or VALID followed by its measures: u32 clients, u32 apply time in microseconds
(NOT_TIMED: not timed), u32 count of deletion-reach entries, then per entry u64 client and u32
clock. Pure: the standard library only, so the worker imports it fast.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

VALID = 0xFFFFFFFF  # in a reply: this update is valid (its measures follow, not a reason)
NOT_TIMED = 0xFFFFFFFF  # in a reply: the update was applied to an empty document, not timed
U32 = struct.Struct("<I")  # a reply starts with its length as one
_U32_PAIR = struct.Struct("<II")
_MEASURES = struct.Struct("<IIII")  # VALID, clients, apply time (us), deletion-reach entries
_REACH = struct.Struct("<QI")  # client, clock


@dataclass(frozen=True, slots=True)
class Measured:
    """A valid update's measures (crdt/cost.py): `clients` its struct groups; `apply_cpu_s` the
    CPU time of applying it to the room's state (`UpdateChecker.check_against`), None when it was
    applied to an empty document only; `reach` the (client, clock) its deletions reach beyond
    its own structs (`deletion_reach`)."""

    clients: int
    apply_cpu_s: float | None = None
    reach: tuple[tuple[int, int], ...] = ()


# What the worker says of one update: why it is refused, or its measures.
Verdict = str | Measured


def encode_request(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    parts = []
    for state, update in items:
        parts.append(U32.pack(len(state)))
        parts.append(state)
        parts.append(U32.pack(len(update)))
        parts.append(update)
    body = b"".join(parts)
    return _U32_PAIR.pack(len(items), len(body)) + body


def read_request(stream: BinaryIO) -> list[tuple[bytes, bytes]] | None:
    """The next request's (state, update) items, or None at end of input (the server closed
    the pipe). Two reads per request, however many items it holds."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    count, size = _U32_PAIR.unpack(header)
    body = stream.read(size)
    items = []
    offset = 0
    for _ in range(count):
        pair = []
        for _ in range(2):
            (length,) = U32.unpack_from(body, offset)
            offset += 4
            pair.append(body[offset : offset + length])
            offset += length
        items.append((pair[0], pair[1]))
    return items


def encode_reply(verdicts: Sequence[Verdict]) -> bytes:
    parts = []
    for verdict in verdicts:
        if isinstance(verdict, Measured):
            timed = NOT_TIMED if verdict.apply_cpu_s is None else min(round(verdict.apply_cpu_s * 1e6), NOT_TIMED - 1)
            parts.append(_MEASURES.pack(VALID, verdict.clients, timed, len(verdict.reach)))
            parts.extend(_REACH.pack(client, clock) for client, clock in verdict.reach)
        else:
            reason = verdict.encode()
            parts.append(U32.pack(len(reason)))
            parts.append(reason)
    body = b"".join(parts)
    return U32.pack(len(body)) + body


def decode_reply(body: bytes, count: int) -> list[Verdict]:
    """The verdicts in a reply's body (after its length). Raises ValueError (or struct.error)
    if it is malformed."""
    verdicts: list[Verdict] = []
    offset = 0
    for _ in range(count):
        (length,) = U32.unpack_from(body, offset)
        if length == VALID:
            _, clients, timed, entries = _MEASURES.unpack_from(body, offset)
            offset += _MEASURES.size
            reach: tuple[tuple[int, int], ...] = ()
            if entries:
                reach = tuple(_REACH.unpack_from(body, offset + i * _REACH.size) for i in range(entries))
                offset += entries * _REACH.size
            verdicts.append(Measured(clients, None if timed == NOT_TIMED else timed / 1e6, reach))
        else:
            offset += 4
            verdicts.append(body[offset : offset + length].decode(errors="replace"))
            offset += length
    if offset != len(body):
        raise ValueError(f"reply has {len(body) - offset} bytes after {count} verdicts")
    return verdicts
