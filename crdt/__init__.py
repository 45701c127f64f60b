"""Tandem's document model over pycrdt: operations, clocks, sequence numbers, replay. Pure: no I/O.

Imports only pycrdt and the standard library (no asyncio, Starlette, asyncpg or Redis).
"""

from crdt.clock import CorruptStateVector, Ordering, VectorClock, decode_state_vector, encode_state_vector
from crdt.document import CONTENT, Applied, CorruptUpdate, Document, DocumentPanicked, ItemOutOfOrder, OriginsMissing, UpdateAhead, UpdateTooLarge
from crdt.ids import MAX_CLOCK
from crdt.operations import Operation, OpType, Origin, Snapshot, classify
from crdt.replay import ReplayError, Span, Verification, blame, rebuild, verify

__all__ = [
    "CONTENT",
    "MAX_CLOCK",
    "Applied",
    "CorruptStateVector",
    "CorruptUpdate",
    "Document",
    "DocumentPanicked",
    "ItemOutOfOrder",
    "OriginsMissing",
    "OpType",
    "Operation",
    "Ordering",
    "Origin",
    "ReplayError",
    "Snapshot",
    "Span",
    "UpdateAhead",
    "UpdateTooLarge",
    "Verification",
    "VectorClock",
    "blame",
    "classify",
    "decode_state_vector",
    "encode_state_vector",
    "rebuild",
    "verify",
]
