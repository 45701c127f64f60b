"""The wire protocol's messages (docs/protocol.md section 5; coordination in
server/wire/protocol_coordination.py, presence in server/wire/messages_presence.py): the client
messages and their union, the server messages and their registry, and `encode`. Pure."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union
from uuid import UUID

import pydantic_core
from pydantic import AwareDatetime, BaseModel, Field, StrictBool, TypeAdapter

from server.core.errors import RequestId
from server.wire import protocol_agents as agents
from server.wire import protocol_coordination as coordination
from server.wire import protocol_executions as executions
from server.wire import protocol_workflows as workflows
from server.wire.fields import (
    EMPTY_STATE_VECTOR,
    MAX_SAFE_INTEGER,
    PROTOCOL_VERSION,
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
    TaskEvents,
    Visibility,
)
from server.wire.messages_presence import (  # noqa: F401 - in the registry below
    AwarenessChanged,
    AwarenessSetOk,
    LeftReason,
    PresenceBatch,
    PresenceChanged,
    PresenceGone,
    PresenceJoined,
    PresenceLeft,
    PresenceListOk,
    PresenceMember,
    PresenceStale,
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
    task_events: TaskEvents = "all"  # the session's last join of the workspace decides


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
        *agents.CLIENT_MESSAGES,  # the agent registry (docs/protocol.md#127)
        *workflows.CLIENT_MESSAGES,  # workflow definitions (docs/protocol.md section 12.8)
        *executions.CLIENT_MESSAGES,  # workflow executions (docs/protocol.md section 12.9)
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


SERVER_MESSAGES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        ServerHello, HelloOk, Pong, WorkspaceCreateOk, WorkspaceListOk, WorkspaceJoinOk,
        WorkspaceLeaveOk, DocCreateOk, DocListOk, DocOpenOk, DocCloseOk, DocUpdateOk,
        DocResyncOk, DocOp, SessionClosing, PresenceListOk, AwarenessSetOk, PresenceJoined,
        PresenceLeft, PresenceChanged, AwarenessChanged, PresenceStale, PresenceBatch,
        *coordination.SERVER_MESSAGES, *agents.SERVER_MESSAGES,
        *coordination.SERVER_MESSAGES, *workflows.SERVER_MESSAGES, *executions.SERVER_MESSAGES,
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
