"""Messages of coordination (docs/protocol.md section 12): locks, workspace state, tasks, members.

Pure like server/wire/protocol.py, which adds these to its message union, rules and registry. The
objects they carry (lock, task, delegation, member) are built by the data layer's `to_wire()`
(server/workspaces/locks.py, server/workspaces/tasks.py, server/workspaces/members.py) and documented in section 12.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.core.errors import RequestId
from server.wire.fields import MAX_SAFE_INTEGER, Name, Out, ReqId, Request, _not_blank
from server.wire.protocol_deletes import DocDeleted, WorkspaceDeleted

LockName = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_not_blank)]
AgentId = Name
TtlMs = Annotated[int, Field(ge=100, le=3_600_000)]
Fence = Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
Text = Annotated[str, StringConstraints(max_length=10_000)]
TaskTitle = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_not_blank)]
TaskType = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_not_blank)]
Priority = Literal["low", "normal", "high", "critical"]  # enum task_priority, lowest first
TaskStatus = Literal["pending", "assigned", "accepted", "rejected", "in_progress", "completed", "failed", "cancelled", "timeout"]
DelegationType = Literal["manual", "automatic", "failover", "load_balance"]
Permission = Literal["read", "write", "admin"]


def _finite_json(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object the database's jsonb can hold: no NaN or infinity (JSON has neither, but
    Python's parser reads them)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise PydanticCustomError("json_object", "Must be a JSON object of finite numbers") from None
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_finite_json)]
ManagedRole = Literal["admin", "member", "viewer"]  # `owner` is never given (docs/protocol.md#125)
DEFAULT_TTL_MS = 30_000
MAX_LOCK_WAIT_MS = 60_000

# --- locks (docs/protocol.md#121) ----------------------------------------------------------------


class _LockTarget(Request):
    id: ReqId | None = None
    workspace_id: UUID
    doc_id: UUID | None = None
    name: LockName | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _LockTarget:
        if (self.doc_id is None) == (self.name is None):
            raise PydanticCustomError("lock_target", "Give exactly one of doc_id and name")
        return self


class LockAcquire(_LockTarget):
    type: Literal["lock.acquire"] = "lock.acquire"
    ttl_ms: TtlMs = DEFAULT_TTL_MS
    wait_ms: Annotated[int, Field(ge=0, le=MAX_LOCK_WAIT_MS)] = 0  # queue for the lock up to this long


class LockRenew(_LockTarget):
    type: Literal["lock.renew"] = "lock.renew"
    fence: Fence
    ttl_ms: TtlMs = DEFAULT_TTL_MS


class LockRelease(_LockTarget):
    type: Literal["lock.release"] = "lock.release"
    fence: Fence


class LockList(Request):
    type: Literal["lock.list"] = "lock.list"
    id: ReqId | None = None
    workspace_id: UUID


# --- workspace state (docs/protocol.md#123) ------------------------------------------------------


class StateGet(Request):
    type: Literal["state.get"] = "state.get"
    id: ReqId | None = None
    workspace_id: UUID


class StateUpdate(Request):
    type: Literal["state.update"] = "state.update"
    id: ReqId | None = None
    workspace_id: UUID
    expected_version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    mode: Literal["replace", "merge", "patch"] = "replace"
    value: Any = None  # replace, merge: the new state or what to merge (a JSON object)
    patch: list[Any] | None = None  # patch: RFC 6902 operations
    on_conflict: Literal["fail", "merge"] = "fail"

    @model_validator(mode="after")
    def _operand(self) -> StateUpdate:
        if self.mode == "patch" and (self.patch is None or self.value is not None):
            raise PydanticCustomError("state_operand", "mode patch takes `patch` (and no `value`)")
        if self.mode != "patch" and (self.value is None or self.patch is not None):
            raise PydanticCustomError("state_operand", "modes replace and merge take `value` (and no `patch`)")
        return self


# --- tasks (docs/protocol.md#124) ----------------------------------------------------------------


class TaskCreate(Request):
    type: Literal["task.create"] = "task.create"
    id: ReqId | None = None
    workspace_id: UUID
    title: TaskTitle
    task_type: TaskType = "general"
    description: Text | None = None
    priority: Priority = "normal"
    parameters: JsonObject = Field(default_factory=dict)
    parent_task_id: UUID | None = None
    timeout_s: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3
    assign_to: AgentId | None = None


class _TaskRequest(Request):
    id: ReqId | None = None
    task_id: UUID


class TaskAssign(_TaskRequest):
    type: Literal["task.assign"] = "task.assign"
    agent_id: AgentId


class TaskAccept(_TaskRequest):
    type: Literal["task.accept"] = "task.accept"


class TaskReject(_TaskRequest):
    type: Literal["task.reject"] = "task.reject"
    reason: Text | None = None


class TaskStart(_TaskRequest):
    type: Literal["task.start"] = "task.start"


class TaskComplete(_TaskRequest):
    type: Literal["task.complete"] = "task.complete"
    result: JsonObject = Field(default_factory=dict)


class TaskFail(_TaskRequest):
    type: Literal["task.fail"] = "task.fail"
    error: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class TaskCancel(_TaskRequest):
    type: Literal["task.cancel"] = "task.cancel"
    reason: Text | None = None


class TaskDelegate(_TaskRequest):
    type: Literal["task.delegate"] = "task.delegate"
    agent_id: AgentId
    delegation_type: DelegationType = "manual"
    reason: Text | None = None


class TaskGet(_TaskRequest):
    type: Literal["task.get"] = "task.get"


class TaskList(Request):
    type: Literal["task.list"] = "task.list"
    id: ReqId | None = None
    workspace_id: UUID
    assigned_to: AgentId | None = None
    created_by: AgentId | None = None
    status: Annotated[list[TaskStatus], Field(max_length=9)] | None = None
    priority: Annotated[list[Priority], Field(max_length=4)] | None = None
    parent_task_id: UUID | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class TaskStats(Request):
    type: Literal["task.stats"] = "task.stats"
    id: ReqId | None = None
    workspace_id: UUID


TaskAction = TaskAssign | TaskAccept | TaskReject | TaskStart | TaskComplete | TaskFail | TaskCancel | TaskDelegate

TASK_ACTIONS: dict[str, type[_TaskRequest]] = {
    cls.model_fields["type"].default.removeprefix("task."): cls
    for cls in (TaskAssign, TaskAccept, TaskReject, TaskStart, TaskComplete, TaskFail, TaskCancel, TaskDelegate)
}

# --- members (docs/protocol.md#125) --------------------------------------------------------------


class _MemberRequest(Request):
    id: ReqId | None = None
    workspace_id: UUID
    agent_id: AgentId


class MemberAdd(_MemberRequest):
    type: Literal["member.add"] = "member.add"
    role: ManagedRole = "member"
    permissions: Annotated[list[Permission], Field(max_length=3)] | None = None


class MemberRemove(_MemberRequest):
    type: Literal["member.remove"] = "member.remove"


class MemberUpdate(_MemberRequest):
    type: Literal["member.update"] = "member.update"
    role: ManagedRole | None = None
    permissions: Annotated[list[Permission], Field(max_length=3)] | None = None


class MemberList(Request):
    type: Literal["member.list"] = "member.list"
    id: ReqId | None = None
    workspace_id: UUID


CLIENT_MESSAGES = (
    LockAcquire, LockRenew, LockRelease, LockList, StateGet, StateUpdate, TaskCreate,
    *TASK_ACTIONS.values(), TaskGet, TaskList, TaskStats, MemberAdd, MemberRemove, MemberUpdate,
    MemberList,
)  # fmt: skip
RULES = {cls.model_fields["type"].default: ("joined" if "workspace_id" in cls.model_fields else "task") for cls in CLIENT_MESSAGES}

# --- server messages -----------------------------------------------------------------------------

Obj = dict[str, Any]  # a lock, task, delegation or member object (docs/protocol.md#12)


class LockAcquireOk(Out):
    type: Literal["lock.acquire.ok"] = "lock.acquire.ok"
    re: RequestId | None
    lock: Obj


class LockRenewOk(Out):
    type: Literal["lock.renew.ok"] = "lock.renew.ok"
    re: RequestId | None
    lock: Obj


class LockReleaseOk(Out):
    type: Literal["lock.release.ok"] = "lock.release.ok"
    re: RequestId | None
    lock: Obj


class LockListOk(Out):
    type: Literal["lock.list.ok"] = "lock.list.ok"
    re: RequestId | None
    workspace_id: UUID
    locks: list[Obj]


class LockAcquired(Out):
    type: Literal["lock.acquired"] = "lock.acquired"
    lock: Obj


class LockRenewed(Out):
    type: Literal["lock.renewed"] = "lock.renewed"
    lock: Obj


class LockReleased(Out):
    type: Literal["lock.released"] = "lock.released"
    lock: Obj
    reason: Literal["released", "disconnected"]


class StateGetOk(Out):
    type: Literal["state.get.ok"] = "state.get.ok"
    re: RequestId | None
    workspace_id: UUID
    version: int
    state: Obj


class StateUpdateOk(Out):
    type: Literal["state.update.ok"] = "state.update.ok"
    re: RequestId | None
    workspace_id: UUID
    version: int
    state: Obj
    merged: bool  # a version conflict was resolved by merging (recorded in conflict_resolutions)


class StateChanged(Out):
    type: Literal["state.changed"] = "state.changed"
    workspace_id: UUID
    version: int
    state: Obj
    agent_id: str


def _task_reply(type_: str) -> type[Out]:
    name = "".join(part.capitalize() for part in type_.replace(".", "_").split("_"))
    return create_model(name, __base__=Out, type=(Literal[type_], type_), re=(RequestId | None, ...), task=(Obj, ...))  # type: ignore[call-overload]


TASK_REPLIES: dict[str, type[Out]] = {t: _task_reply(f"task.{t}.ok") for t in ("create", *TASK_ACTIONS)}


class TaskGetOk(Out):
    type: Literal["task.get.ok"] = "task.get.ok"
    re: RequestId | None
    task: Obj
    delegations: list[Obj]


class TaskListOk(Out):
    type: Literal["task.list.ok"] = "task.list.ok"
    re: RequestId | None
    workspace_id: UUID
    tasks: list[Obj]
    truncated: bool


class TaskStatsOk(Out):
    type: Literal["task.stats.ok"] = "task.stats.ok"
    re: RequestId | None
    workspace_id: UUID
    workload: list[Obj]
    statistics: list[Obj]


class TaskChanged(Out):
    type: Literal["task.changed"] = "task.changed"
    task: Obj
    action: str
    agent_id: str
    delegation: Obj | None = None


class MemberAddOk(Out):
    type: Literal["member.add.ok"] = "member.add.ok"
    re: RequestId | None
    member: Obj


class MemberRemoveOk(Out):
    type: Literal["member.remove.ok"] = "member.remove.ok"
    re: RequestId | None
    member: Obj


class MemberUpdateOk(Out):
    type: Literal["member.update.ok"] = "member.update.ok"
    re: RequestId | None
    member: Obj


class MemberListOk(Out):
    type: Literal["member.list.ok"] = "member.list.ok"
    re: RequestId | None
    workspace_id: UUID
    members: list[Obj]
    truncated: bool


class MemberChanged(Out):
    type: Literal["member.changed"] = "member.changed"
    workspace_id: UUID
    member: Obj
    change: Literal["added", "removed", "updated"]
    agent_id: str


# The workspace events (docs/protocol.md#126): what server/cluster/events.py carries between nodes and
# sends to sessions, read back into its model from another node's NOTIFY.
WorkspaceEvent = (
    LockAcquired | LockRenewed | LockReleased | StateChanged | TaskChanged | MemberChanged | DocDeleted | WorkspaceDeleted
)
EVENTS: TypeAdapter[WorkspaceEvent] = TypeAdapter(Annotated[WorkspaceEvent, Field(discriminator="type")])

SERVER_MESSAGES = (
    LockAcquireOk, LockRenewOk, LockReleaseOk, LockListOk, LockAcquired, LockRenewed, LockReleased,
    StateGetOk, StateUpdateOk, StateChanged, *TASK_REPLIES.values(), TaskGetOk, TaskListOk,
    TaskStatsOk, TaskChanged, MemberAddOk, MemberRemoveOk, MemberUpdateOk, MemberListOk, MemberChanged,
    DocDeleted, WorkspaceDeleted,
)  # fmt: skip
