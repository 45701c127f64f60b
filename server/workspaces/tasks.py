"""Tasks and their delegations: the data side of docs/protocol.md section 12.4.

Every function but `overdue_tenants` takes an asyncpg connection already inside
`store.tenant_transaction`, so RLS scopes it to one tenant; SQL lives in `server/db/sql/tasks.sql`
(the `task_*` queries) and the state machine in `server/workspaces/task_rules.py`. Failures a client may
see are `TandemError`s: let them propagate out of `tenant_transaction`, which rolls back.
Imports no Starlette, WebSocket or Redis code.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.store import Q
from server.wire import protocol_coordination as pc
from server.workspaces import task_rules
from server.workspaces.directory import WRITE_ROLES, rfc3339
from server.workspaces.task_rules import Action, Actor, Status

MANAGER_ROLES = frozenset({"owner", "admin"})


@dataclass(frozen=True, slots=True)
class Task:
    task_id: uuid.UUID
    workspace_id: uuid.UUID | None  # None only for rows older than migration 0017
    title: str
    task_type: str
    description: str | None
    status: str
    priority: str
    created_by: str
    assigned_to: str | None
    parent_task_id: uuid.UUID | None
    parameters: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    max_retries: int
    retry_count: int
    timeout_s: int
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    execution_id: uuid.UUID | None = None  # a workflow step's task: its execution, step and attempt
    step_id: str | None = None
    attempt: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The task object: every field in order, ids as strings, times in RFC 3339 (docs/protocol.md#3)."""
        return _wire(self)


@dataclass(frozen=True, slots=True)
class Delegation:
    delegation_id: uuid.UUID
    task_id: uuid.UUID
    from_agent_id: str
    to_agent_id: str
    delegation_type: str
    reason: str | None
    delegated_at: datetime

    def to_wire(self) -> dict[str, Any]:
        """The delegation object: every field in order, as `Task.to_wire` writes them."""
        return _wire(self)


@dataclass(frozen=True, slots=True)
class TaskChange:
    """One committed-to-be transition. `notify`: the agents to tell besides the workspace (the
    creator, the new assignee and the previous one)."""

    task: Task
    previous: Task
    action: str
    delegation: Delegation | None
    notify: frozenset[str]
    # A step task's outcome: its execution's row, locked by the transition's own statement
    # (columns as the `execution` projection names them; None: not read, or not visible).
    execution_row: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "task": self.task.to_wire(),
            "action": self.action,
            "previous_status": self.previous.status,
            "previous_assignee": self.previous.assigned_to,
            "delegation": None if self.delegation is None else self.delegation.to_wire(),
        }


# --- create ----------------------------------------------------------------------------------


async def create_task(conn: asyncpg.Connection, agent_id: str, role: str | None, request: pc.TaskCreate) -> Task:
    """Create the task `request` describes (validated at the protocol boundary), created by
    `agent_id`, whose workspace role is `role` (None: not a member).

    `assign_to` set: the task starts `assigned` to that agent, else `pending`. Not a member:
    `not_member`; a viewer: `forbidden`; an unknown, deleted or other tenant's workspace, or a
    parent that is not a live task of the same workspace: `not_found`.
    """
    _require_writer(role)
    with store.input_errors():
        row = await conn.fetchrow(
            Q["task_create"], request.workspace_id, request.title, request.task_type, request.description,
            request.priority, agent_id, request.assign_to, request.parent_task_id, json.dumps(request.parameters),
            request.timeout_s, request.max_retries,
        )  # fmt: skip
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _task(row)


# --- transitions -----------------------------------------------------------------------------

# Which timestamps a move into each status stamps ("now"), empties ("clear") or leaves ("keep"),
# in the order assigned_at, started_at, completed_at. A (re)assignment starts the clock afresh; a retry puts
# the task back in the queue unassigned; completed_at marks the end of a terminal status.
_STAMPS: dict[Status, tuple[str, str, str]] = {
    Status.ASSIGNED: ("now", "clear", "clear"),
    Status.ACCEPTED: ("keep", "keep", "keep"),
    Status.REJECTED: ("keep", "keep", "keep"),
    Status.IN_PROGRESS: ("keep", "now", "keep"),
    Status.COMPLETED: ("keep", "keep", "now"),
    Status.FAILED: ("keep", "keep", "now"),
    Status.CANCELLED: ("keep", "keep", "now"),
    Status.PENDING: ("clear", "clear", "keep"),  # a retry after a failure
}


# The actions whose outcome advances a step task's execution (executions.OUTCOMES but the sweep's timeout).
_STEP_OUTCOMES = frozenset({Action.COMPLETE, Action.FAIL, Action.CANCEL})


async def lock_task(conn: asyncpg.Connection, task_id: uuid.UUID) -> Task:
    """A live task of this tenant under a row lock held until commit (`transition`'s first
    step, for a caller that needs the task's workspace before); unknown ids: `not_found`."""
    row = await conn.fetchrow(Q["task_lock"], task_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _task(row)


async def transition(
    conn: asyncpg.Connection, agent_id: str, role: str | None, request: pc.TaskAction, locked: Task | None = None
) -> TaskChange:
    """Apply the action `request` names (`task.assign`, ... validated at the protocol boundary)
    to its task for `agent_id`, whose role in the task's workspace is `role`.

    The task row is locked (`FOR UPDATE`) until the caller commits, so concurrent actions on one
    task apply one after the other, each to the status the previous one left. The acting agent
    is the task's creator and/or assignee, a manager (role owner or admin), and for `assign` to
    itself a self-claim; `task_rules.check` decides (`invalid_transition`). Unknown, deleted and
    other tenants' ids: the bare `not_found`. complete stores `result`; fail records `error`,
    and while retries remain sends the task back to `pending`, unassigned, with `retry_count` +
    1. complete and fail also count the outcome on the assignee's registry entry (its health
    counters, server/workspaces/agents.py). delegate also records a `task_delegations` row from
    the current assignee (the actor when there is none). The caller checks writing rights first.
    `locked`: the task as `lock_task` returned it in this transaction (not read again).
    """
    task_id, action = request.task_id, Action(request.type.removeprefix("task."))
    to_agent_id: str | None = getattr(request, "agent_id", None)
    result_text = json.dumps(request.result) if isinstance(request, pc.TaskComplete) else None
    previous = locked if locked is not None and locked.task_id == task_id else await lock_task(conn, task_id)
    kinds = _actor_kinds(previous, agent_id, role, action, to_agent_id)
    retries_left = previous.retry_count < previous.max_retries
    status = task_rules.check(previous.status, action, kinds, retries_left)

    assignee, retry_count, error_text = previous.assigned_to, previous.retry_count, previous.error
    if action in (Action.ASSIGN, Action.DELEGATE):
        assignee = to_agent_id
    elif status is Status.PENDING:  # a retry: any worker may take it again
        assignee, retry_count = None, retry_count + 1
    if isinstance(request, pc.TaskFail):
        error_text = request.error
    # The agent registry's health counters move with the task, in the same statement; so does
    # the lock of a step task's execution, which its outcome advances next (executions.after_task).
    counted = previous.assigned_to if action in (Action.COMPLETE, Action.FAIL) else None
    step_outcome = action in _STEP_OUTCOMES and previous.step_id is not None
    with store.input_errors():
        row = await conn.fetchrow(
            Q["task_apply_transition"], task_id, status, assignee, retry_count, result_text, error_text,
            *_STAMPS[status], counted, action == Action.COMPLETE, previous.execution_id if step_outcome else None,
        )  # fmt: skip
    task, execution_row = _moved(row)

    delegation = None
    if action == Action.DELEGATE:
        source = previous.assigned_to or agent_id
        assert isinstance(request, pc.TaskDelegate)
        delegation = _delegation(
            await conn.fetchrow(
                Q["task_insert_delegation"], task_id, source, to_agent_id, request.delegation_type, request.reason
            )
        )
    notify = frozenset(a for a in (task.created_by, task.assigned_to, previous.assigned_to) if a)
    return TaskChange(task, previous, str(action), delegation, notify, execution_row)


def _actor_kinds(task: Task, agent_id: str, role: str | None, action: str, to_agent_id: str | None) -> set[Actor]:
    kinds = set()
    if agent_id == task.created_by:
        kinds.add(Actor.CREATOR)
    if agent_id == task.assigned_to:
        kinds.add(Actor.ASSIGNEE)
    if role in MANAGER_ROLES:
        kinds.add(Actor.MANAGER)
    if action == Action.ASSIGN and to_agent_id == agent_id:
        kinds.add(Actor.SELF_CLAIM)
    return kinds


# --- queries ---------------------------------------------------------------------------------


async def get_task(conn: asyncpg.Connection, task_id: uuid.UUID) -> Task:
    """A live task of this tenant; unknown, deleted and other tenants' ids: the bare `not_found`."""
    row = await conn.fetchrow(Q["task_get"], task_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _task(row)


async def list_tasks(conn: asyncpg.Connection, request: pc.TaskList, limit: int | None = None) -> tuple[list[Task], bool]:
    """Live tasks of a workspace matching every filter of `request` (None: any), critical first,
    then oldest first; at most `limit` (default: the request's), the flag is true when there
    were more. The caller checks the agent has joined the workspace."""
    limit = request.limit if limit is None else limit
    rows = await conn.fetch(
        Q["task_list"], request.workspace_id, request.assigned_to, request.created_by, request.status,
        request.priority, request.parent_task_id, _plus_one(limit),
    )  # fmt: skip
    return [_task(r) for r in rows[:limit]], len(rows) > limit


async def delegations(conn: asyncpg.Connection, task_id: uuid.UUID, limit: int) -> list[Delegation]:
    """The task's delegation history, oldest first, at most `limit` (the oldest ones);
    unknown, deleted and other tenants' ids: `not_found`."""
    if not await conn.fetchval(Q["task_exists"], task_id):
        raise TandemError(ErrorCode.NOT_FOUND)
    return [_delegation(r) for r in await conn.fetch(Q["task_delegations"], task_id, _checked_limit(limit))]


async def workload(
    conn: asyncpg.Connection, workspace_id: uuid.UUID | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Per-agent load from `v_agent_workload`, by agent id, at most `limit` rows: every agent of
    the tenant with tasks, or with `workspace_id` each member of that workspace (its tenant-wide
    load, zeros when idle). Keys: agent_id, pending_tasks, active_tasks, completed_24h,
    avg_task_duration_s (None before any completion)."""
    if workspace_id is None:
        rows = await conn.fetch(Q["task_workload"], _checked_limit(limit))
    else:
        rows = await conn.fetch(Q["task_workspace_workload"], workspace_id, _checked_limit(limit))
    return [
        {
            "agent_id": r["agent_id"],
            "pending_tasks": int(r["pending_tasks"]),
            "active_tasks": int(r["active_tasks"]),
            "completed_24h": int(r["completed_24h"]),
            "avg_task_duration_s": _number(r["avg_task_duration_seconds"]),
        }
        for r in rows
    ]


async def statistics(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Counts and durations (seconds from creation to completion) of the tenant's tasks by status
    and priority, from `v_task_statistics` (one row per status and priority present)."""
    return [
        {
            "status": r["status"],
            "priority": r["priority"],
            "count": int(r["count"]),
            "avg_duration_s": _number(r["avg_duration_seconds"]),
            "median_duration_s": _number(r["median_duration_seconds"]),
            "p95_duration_s": _number(r["p95_duration_seconds"]),
        }
        for r in await conn.fetch(Q["task_statistics"])
    ]


# --- timeout sweep ---------------------------------------------------------------------------


async def overdue_tenants(conn: asyncpg.Connection, max_tenants: int) -> list[uuid.UUID]:
    """At most `max_tenants` tenants that have a task in progress past its `timeout_s`.

    Call it on a plain pooled connection, outside `tenant_transaction`: it is the sweep's one
    step across tenants (a database function run as the owner) and it reads tenant ids only.
    """
    return [r["tenant_id"] for r in await conn.fetch(Q["task_overdue_tenants"], _checked_limit(max_tenants))]


async def sweep_timeouts(conn: asyncpg.Connection, max_rows: int) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """Mark at most `max_rows` of the current tenant's in-progress tasks past `timeout_s` as
    `timeout`; returns (task_id, workspace_id) of each. Inside `tenant_transaction` like every
    other call here: with no tenant set it marks nothing. Any number of nodes may call it at
    once; each overdue task is marked by exactly one call (SKIP LOCKED and a re-checked status).
    """
    rows = await conn.fetch(Q["task_sweep_timeouts"], _checked_limit(max_rows))
    return [(r["task_id"], r["workspace_id"]) for r in rows]


# --- helpers ---------------------------------------------------------------------------------


def _require_writer(role: str | None) -> None:
    if role is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    if role not in WRITE_ROLES:
        raise TandemError(ErrorCode.FORBIDDEN)


def _checked_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return limit


def _plus_one(limit: int) -> int:
    return _checked_limit(limit) + 1  # one more row than we return tells whether the list was cut


def _wire(record: Task | Delegation) -> dict[str, Any]:
    """A record's fields in declaration order, JSON-ready: uuids as str, times in RFC 3339."""
    wire = {}
    for field in fields(record):
        value = getattr(record, field.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = rfc3339(value)
        wire[field.name] = value
    return wire


def _number(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def _task(row: Mapping[str, Any]) -> Task:
    values = dict(row)
    values["parameters"] = json.loads(values["parameters"])
    values["result"] = None if values["result"] is None else json.loads(values["result"])
    return Task(**values)


def _moved(row: Mapping[str, Any]) -> tuple[Task, dict[str, Any] | None]:
    """A `task_apply_transition` row: the task, and its execution's columns when it locked one."""
    values = dict(row)
    execution = {
        name[2:]: values.pop(name) for name in [n for n in values if n.startswith("x_")]
    }
    return _task(values), execution if execution["execution_id"] is not None else None


def _delegation(row: Mapping[str, Any]) -> Delegation:
    return Delegation(**dict(row))
