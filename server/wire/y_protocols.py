"""The y-protocols wire of the `/yjs` endpoint (docs/protocol.md section 11), pure: bytes in,
typed messages or a refusal out; the messages the server sends. Read and written with pycrdt's
own helpers (`YMessageType`, `Decoder`, `write_message`, `create_update_message`), never with
hand-written framing. `CLOSE_CODES` maps each refusal to the close code y-websocket sees
(section 11.4)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pycrdt import (
    Decoder,
    Encoder,
    YMessageType,
    YSyncMessageType,
    create_update_message,
    write_message,
)

from server.core.errors import ErrorCode
from server.wire.protocol import awareness_bytes

# y-protocols message types pycrdt has no enum for (y-websocket: messageAuth, messageQueryAwareness).
AUTH = 2
QUERY_AWARENESS = 3
PERMISSION_DENIED = 0  # y-protocols/auth
EMPTY_UPDATE = b"\x00\x00"  # Yjs's update with no structs and no deletions

# Limits of this endpoint (the others are the main protocol's, from Settings).
MAX_AWARENESS_ENTRIES = 4096  # client states in one awareness message (it may relay a whole room's)
_MAX_VARUINT_BYTES = 8  # lib0 refuses integers beyond 53 bits; 8 bytes hold 56

CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_MESSAGE: 4400,
    ErrorCode.UNSUPPORTED_FRAME: 4400,
    ErrorCode.LIMIT_EXCEEDED: 4400,
    ErrorCode.UNAUTHORIZED: 4401,
    ErrorCode.FORBIDDEN: 4403,
    ErrorCode.NOT_MEMBER: 4403,  # removed from the workspace while connected
    ErrorCode.WORKSPACE_FULL: 4403,
    ErrorCode.NOT_FOUND: 4404,
    ErrorCode.FRAME_TOO_LARGE: 4413,
    ErrorCode.AWARENESS_TOO_LARGE: 4413,
    ErrorCode.INVALID_UPDATE: 4422,
    ErrorCode.UPDATE_TOO_COSTLY: 4422,
    ErrorCode.TOKEN_EXPIRED: 4440,
    ErrorCode.TOKEN_REVOKED: 4401,
    ErrorCode.INTERNAL_ERROR: 1011,
    ErrorCode.SERVER_SHUTDOWN: 1012,  # "service restart": y-websocket reconnects and resyncs
    ErrorCode.SLOW_CONSUMER: 1013,  # "try again later": y-websocket reconnects and resyncs
    ErrorCode.UNAVAILABLE: 1013,  # the database was away: the resync resends the update
    ErrorCode.INVALID_UTF8: 1007,  # RFC 6455 8.1 (a text frame, which /yjs does not use anyway)
}


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """Sync step 2 or update: both carry one Yjs v1 update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    payload: bytes  # the awareness update inside the message (checked: it decodes)


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


@dataclass(frozen=True, slots=True)
class AuthMessage:
    pass


@dataclass(frozen=True, slots=True)
class FrameRefused:
    """A y-websocket frame (or what it asks for) the server will not take: the connection
    closes with `close_code` (section 11.4)."""

    code: ErrorCode
    detail: str = ""

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]


Message = SyncStep1 | SyncUpdate | AwarenessUpdate | QueryAwareness | AuthMessage


class _TooManyClients(ValueError):
    pass


class _StateTooLarge(ValueError):
    pass


class _Decoder(Decoder):
    """pycrdt's decoder with lib0's bound on integers: a long run of continuation bytes is refused
    instead of growing one Python integer (quadratic time)."""

    def read_var_uint(self) -> int:
        end = min(self.i0 + _MAX_VARUINT_BYTES, len(self.stream))
        if not any(b < 0x80 for b in self.stream[self.i0 : end]):
            raise ValueError("integer too long or truncated")
        return super().read_var_uint()

    def read_payload(self) -> bytes:
        """One varUint8Array (length-prefixed bytes) that must be all that is left."""
        payload = self.read_message()
        if payload is None or self.length != 0:
            raise ValueError("truncated message or trailing bytes")
        return payload


def parse(frame: bytes | str | None, max_frame_bytes: int, max_awareness_bytes: int) -> Message | FrameRefused:
    """One client frame: a message, or why it is refused. Never raises for client input."""
    if not isinstance(frame, bytes):
        return FrameRefused(ErrorCode.UNSUPPORTED_FRAME, "y-websocket messages are binary frames")
    if len(frame) > max_frame_bytes:
        return FrameRefused(ErrorCode.FRAME_TOO_LARGE, f"{len(frame)} bytes > {max_frame_bytes}")
    try:
        kind, rest = frame[0], frame[1:]
        if kind == YMessageType.SYNC:
            step, payload = rest[0], _Decoder(rest[1:]).read_payload()
            if step == YSyncMessageType.SYNC_STEP1:
                return SyncStep1(payload)
            if step in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
                return SyncUpdate(payload)
            raise ValueError(f"unknown sync message type {step}")
        if kind == YMessageType.AWARENESS:
            payload = _Decoder(rest).read_payload()
            _check_awareness(payload, max_awareness_bytes)
            return AwarenessUpdate(payload)
        if kind == QUERY_AWARENESS and len(rest) == 0:
            return QueryAwareness()
        if kind == AUTH:
            return AuthMessage()  # y-protocols defines none for clients to send; ignored
    except _TooManyClients as exc:
        return FrameRefused(ErrorCode.LIMIT_EXCEEDED, str(exc))
    except _StateTooLarge as exc:
        return FrameRefused(ErrorCode.AWARENESS_TOO_LARGE, str(exc))
    except (ValueError, IndexError, RuntimeError) as exc:  # RecursionError: deeply nested JSON
        return FrameRefused(ErrorCode.INVALID_MESSAGE, str(exc)[:80])
    return FrameRefused(ErrorCode.INVALID_MESSAGE, f"unknown message type {frame[0]}")


def _check_awareness(payload: bytes, max_awareness_bytes: int) -> None:
    """Check an awareness update decodes (count, then client id, clock and JSON state per
    client) with bounded integers, and that each state is within `max_awareness_bytes` as compact
    JSON (as `awareness.set` measures it), before pycrdt's `Awareness` (unbounded) reads it."""
    decoder = _Decoder(payload)
    count = decoder.read_var_uint()
    if count > MAX_AWARENESS_ENTRIES:
        raise _TooManyClients(f"awareness update for {count} clients")
    for _ in range(count):
        decoder.read_var_uint()  # client id
        decoder.read_var_uint()  # clock
        text = decoder.read_var_string()
        state = json.loads(text) if text else None
        if state is not None and not isinstance(state, dict):
            raise ValueError("an awareness state is a JSON object or null")
        if (size := awareness_bytes(state)) > max_awareness_bytes:
            raise _StateTooLarge(f"an awareness state of {size} bytes > {max_awareness_bytes}")
    if decoder.length != 0:
        raise ValueError("trailing bytes after the awareness update")


def sync_step1_message(state_vector: bytes) -> bytes:
    """Sync step 1: the server's state vector; the client answers with what the server lacks."""
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1]) + write_message(state_vector)


def sync_step2_message(update: bytes) -> bytes:
    """Sync step 2: the answer to the client's step 1, everything it lacks as one update."""
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2]) + write_message(update)


def permission_denied_message(reason: str) -> bytes:
    """y-protocols/auth permission denied: y-websocket logs the reason and stays connected."""
    encoder = Encoder()
    encoder.write_var_uint(AUTH)
    encoder.write_var_uint(PERMISSION_DENIED)
    encoder.write_var_string(reason)  # ASCII only: pycrdt writes the length in characters
    return encoder.to_bytes()


_last_update: tuple[bytes, bytes] = (b"", b"")


def update_message(update: bytes) -> bytes:
    """The sync update message for an operation, built once for all of a room's subscribers
    (the room hands each of them the same `update` object in turn)."""
    global _last_update
    if _last_update[0] is not update:
        _last_update = (update, create_update_message(update))
    return _last_update[1]
