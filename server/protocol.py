"""Sans-I/O core of the wire protocol (docs/protocol.md): messages, `parse`, `encode`, session state.

Rule 1: nothing here awaits, reads a clock or touches a socket. Frames and `now` go in; typed
messages, `ProtocolError` values and frames to send come out. Rule 2: no import of asyncio,
starlette, asyncpg or redis. The session loop (server/session.py) drives a `Session`; any change
here updates docs/protocol.md and tests/test_protocol.py with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, Union
from uuid import UUID

import pydantic_core
from pydantic import AwareDatetime, BaseModel, Field, StrictBool, TypeAdapter, ValidationError

from server import protocol_coordination as coordination
from server.errors import CLOSE_INTERNAL_ERROR, ErrorCode, RequestId, error_frame
from server.wire import (  # noqa: F401 - re-exported: the protocol's field types live in server/wire.py
    B64,
    EMPTY_STATE_VECTOR,
    MAX_ERROR_DETAILS,
    MAX_REQUEST_ID_CHARS,
    MAX_SAFE_INTEGER,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    B64Out,
    B64Update,
    ContentType,
    Name,
    Out,
    ReqId,
    Request,
    Role,
    ShortName,
    StateVector,
    Visibility,
    _request_id,
)

# --- client messages (docs/protocol.md#5-messages) -------------------------------------------


class Hello(Request):
    type: Literal["hello"] = "hello"
    id: ReqId | None = None
    protocol: Annotated[int, Field(ge=1, le=2**31 - 1)]
    client: Name | None = None
    batch: StrictBool = False  # the client reads frames holding a JSON array of messages (docs/protocol.md#3)
    presence_batch: StrictBool = False  # presence reaches the client as `presence.batch` (docs/protocol.md#57)


class Ping(Request):
    type: Literal["ping"] = "ping"
    id: ReqId | None = None


class WorkspaceCreate(Request):
    type: Literal["workspace.create"] = "workspace.create"
    id: ReqId | None = None
    name: Name
    # Not `type`: the envelope's `type` is the message type (docs/protocol.md#54-workspaces).
    workspace_type: ShortName = "general"
    visibility: Visibility = "private"
    max_members: Annotated[int, Field(ge=1, le=1000)] = 100


class WorkspaceList(Request):
    type: Literal["workspace.list"] = "workspace.list"
    id: ReqId | None = None


class WorkspaceJoin(Request):
    type: Literal["workspace.join"] = "workspace.join"
    id: ReqId | None = None
    workspace_id: UUID


class WorkspaceLeave(Request):
    type: Literal["workspace.leave"] = "workspace.leave"
    id: ReqId | None = None
    workspace_id: UUID


class DocCreate(Request):
    type: Literal["doc.create"] = "doc.create"
    id: ReqId | None = None
    workspace_id: UUID
    title: Name
    content_type: ContentType = "text"
    language: ShortName | None = None


class DocList(Request):
    type: Literal["doc.list"] = "doc.list"
    id: ReqId | None = None
    workspace_id: UUID


class DocOpen(Request):
    type: Literal["doc.open"] = "doc.open"
    id: ReqId | None = None
    doc_id: UUID
    state_vector: StateVector = EMPTY_STATE_VECTOR


class DocClose(Request):
    type: Literal["doc.close"] = "doc.close"
    id: ReqId | None = None
    doc_id: UUID


class DocUpdate(Request):
    type: Literal["doc.update"] = "doc.update"
    id: ReqId | None = None
    doc_id: UUID
    update: B64Update
    fence: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)] | None = None  # docs/protocol.md#121


class DocResync(Request):
    type: Literal["doc.resync"] = "doc.resync"
    id: ReqId | None = None
    doc_id: UUID
    state_vector: StateVector = EMPTY_STATE_VECTOR


class PresenceList(Request):
    type: Literal["presence.list"] = "presence.list"
    id: ReqId | None = None
    workspace_id: UUID


class AwarenessSet(Request):
    type: Literal["awareness.set"] = "awareness.set"
    id: ReqId | None = None
    workspace_id: UUID
    doc_id: UUID | None = None
    state: dict[str, Any] | None  # required; null clears (docs/protocol.md#57-presence-and-awareness)


ClientMessage = Union[  # type: ignore[valid-type]
    (
        Hello, Ping, WorkspaceCreate, WorkspaceList, WorkspaceJoin, WorkspaceLeave, DocCreate, DocList,
        DocOpen, DocClose, DocUpdate, DocResync, PresenceList, AwarenessSet,
        *coordination.CLIENT_MESSAGES,  # locks, state, tasks, members (docs/protocol.md section 12)
    )
]  # fmt: skip
CLIENT_MESSAGES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls for cls in ClientMessage.__args__  # type: ignore[attr-defined]
}
_CLIENT_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])
MAX_BATCH_MESSAGES = 128  # messages in one batched client frame (docs/protocol.md#3)
_BATCH_ADAPTER: TypeAdapter[list[ClientMessage]] = TypeAdapter(
    Annotated[
        list[Annotated[ClientMessage, Field(discriminator="type")]],
        Field(min_length=1, max_length=MAX_BATCH_MESSAGES),
    ]
)

# --- server messages: replies carry `re`, events do not ---------------------------------------


class Limits(Out):
    """Per-session limits, announced in `hello` (docs/protocol.md#7-limits). Defaults = settings."""

    max_frame_bytes: Annotated[int, Field(gt=0)] = 1_048_576
    max_messages_per_s: Annotated[float, Field(gt=0)] = 100.0
    max_message_burst: Annotated[int, Field(ge=1)] = 200
    max_open_docs: Annotated[int, Field(ge=1)] = 100
    max_joined_workspaces: Annotated[int, Field(ge=1)] = 20
    max_invalid_updates: Annotated[int, Field(ge=1)] = 10
    send_queue_len: Annotated[int, Field(ge=1)] = 1024
    max_send_queue_bytes: Annotated[int, Field(ge=1)] = 16_777_216

    @classmethod
    def from_settings(cls, settings: object) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})


class WorkspaceInfo(Out):
    workspace_id: UUID
    name: str
    workspace_type: str
    visibility: Visibility
    max_members: int
    owner_id: str
    created_at: AwareDatetime


class DocumentInfo(Out):
    doc_id: UUID
    workspace_id: UUID
    title: str
    content_type: ContentType
    language: str | None
    created_by: str
    created_at: AwareDatetime


class MemberInfo(Out):
    agent_id: str
    role: Role
    joined_at: AwareDatetime


class ServerHello(Out):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    node_id: str
    server_version: str
    session_id: UUID
    agent_id: str
    tenant_id: UUID
    expires_at: AwareDatetime
    limits: Limits


class HelloOk(Out):
    type: Literal["hello.ok"] = "hello.ok"
    re: RequestId | None
    protocol: int
    batch: bool = False
    presence_batch: bool = False


class Pong(Out):
    type: Literal["pong"] = "pong"
    re: RequestId | None


class WorkspaceCreateOk(Out):
    type: Literal["workspace.create.ok"] = "workspace.create.ok"
    re: RequestId | None
    workspace: WorkspaceInfo


class WorkspaceListOk(Out):
    type: Literal["workspace.list.ok"] = "workspace.list.ok"
    re: RequestId | None
    workspaces: list[WorkspaceInfo]
    truncated: bool


class WorkspaceJoinOk(Out):
    type: Literal["workspace.join.ok"] = "workspace.join.ok"
    re: RequestId | None
    workspace: WorkspaceInfo
    role: Role
    state_version: int
    members: list[MemberInfo]
    documents: list[DocumentInfo]
    truncated: bool


class WorkspaceLeaveOk(Out):
    type: Literal["workspace.leave.ok"] = "workspace.leave.ok"
    re: RequestId | None
    workspace_id: UUID
    closed_doc_ids: list[UUID]


class DocCreateOk(Out):
    type: Literal["doc.create.ok"] = "doc.create.ok"
    re: RequestId | None
    document: DocumentInfo


class DocListOk(Out):
    type: Literal["doc.list.ok"] = "doc.list.ok"
    re: RequestId | None
    workspace_id: UUID
    documents: list[DocumentInfo]
    truncated: bool


class DocOpenOk(Out):
    type: Literal["doc.open.ok"] = "doc.open.ok"
    re: RequestId | None
    doc_id: UUID
    workspace_id: UUID
    seq: int
    update: B64Out
    state_vector: B64Out


class DocCloseOk(Out):
    type: Literal["doc.close.ok"] = "doc.close.ok"
    re: RequestId | None
    doc_id: UUID


class DocUpdateOk(Out):
    type: Literal["doc.update.ok"] = "doc.update.ok"
    re: RequestId | None
    doc_id: UUID
    seq: int | None  # None: the update held nothing new; nothing stored or forwarded


class DocResyncOk(Out):
    type: Literal["doc.resync.ok"] = "doc.resync.ok"
    re: RequestId | None
    doc_id: UUID
    workspace_id: UUID
    seq: int
    update: B64Out
    state_vector: B64Out


class DocOp(Out):
    type: Literal["doc.op"] = "doc.op"
    doc_id: UUID
    seq: int
    agent_id: str
    update: B64Out


class SessionClosing(Out):
    type: Literal["session.closing"] = "session.closing"
    code: int
    reason: str
    message: str


# --- presence and awareness (docs/protocol.md#57-presence-and-awareness) ----------------------

LeftReason = Literal["left", "disconnected", "expired"]


class PresenceMember(Out):
    """One session joined to a workspace. Also the form presence backends store and relay."""

    agent_id: str
    node_id: str
    conn_id: UUID  # the session's `session_id`
    since: AwareDatetime
    doc_ids: list[UUID]  # the session's open documents in this workspace, in opening order
    awareness: dict[str, Any] | None
    awareness_doc_id: UUID | None


class PresenceListOk(Out):
    type: Literal["presence.list.ok"] = "presence.list.ok"
    re: RequestId | None
    workspace_id: UUID
    members: list[PresenceMember]
    truncated: bool
    partial: bool  # the presence store was unreachable: only this node's sessions are listed


class AwarenessSetOk(Out):
    type: Literal["awareness.set.ok"] = "awareness.set.ok"
    re: RequestId | None
    workspace_id: UUID
    doc_id: UUID | None


class PresenceJoined(Out):
    type: Literal["presence.joined"] = "presence.joined"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    node_id: str
    since: AwareDatetime


class PresenceLeft(Out):
    type: Literal["presence.left"] = "presence.left"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    reason: LeftReason


class PresenceChanged(Out):
    type: Literal["presence.changed"] = "presence.changed"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    doc_ids: list[UUID]


class AwarenessChanged(Out):
    type: Literal["awareness.changed"] = "awareness.changed"
    workspace_id: UUID
    doc_id: UUID | None
    agent_id: str
    conn_id: UUID
    state: dict[str, Any] | None


class PresenceStale(Out):
    type: Literal["presence.stale"] = "presence.stale"
    workspace_id: UUID


class PresenceGone(Out):
    """A member that left, in a `presence.batch`."""

    conn_id: UUID
    agent_id: str
    reason: LeftReason


class PresenceBatch(Out):
    """A workspace's presence changes of one short window, each session at most once with its
    latest state: `members` joined or changed (whole member objects), `left` are gone."""

    type: Literal["presence.batch"] = "presence.batch"
    workspace_id: UUID
    members: list[PresenceMember]
    left: list[PresenceGone]


SERVER_MESSAGES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        ServerHello, HelloOk, Pong, WorkspaceCreateOk, WorkspaceListOk, WorkspaceJoinOk,
        WorkspaceLeaveOk, DocCreateOk, DocListOk, DocOpenOk, DocCloseOk, DocUpdateOk,
        DocResyncOk, DocOp, SessionClosing, PresenceListOk, AwarenessSetOk, PresenceJoined,
        PresenceLeft, PresenceChanged, AwarenessChanged, PresenceStale, PresenceBatch,
        *coordination.SERVER_MESSAGES,
    )
}  # fmt: skip


def encode(message: BaseModel | dict[str, Any]) -> str:
    """One server message as the text of one frame (compact JSON, UTF-8 safe).

    Models serialize themselves (bytes fields as base64); dicts (such as `error_frame`) must
    hold JSON values, UUIDs or datetimes only. Encode once and send the same string to every
    subscriber of a broadcast.
    """
    if isinstance(message, BaseModel):
        return message.model_dump_json()
    return pydantic_core.to_json(message).decode()


def awareness_bytes(state: dict[str, Any] | None) -> int:
    """Size of an awareness state as compact UTF-8 JSON, the form it is stored and relayed in."""
    return 0 if state is None else len(pydantic_core.to_json(state))


# --- parsing (docs/protocol.md#43-when-each-request-is-legal, steps 1 and 3) -----------------


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A client fault as a value: what `parse` and `Session` return instead of raising."""

    code: ErrorCode
    re: RequestId | None = None
    details: dict[str, Any] | None = None
    message: str | None = None

    @property
    def close_code(self) -> int | None:
        return self.code.close_code

    def frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.re, self.message, self.details)


def frame_bytes(frame: str, limit: int) -> int:
    """UTF-8 length of `frame`, computed only when it could exceed `limit` (else a lower bound)."""
    if len(frame) * 4 <= limit:
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


def parse(frame: str | bytes, max_frame_bytes: int) -> ClientMessage | ProtocolError:
    """Validate one received frame into a typed message, or say why not. Never raises.

    Binary frames get `unsupported_frame`, text over `max_frame_bytes` UTF-8 bytes gets
    `frame_too_large` (not parsed), then `bad_json`, `unknown_type` or `invalid_message`. The
    error carries the request's `id` as `re` whenever the frame is a JSON object with a valid id.
    """
    if not isinstance(frame, str):
        return ProtocolError(ErrorCode.UNSUPPORTED_FRAME)
    size = frame_bytes(frame, max_frame_bytes)
    if size > max_frame_bytes:
        return ProtocolError(ErrorCode.FRAME_TOO_LARGE, details={"max_frame_bytes": max_frame_bytes, "frame_bytes": size})
    try:
        return _CLIENT_ADAPTER.validate_json(frame)
    except ValidationError as exc:
        return _classify(frame, exc)


def is_batch(frame: str | bytes) -> bool:
    """Whether a text frame's top level is a JSON array (a batch of messages, docs/protocol.md#3)."""
    if not isinstance(frame, str):
        return False
    head = frame[:1]
    if head.isspace():
        head = frame.lstrip()[:1]
    return head == "["


def parse_batch(frame: str, max_frame_bytes: int) -> list[ClientMessage | ProtocolError]:
    """Validate a batched client frame (a JSON array of messages, docs/protocol.md#3): one result
    per element, each what `parse` would have made of it as a frame of its own, in order. One
    error stands for the whole frame when it exceeds `max_frame_bytes` (`frame_too_large`), is
    not JSON (`bad_json`) or does not hold 1 to MAX_BATCH_MESSAGES elements (`invalid_message`).
    Never raises."""
    size = frame_bytes(frame, max_frame_bytes)
    if size > max_frame_bytes:
        return [ProtocolError(ErrorCode.FRAME_TOO_LARGE, details={"max_frame_bytes": max_frame_bytes, "frame_bytes": size})]
    try:
        return list(_BATCH_ADAPTER.validate_json(frame))
    except ValidationError:
        pass  # one element or more is wrong: judge each on its own
    try:
        items = pydantic_core.from_json(frame)
    except ValueError:
        return [ProtocolError(ErrorCode.BAD_JSON)]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_MESSAGES:
        message = f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages"
        return [ProtocolError(ErrorCode.INVALID_MESSAGE, details={"errors": [{"field": "", "type": "batch_size", "message": message}]})]
    return [parse(pydantic_core.to_json(item).decode(), max_frame_bytes) for item in items]


def _classify(frame: str, exc: ValidationError) -> ProtocolError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    kinds = {e["type"] for e in errors}
    if kinds & {"json_invalid", "string_unicode"}:  # string_unicode: lone surrogates
        return ProtocolError(ErrorCode.BAD_JSON)
    re = _request_id_of(frame)
    if "union_tag_invalid" in kinds:
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, re)
    details = [_field_error(e) for e in errors[:MAX_ERROR_DETAILS]]
    return ProtocolError(ErrorCode.INVALID_MESSAGE, re, {"errors": details})


def _field_error(error: Any) -> dict[str, str]:
    if error["type"] == "union_tag_not_found":
        return {"field": "type", "type": "missing", "message": "Field required"}
    loc = list(error["loc"])
    if loc and loc[0] in CLIENT_MESSAGES:  # the discriminated union prefixes the tag
        loc = loc[1:]
    return {"field": ".".join(str(part) for part in loc), "type": error["type"], "message": error["msg"]}


def _request_id_of(frame: str) -> RequestId | None:
    try:
        data = pydantic_core.from_json(frame)
        return _request_id(data["id"]) if isinstance(data, dict) and "id" in data else None
    except (ValueError, TypeError):  # PydanticCustomError is a ValueError
        return None


# --- session state (docs/protocol.md#4-session-state) -----------------------------------------


class ConnState(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnEvent(StrEnum):
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


class Session:
    """The protocol state of one connection, without I/O.

    The loop calls `accept` (or `fail`) once the token is checked, feeds every received frame to
    `receive`, and reports what handlers did (`joined`, `left`, `opened`, `closed_doc`,
    `invalid_update`). Bounds: at most `max_joined_workspaces` joined and `max_open_docs` open.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = ConnState.CONNECTING
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
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(f"{event.value} is not legal in state {self.state.value}") from None

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
        if self.state is ConnState.CLOSING:
            return False
        if self.state is not ConnState.READY:
            raise LocalProtocolError(f"frame received in state {self.state.value}")
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
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return None
        self._apply(ConnEvent.FAIL)
        message = err.message or err.code.message
        closing = SessionClosing(code=close_code, reason=err.code.value, message=message)
        return Closing((encode(err.frame()), encode(closing)), close_code, err.code.value)

    def transport_closed(self) -> None:
        """The close handshake finished or the connection dropped. Idempotent."""
        if self.state is not ConnState.CLOSED:
            self._apply(ConnEvent.TRANSPORT_CLOSED)
