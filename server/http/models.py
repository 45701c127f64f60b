"""What /v1 requests carry and responses hold: bodies validated once (strict, no extra fields,
the WebSocket protocol's field types from server/wire/fields.py); the workspace and document
objects are the wire's own (server/wire/messages.py)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import Field

from server.wire.fields import ContentType, Name, Out, Request, ShortName, Visibility
from server.wire.messages import DocumentInfo, WorkspaceInfo


class WorkspaceCreate(Request):
    name: Name
    workspace_type: ShortName = "general"
    visibility: Visibility = "private"
    max_members: Annotated[int, Field(ge=1, le=1000)] = 100


class DocumentCreate(Request):
    title: Name
    content_type: ContentType = "text"
    language: ShortName | None = None


class WorkspaceList(Out):
    workspaces: list[WorkspaceInfo]
    truncated: bool


class WorkspaceOne(Out):
    workspace: WorkspaceInfo
    role: str | None  # the caller's role in it; None: not a member (team or public)


class DocumentMeta(DocumentInfo):
    """A document with its head: the seq of its last committed operation (0: none yet)."""

    head_seq: int


class DocumentList(Out):
    workspace_id: UUID
    documents: list[DocumentInfo]
    truncated: bool


class HistoryItem(Out):
    seq: int
    agent_id: str
    op_type: str
    timestamp: str | None
    size_bytes: int


class HistoryPage(Out):
    doc_id: UUID
    operations: list[HistoryItem]
    next_after_seq: (
        int | None
    )  # pass as `after_seq` for the next page; None: this was the last
    next: str | None  # the next page's URL (also in the `Link` header)


class BlameSpan(Out):
    text: str
    agent_id: str | None


class Blame(Out):
    doc_id: UUID
    seq: int
    spans: list[BlameSpan]


class InsertAt(Request):
    index: Annotated[int, Field(ge=0)]  # in Unicode code points
    text: Annotated[str, Field(min_length=1)]


class DeleteRange(Request):
    index: Annotated[int, Field(ge=0)]
    length: Annotated[int, Field(ge=1)]


class InsertEdit(Request):
    insert: InsertAt


class DeleteEdit(Request):
    delete: DeleteRange


class ReplaceText(Request):
    text: str


class ReplaceEdit(Request):
    replace: ReplaceText


TextEdit = InsertEdit | DeleteEdit | ReplaceEdit
MAX_EDITS = 1000  # edits in one request


class Written(Out):
    """A write's outcome: the seq of its operation, or the head it already held (`changed`
    false: the update or edits changed nothing and nothing was stored)."""

    doc_id: UUID
    seq: int
    changed: bool


class TaskOne(Out):
    task: dict[str, Any]  # the task object of docs/protocol.md#124


class TaskDetail(Out):
    task: dict[str, Any]
    delegations: list[dict[str, Any]]  # oldest first


class TaskList(Out):
    workspace_id: UUID
    tasks: list[dict[str, Any]]
    truncated: bool


class LockOne(Out):
    lock: dict[str, Any]  # the lock object of docs/protocol.md#121


class LockList(Out):
    workspace_id: UUID
    locks: list[dict[str, Any]]


class WorkspaceState(Out):
    workspace_id: UUID
    version: int
    state: dict[str, Any]
