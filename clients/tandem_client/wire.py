"""The wire format as plain values: frames to and from JSON, base64, and the objects replies carry.

Pure: no I/O, no asyncio. Server messages may grow (docs/protocol.md section 3), so the
dataclasses keep the fields they know and ignore the rest; `raw` holds the whole object.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self

PROTOCOL_VERSION = 1
EMPTY_STATE_VECTOR = b"\x00"

Frame = dict[str, Any]
RequestId = int
# Which `task.changed` events of a joined workspace a session gets (docs/protocol.md section 5.4).
TaskEvents = Literal["all", "own"]


def b64(data: bytes) -> str:
    """RFC 4648 section 4 base64 with padding, as the protocol carries binary (section 3)."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the server sent invalid base64: {exc}") from None


def encode(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"))


def decode(text: str | bytes) -> Frame | None:
    """The frame as a dict, or None when it is not a JSON object with a string `type`."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return None
    return frame


def decode_all(text: str | bytes) -> list[Frame]:
    """The messages in one frame: a JSON object, or a JSON array of them (batched frames, which
    this client asks for in its `hello`: docs/protocol.md section 3). Anything that is not a
    message is left out."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    return [f for f in items if isinstance(f, dict) and isinstance(f.get("type"), str)]


def request(type_: str, rid: RequestId, fields_: dict[str, Any]) -> Frame:
    """A request frame with `fields_` as given (None is sent as null)."""
    return {"type": type_, "id": rid, **fields_}


def given(**fields_: Any) -> dict[str, Any]:
    """The fields whose value is not None: optional fields left out are the server's defaults."""
    return {k: v for k, v in fields_.items() if v is not None}


def join_fields(workspace_id: str, task_events: TaskEvents) -> dict[str, Any]:
    """A `workspace.join`'s fields: `task_events` only when it is not the default ("all", which
    a join without it chooses too)."""
    return {"workspace_id": workspace_id, **({} if task_events == "all" else {"task_events": task_events})}


@dataclass(frozen=True)
class _Wire:
    raw: Frame = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Frame) -> Self:
        known = {f.name for f in fields(cls)} - {"raw"}
        return cls(raw=obj, **{k: obj.get(k) for k in known})


@dataclass(frozen=True)
class WorkspaceInfo(_Wire):
    """A workspace object (docs/protocol.md section 5.2)."""

    workspace_id: str
    name: str
    workspace_type: str
    visibility: str
    max_members: int
    owner_id: str
    created_at: str


@dataclass(frozen=True)
class DocumentInfo(_Wire):
    """A document object (docs/protocol.md section 5.2)."""

    doc_id: str
    workspace_id: str
    title: str
    content_type: str
    language: str | None
    created_by: str
    created_at: str


@dataclass(frozen=True)
class Member(_Wire):
    """A member object (section 5.2); `member.*` replies add `permissions` (section 12.5)."""

    agent_id: str
    role: str
    joined_at: str
    permissions: list[str] | None = None


@dataclass(frozen=True)
class Agent(_Wire):
    """An agent object of the registry (docs/protocol.md section 12.7), as of the reply."""

    agent_id: str
    name: str
    kind: str
    capabilities: list[str]
    max_concurrent_tasks: int
    metadata: dict[str, Any]
    status: str  # active, inactive, error or maintenance (derived by the server)
    last_seen_at: str | None
    load: int  # open tasks assigned to it
    free_slots: int
    tasks_completed: int
    tasks_failed: int
    consecutive_failures: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class LockInfo(_Wire):
    """A lock object (docs/protocol.md section 12.1): `doc_id` or `name`, never both."""

    workspace_id: str
    doc_id: str | None
    name: str | None
    holder: str | None
    fence: int
    locked_at: str | None
    expires_at: str | None


@dataclass(frozen=True)
class Task(_Wire):
    """A task object (docs/protocol.md section 12.4), as of the reply or event that carried it."""

    task_id: str
    workspace_id: str
    title: str
    task_type: str
    description: str | None
    status: str
    priority: str
    created_by: str
    assigned_to: str | None
    parent_task_id: str | None
    parameters: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    max_retries: int
    retry_count: int
    timeout_s: int
    created_at: str
    assigned_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str
    execution_id: str | None  # a workflow step's task: its execution, step and attempt (section 12.9)
    step_id: str | None
    attempt: int | None


@dataclass(frozen=True)
class Workflow(_Wire):
    """One version of a workflow definition (docs/protocol.md section 12.8)."""

    workflow_id: str
    workspace_id: str
    name: str
    version: int
    latest_version: int
    active: bool
    type: str
    steps: list[dict[str, Any]]
    config: dict[str, Any]
    description: str | None
    created_by: str
    created_at: str


@dataclass(frozen=True)
class Execution(_Wire):
    """A workflow execution (docs/protocol.md section 12.9), as of the reply or event that carried it."""

    execution_id: str
    workflow_id: str
    workflow_version: int | None
    workspace_id: str | None
    status: str  # pending, running, paused, completed, failed, cancelled
    triggered_by: str
    input: dict[str, Any]
    context: dict[str, Any]
    step_states: dict[str, Any]
    step_results: dict[str, Any]
    output: Any
    error: str | None
    started_at: str | None
    completed_at: str | None

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "timeout")


@dataclass(frozen=True)
class WorkflowSummary(_Wire):
    """A workflow as `workflow.list` and `workflow.deactivate` give it: `version` is the latest."""

    workflow_id: str
    workspace_id: str
    name: str
    version: int
    type: str
    active: bool
    created_by: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Delegation(_Wire):
    """A delegation object (docs/protocol.md section 12.4)."""

    delegation_id: str
    task_id: str
    from_agent_id: str | None
    to_agent_id: str
    delegation_type: str
    reason: str | None
    delegated_at: str


@dataclass(frozen=True)
class Hello(_Wire):
    """The server's `hello` (docs/protocol.md section 2.4)."""

    protocol: int
    node_id: str
    server_version: str
    session_id: str
    agent_id: str
    tenant_id: str
    expires_at: str
    limits: dict[str, Any]


@dataclass(frozen=True)
class JoinReply:
    """`workspace.join.ok`: the workspace, the agent's role, its state version, members, documents."""

    workspace: WorkspaceInfo
    role: str
    state_version: int | None
    members: tuple[Member, ...]
    documents: tuple[DocumentInfo, ...]
    truncated: bool

    @classmethod
    def from_wire(cls, frame: Frame) -> JoinReply:
        return cls(
            workspace=WorkspaceInfo.from_wire(frame["workspace"]),
            role=frame.get("role", "member"),
            state_version=frame.get("state_version"),
            members=tuple(Member.from_wire(m) for m in frame.get("members") or ()),
            documents=tuple(DocumentInfo.from_wire(d) for d in frame.get("documents") or ()),
            truncated=bool(frame.get("truncated")),
        )
