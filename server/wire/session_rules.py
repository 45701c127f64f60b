"""Session state (docs/protocol.md#4-session-state): which requests are legal in which state, the
rate limit, and the closing sequence, as a `ProtocolSession` the connection drives. Pure: frames
and `now` go in, messages and frames to send come out.

One word, one meaning: a *session* is one agent connection to `/ws`, from its `hello` to its
close (server/transport/agent.py's `AgentConnection` drives its `ProtocolSession`). The wire's
`session_id` (in `hello`) is that connection's `conn_id`: the id the logs, presence (`conn_id`
of a member) and the rooms' subscriptions know it by. A reconnect is a new session."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID

from server.core.errors import CLOSE_INTERNAL_ERROR, ErrorCode, RequestId
from server.wire import protocol_agents as agents
from server.wire import protocol_coordination as coordination
from server.wire import protocol_executions as executions
from server.wire import protocol_workflows as workflows
from server.wire.fields import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from server.wire.messages import (
    AwarenessSet,
    ClientMessage,
    Hello,
    Limits,
    ServerHello,
    SessionClosing,
    awareness_bytes,
    encode,
)
from server.wire.parsing import ProtocolError, is_batch, parse, parse_batch

# --- session state (docs/protocol.md#4-session-state) -----------------------------------------


class ConnState(StrEnum):
    """Where one connection is in its life (`ProtocolSession.conn_state`)."""

    CONNECTING = "connecting"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnEvent(StrEnum):
    """What moves a connection from one `ConnState` to the next (`TRANSITIONS`)."""

    ACCEPT = "accept"
    FAIL = "fail"
    TRANSPORT_CLOSED = "transport_closed"


TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (ConnState.CONNECTING, ConnEvent.ACCEPT): ConnState.READY,
    (ConnState.CONNECTING, ConnEvent.FAIL): ConnState.CLOSING,
    (ConnState.READY, ConnEvent.FAIL): ConnState.CLOSING,
    (ConnState.CONNECTING, ConnEvent.TRANSPORT_CLOSED): ConnState.CLOSED,
    (ConnState.READY, ConnEvent.TRANSPORT_CLOSED): ConnState.CLOSED,
    (ConnState.CLOSING, ConnEvent.TRANSPORT_CLOSED): ConnState.CLOSED,
}


class Rule(StrEnum):
    FIRST = "first"
    ALWAYS = "always"
    JOIN_SLOT = "join_slot"
    JOINED = "joined"
    OPEN_SLOT = "open_slot"
    OPEN = "open"
    TASK = "task"  # the handler checks the task's workspace is joined (not_member)


RULES: dict[str, Rule] = {
    "hello": Rule.FIRST,
    "ping": Rule.ALWAYS,
    "workspace.create": Rule.ALWAYS,
    "workspace.list": Rule.ALWAYS,
    "workspace.join": Rule.JOIN_SLOT,
    "workspace.leave": Rule.JOINED,
    "doc.create": Rule.JOINED,
    "doc.list": Rule.JOINED,
    "doc.open": Rule.OPEN_SLOT,
    "doc.close": Rule.OPEN,
    "doc.update": Rule.OPEN,
    "doc.resync": Rule.OPEN,
    "presence.list": Rule.JOINED,
    "awareness.set": Rule.JOINED,
    **{type_: Rule(rule) for type_, rule in coordination.RULES.items()},
    **{type_: Rule(rule) for type_, rule in agents.RULES.items()},
    **{type_: Rule(rule) for type_, rule in workflows.RULES.items()},
    **{type_: Rule(rule) for type_, rule in executions.RULES.items()},
}


class LocalProtocolError(RuntimeError):
    """The server drove the session wrongly (a bug here, never the client's doing)."""


@dataclass
class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up. `now` is a monotonic clock in s."""

    rate_per_s: float
    burst: int
    tokens: float = field(init=False)
    updated_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when taken, else the seconds until one is available."""
        if self.updated_at is not None:
            self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.updated_at) * self.rate_per_s)
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


@dataclass(frozen=True)
class Closing:
    """What to send to end a session (docs/protocol.md#44-the-closing-sequence)."""

    frames: tuple[str, ...]  # the `error` frame, then `session.closing`; both skip the queue
    code: int
    reason: str


class ProtocolSession:
    """The protocol state of one session (one agent connection), without I/O.

    The loop calls `accept` (or `fail`) once the token is checked, feeds every received frame to
    `receive`, and reports what handlers did (`joined`, `left`, `opened`, `closed_doc`,
    `invalid_update`). Bounds: at most `max_joined_workspaces` joined and `max_open_docs` open.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conn_state = ConnState.CONNECTING
        self.protocol = PROTOCOL_VERSION
        self.workspaces: set[UUID] = set()
        self.docs: dict[UUID, UUID] = {}  # open doc_id -> its workspace_id
        self.frames_received = 0
        self.batch = False  # the client's hello asked for batched frames, both ways (docs/protocol.md#3)
        self.presence_batch = False  # ... and for presence as `presence.batch` (docs/protocol.md#57)
        self.invalid_updates = 0
        self._bucket = TokenBucket(limits.max_messages_per_s, limits.max_message_burst)

    def _apply(self, event: ConnEvent) -> None:
        try:
            self.conn_state = TRANSITIONS[(self.conn_state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event.value} is not legal in state {self.conn_state.value}") from None

    def accept(self, hello: ServerHello) -> str:
        """connecting -> ready; returns the `hello` frame to send first."""
        self._apply(ConnEvent.ACCEPT)
        return encode(hello)

    def receive(self, frame: str | bytes, now: float) -> ClientMessage | ProtocolError | None:
        """Steps 1-4 of docs/protocol.md#43 for a frame of one message: a message to handle, an
        error to send, or None (the session is closing and the frame is discarded). `now` is a
        monotonic time in s."""
        if not self._count_frame():
            return None
        first = self.frames_received == 1
        result = parse(frame, self.limits.max_frame_bytes)
        if isinstance(result, ProtocolError) and result.code in (ErrorCode.UNSUPPORTED_FRAME, ErrorCode.FRAME_TOO_LARGE):
            return result
        return self._admit(result, now, first)

    def receive_frame(self, frame: str | bytes, now: float) -> list[ClientMessage | ProtocolError]:
        """`receive` for any frame: in a session whose `hello` asked for batches, a frame holding
        a JSON array gives one result per message, in order, each rate-limited and checked as if
        it had come alone (a `hello` inside a batch is not the first message). Empty while the
        session is closing. Without batches an array is one `invalid_message`."""
        if not (self.batch and is_batch(frame)):
            result = self.receive(frame, now)
            return [] if result is None else [result]
        if not self._count_frame():
            return []
        assert isinstance(frame, str)
        results = parse_batch(frame, self.limits.max_frame_bytes)
        if len(results) == 1 and isinstance(results[0], ProtocolError) and results[0].code is ErrorCode.FRAME_TOO_LARGE:
            return results
        return [self._admit(result, now, False) for result in results]

    def _count_frame(self) -> bool:
        """False while closing (the frame is discarded); counts the frame otherwise."""
        if self.conn_state is ConnState.CLOSING:
            return False
        if self.conn_state is not ConnState.READY:
            raise LocalProtocolError(f"frame received in state {self.conn_state.value}")
        self.frames_received += 1
        return True

    def _admit(self, result: ClientMessage | ProtocolError, now: float, first: bool) -> ClientMessage | ProtocolError:
        """Steps 3-4: the rate limit (one token per message), then the state rules."""
        wait_s = self._bucket.take(now)
        if wait_s > 0:
            re = result.re if isinstance(result, ProtocolError) else result.id
            return ProtocolError(ErrorCode.RATE_LIMITED, re, {"retry_after_ms": math.ceil(wait_s * 1000)})
        if isinstance(result, ProtocolError):
            return result
        return self._check(result, first) or result

    def _check(self, msg: ClientMessage, first: bool) -> ProtocolError | None:
        rule = RULES[msg.type]
        if rule is Rule.FIRST:
            assert isinstance(msg, Hello)
            if not first:
                return ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, msg.id)
            if msg.protocol not in SUPPORTED_VERSIONS:
                return ProtocolError(ErrorCode.UNSUPPORTED_VERSION, msg.id, {"supported": list(SUPPORTED_VERSIONS)})
            self.protocol = msg.protocol
            self.batch = msg.batch
            self.presence_batch = msg.presence_batch
        elif rule is Rule.JOIN_SLOT:
            ws_id = msg.workspace_id  # type: ignore[union-attr]
            if ws_id not in self.workspaces and len(self.workspaces) >= self.limits.max_joined_workspaces:
                return self._limit(msg.id, "max_joined_workspaces", self.limits.max_joined_workspaces)
        elif rule is Rule.JOINED:
            return self.check_joined(msg.workspace_id, msg.id)  # type: ignore[union-attr]
        elif rule is Rule.OPEN_SLOT:
            doc_id = msg.doc_id  # type: ignore[union-attr]
            if doc_id not in self.docs and len(self.docs) >= self.limits.max_open_docs:
                return self._limit(msg.id, "max_open_docs", self.limits.max_open_docs)
        elif rule is Rule.OPEN and msg.doc_id not in self.docs:  # type: ignore[union-attr]
            return ProtocolError(ErrorCode.DOC_NOT_OPEN, msg.id)
        return None

    @staticmethod
    def _limit(re: RequestId | None, name: str, value: int) -> ProtocolError:
        return ProtocolError(ErrorCode.LIMIT_EXCEEDED, re, {"limit": name, "value": value})

    def check_joined(self, workspace_id: UUID, re: RequestId | None = None) -> ProtocolError | None:
        """`not_member` unless this session joined the workspace (also for `doc.open` lookups)."""
        return None if workspace_id in self.workspaces else ProtocolError(ErrorCode.NOT_MEMBER, re)

    def joined(self, workspace_id: UUID) -> None:
        self.workspaces.add(workspace_id)

    def left(self, workspace_id: UUID) -> list[UUID]:
        """Forget the workspace; returns the session's documents in it, which are now closed."""
        self.workspaces.discard(workspace_id)
        closed = [doc_id for doc_id, ws_id in self.docs.items() if ws_id == workspace_id]
        for doc_id in closed:
            del self.docs[doc_id]
        return closed

    def opened(self, doc_id: UUID, workspace_id: UUID) -> None:
        if workspace_id not in self.workspaces:
            raise LocalProtocolError("document opened in a workspace the session has not joined")
        self.docs[doc_id] = workspace_id

    def closed_doc(self, doc_id: UUID) -> None:
        self.docs.pop(doc_id, None)

    def check_awareness(self, msg: AwarenessSet, max_awareness_bytes: int) -> ProtocolError | None:
        """Step 5 of `awareness.set` (docs/protocol.md#57): `doc_id`, when given, is open in this
        session and belongs to `workspace_id` (`doc_not_open`); `state` encodes to at most
        `max_awareness_bytes` bytes of compact JSON (`awareness_too_large`)."""
        if msg.doc_id is not None and self.docs.get(msg.doc_id) != msg.workspace_id:
            return ProtocolError(ErrorCode.DOC_NOT_OPEN, msg.id)
        size = awareness_bytes(msg.state)
        if size > max_awareness_bytes:
            details = {"max_awareness_bytes": max_awareness_bytes, "awareness_bytes": size}
            return ProtocolError(ErrorCode.AWARENESS_TOO_LARGE, msg.id, details)
        return None

    def invalid_update(self, re: RequestId | None = None, details: dict[str, Any] | None = None) -> ProtocolError:
        """Count one invalid update: `invalid_update`, or at the budget `too_many_invalid_updates`
        (which closes: pass it to `fail`)."""
        self.invalid_updates += 1
        if self.invalid_updates >= self.limits.max_invalid_updates:
            return ProtocolError(ErrorCode.TOO_MANY_INVALID_UPDATES, re, details)
        return ProtocolError(ErrorCode.INVALID_UPDATE, re, details)

    def fail(self, error: ErrorCode | ProtocolError, re: RequestId | None = None) -> Closing | None:
        """Start closing for an error with a close code: -> closing, and the frames to send.

        None when the session is already closing or closed (a second reason to close, such as a
        token expiring during a slow-consumer close, changes nothing).
        """
        err = error if isinstance(error, ProtocolError) else ProtocolError(error, re)
        # A server fault ends the session with the standard 1011 (docs/protocol.md#44).
        close_code = CLOSE_INTERNAL_ERROR if err.code is ErrorCode.INTERNAL_ERROR else err.close_code
        if close_code is None:
            raise LocalProtocolError(f"{err.code.value} does not close the session")
        if self.conn_state in (ConnState.CLOSING, ConnState.CLOSED):
            return None
        self._apply(ConnEvent.FAIL)
        message = err.message or err.code.message
        closing = SessionClosing(code=close_code, reason=err.code.value, message=message)
        return Closing((encode(err.frame()), encode(closing)), close_code, err.code.value)

    def transport_closed(self) -> None:
        """The close handshake finished or the connection dropped. Idempotent."""
        if self.conn_state is not ConnState.CLOSED:
            self._apply(ConnEvent.TRANSPORT_CLOSED)
