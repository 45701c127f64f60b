"""Workflow executions: the engine of docs/protocol.md section 12.9 (start, advance, pause,
resume, cancel, get, list).

There is no leader. Whichever node handles a request or a step task's outcome runs the engine in
that same transaction, after locking the execution's row (`execution_lock`): the decision reads
the step states the previous holder committed, so two nodes completing the last two parallel
tasks at once create the join step's task once. What to do is decided by the pure
`execution_rules`; this module reads, writes and creates the step tasks. Every function takes a
connection inside `store.tenant_transaction`; SQL is `server/db/sql/executions.sql`.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.store import Q
from server.workspaces import execution_agents, tasks
from server.workspaces import execution_rules as rules
from server.workspaces.directory import WRITE_ROLES, rfc3339
from server.workspaces.execution_rules import Action, Status

ENGINE = execution_agents.ENGINE
MAX_WAITING_ASSIGNED = 16  # waiting step tasks given to agents per freed slot check
MAX_CACHED_DEFINITIONS = 1024  # workflow versions whose steps and config this process keeps
# Task actions that end a step attempt, and how a failure other than `fail` is described.
OUTCOMES = {
    "complete": "completed",
    "fail": "failed",
    "cancel": "cancelled",
    "timeout": "timed out",
}


@dataclass(frozen=True, slots=True)
class Execution:
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int | None
    workspace_id: uuid.UUID | None
    status: str
    triggered_by: str
    input: dict[str, Any]
    context: dict[str, Any]
    step_states: dict[str, Any]
    step_results: dict[str, Any]
    output: Any
    error: str | None
    started_at: datetime | None
    completed_at: datetime | None

    def to_wire(self) -> dict[str, Any]:
        """The execution object (docs/protocol.md#129): fields in order, ids as strings, RFC 3339 times."""
        wire: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = rfc3339(value)
            wire[f.name] = value
        return wire


@dataclass
class Outcome:
    """What one engine run did: the execution after it (None: no execution moved), the action
    its event names and the status before; the step tasks it created, assigned or cancelled,
    each with the task event's action and its delegation (when one was recorded)."""

    execution: Execution | None = None
    action: str | None = None
    previous_status: str | None = None
    tasks: list[tuple[tasks.Task, str, tasks.Delegation | None]] = field(
        default_factory=list
    )
    waiting: bool | None = None  # whether step tasks waited at the last save (None: not known)


# --- requests ----------------------------------------------------------------------------------


async def start(
    conn: asyncpg.Connection, agent_id: str, role: str | None, workspace_id: uuid.UUID, workflow_id: uuid.UUID,
    version: int | None, input_: dict[str, Any], context: dict[str, Any], *, max_input_bytes: int,
    seen_within_s: float,
) -> Outcome:  # fmt: skip
    """Start version `version` (None: the latest) of a workflow of the workspace: a running
    execution and, in this transaction, the tasks of every step ready at once. A writer only
    (`forbidden`); an unknown workflow or one of another workspace or tenant: `not_found`; an
    inactive one: `conflict`; input or context beyond `max_input_bytes`: `limit_exceeded`."""
    _require_writer(role)
    for name, value in (("input", input_), ("context", context)):
        size = len(
            json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        )
        if size > max_input_bytes:
            raise TandemError(
                ErrorCode.LIMIT_EXCEEDED, f"The execution's {name} is {size} bytes, more than {max_input_bytes}.",
                {"limit": "max_execution_input_bytes", "value": max_input_bytes},
            )  # fmt: skip
    row = await conn.fetchrow(Q["workflow_get"], workflow_id, workspace_id, version)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    if not row["active"]:
        raise TandemError(ErrorCode.CONFLICT, "The workflow is inactive: define it again to start it.",
                          {"workflow_id": str(workflow_id), "active": False})  # fmt: skip
    with store.input_errors():
        created = _execution(await conn.fetchrow(
            Q["execution_insert"], workflow_id, row["version"], workspace_id, agent_id, json.dumps(input_),
            json.dumps(context),
        ))  # fmt: skip
    out = Outcome(previous_status=Status.PENDING, action=Action.START)
    definition = {
        "steps": json.loads(row["steps"]),
        "config": json.loads(row["config"]),
    }
    out.execution = await _advance(conn, created, definition, dict(created.step_states), created.step_results, out,
                                   seen_within_s)  # fmt: skip
    return out


async def control(
    conn: asyncpg.Connection, role: str | None, workspace_id: uuid.UUID, execution_id: uuid.UUID, action: str,
    seen_within_s: float,
) -> Outcome:  # fmt: skip
    """`pause`, `resume` or `cancel` an execution of the workspace (writers only). Pause starts
    no new step tasks until resume (outcomes meanwhile are recorded); resume starts what became
    ready; cancel cancels the execution's open tasks. A move the table lacks: `invalid_transition`."""
    _require_writer(role)
    ex = await _lock(conn, execution_id, workspace_id)
    status = rules.check(ex.status, action)
    out = Outcome(previous_status=ex.status, action=action)
    if action == Action.RESUME:
        ex = await _save(conn, ex, status, ex.step_states, ex.step_results)
        out.execution = await _advance(conn, ex, await _definition(conn, ex), ex.step_states, ex.step_results, out,
                                       seen_within_s)  # fmt: skip
        return out
    out.execution = await _save(conn, ex, status, ex.step_states, ex.step_results)
    if action == Action.CANCEL:
        await _cancel_open_tasks(conn, ex.execution_id, out, seen_within_s)
    return out


async def transition_task(
    conn: asyncpg.Connection,
    agent_id: str,
    role: str | None,
    request: Any,
    seen_within_s: float,
    locked: tasks.Task | None = None,
) -> tuple[tasks.TaskChange, Outcome | None]:
    """`tasks.transition` (of the task `locked` when given), then, when the task is a step's
    and it completed, failed or was cancelled, the engine in the same transaction (`after_task`)."""
    change = await tasks.transition(conn, agent_id, role, request, locked)
    return change, await after_task(conn, change, seen_within_s)


async def after_task(
    conn: asyncpg.Connection, change: tasks.TaskChange, seen_within_s: float
) -> Outcome | None:
    """Record a step task's outcome and advance its execution (None: not a step's outcome).

    The result goes into `step_results[step]`; a failure (a cancel or a timeout counts as one)
    retries while the step's `max_retries` allow, then follows `on_failure` or fails the
    execution. A stale outcome (not the step's running attempt) and one of a finished execution
    change no step. The agent that did the task has a free slot now: waiting step tasks are
    given out."""
    return await after_outcome(
        conn, change.task, change.action, seen_within_s, change.execution_row
    )


async def after_outcome(
    conn: asyncpg.Connection, task: tasks.Task, action: str, seen_within_s: float,
    locked: Mapping[str, Any] | None = None,
) -> Outcome | None:  # fmt: skip
    """`after_task` for a task already moved by `action` (`complete`, `fail`, `cancel`, or the
    sweep's `timeout`), in the transaction that moved it. `locked`: the execution's row as the
    transition's statement locked and read it (None: locked here)."""
    if task.execution_id is None or task.step_id is None or action not in OUTCOMES:
        return None
    out = Outcome()
    ex = (
        _execution(locked)
        if locked is not None
        else await _lock(conn, task.execution_id, None)
    )
    if ex.status not in rules.TERMINAL:
        ok = action == "complete"
        error = task.error if action == "fail" else f"the task was {OUTCOMES[action]}"
        definition = await _definition(conn, ex)
        states = rules.record_outcome(
            definition["steps"], ex.step_states, task.step_id, task.attempt or 0, ok, error, str(task.task_id),
            task.result,
        )  # fmt: skip
        if states is not None:
            results = dict(ex.step_results)
            step = next(s for s in definition["steps"] if s["id"] == task.step_id)
            if states[task.step_id]["status"] == rules.COMPLETED:
                results[task.step_id] = rules.step_result(
                    step, states[task.step_id], task.result
                )
            elif not ok and "agents" in step:
                # A collaborative step's attempt failed: its agents' other tasks end with it.
                for row in await conn.fetch(
                    Q["execution_cancel_step_tasks"],
                    task.execution_id,
                    task.step_id,
                    task.attempt,
                ):
                    out.tasks.append((tasks._task(row), "cancel", None))
            out.previous_status, out.action = ex.status, "advance"
            if ex.status == Status.RUNNING:
                out.execution = await _advance(
                    conn, ex, definition, states, results, out, seen_within_s
                )
            else:  # paused: recorded now, decided on resume
                out.execution = await _save(conn, ex, ex.status, states, results, out=out)
    if out.waiting is not False:  # the save just now found none waiting: nothing to hand out
        await _assign_waiting(conn, out, seen_within_s)
    return out


async def hand_out_waiting(conn: asyncpg.Connection, seen_within_s: float) -> Outcome:
    """Give waiting step tasks to free agents now: when an agent registers or becomes `active`
    again, it may be the one they wait for. The tasks given out are in the outcome."""
    out = Outcome()
    await _assign_waiting(conn, out, seen_within_s)
    return out


# --- queries -----------------------------------------------------------------------------------


async def get(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID | None,
    execution_id: uuid.UUID,
    limit: int,
) -> tuple[Execution, list[tasks.Task]]:
    """An execution of the workspace (None: any) and its step tasks, oldest first (at most `limit`)."""
    row = await conn.fetchrow(Q["execution_get"], execution_id, workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    found = await conn.fetch(Q["execution_tasks"], execution_id, limit)
    return _execution(row), [tasks._task(r) for r in found]


async def list_executions(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, workflow_id: uuid.UUID | None, statuses: list[str] | None,
    limit: int,
) -> tuple[list[Execution], bool]:  # fmt: skip
    """Executions of the workspace, newest first, and whether more were left out."""
    rows = await conn.fetch(
        Q["execution_list"], workspace_id, workflow_id, statuses, limit + 1
    )
    return [_execution(r) for r in rows[:limit]], len(rows) > limit


# --- the engine --------------------------------------------------------------------------------


async def _advance(
    conn: asyncpg.Connection, ex: Execution, definition: Mapping[str, Any], states: Mapping[str, Any],
    results: dict[str, Any], out: Outcome, seen_within_s: float,
) -> Execution:  # fmt: skip
    """Plan a running execution's next moves, make them (step tasks, the end) and save it."""
    steps = definition["steps"]
    variables = {"input": ex.input, "context": ex.context, "steps": results}
    plan = rules.plan(steps, states, variables)
    status, output, error = Status(ex.status), None, None
    if plan.finish is Action.FAIL:
        for step_id, _ in plan.start:  # nothing starts in a failing execution
            if step_id in states:
                plan.states[step_id] = dict(states[step_id])
            else:
                plan.states.pop(step_id, None)
    else:
        by_id = {s["id"]: s for s in steps}
        for step_id, attempt in plan.start:
            made = await execution_agents.start_step(
                conn, ex.execution_id, ex.workspace_id, ex.triggered_by, by_id[step_id], attempt, seen_within_s
            )  # fmt: skip
            state = plan.states[step_id]
            if "agents" in by_id[step_id]:
                state.update(
                    task_id=None,
                    task_ids={t.assigned_to: str(t.task_id) for t, _ in made},
                )
            else:
                state["task_id"] = str(made[0][0].task_id)
            out.tasks.extend((task, "create", delegation) for task, delegation in made)
    if plan.finish is not None:
        status = rules.check(status, plan.finish)
        out.action, error = plan.finish, plan.error
        if plan.finish is Action.COMPLETE:
            named = definition["config"].get("output_step")
            output = results.get(named) if isinstance(named, str) else results
    saved = await _save(conn, ex, status, plan.states, results, output, error, out)
    if status == Status.FAILED:
        await _cancel_open_tasks(conn, ex.execution_id, out, seen_within_s)
    return saved


async def _assign_waiting(
    conn: asyncpg.Connection, out: Outcome, seen_within_s: float
) -> None:
    """Give waiting step tasks (oldest first, at most MAX_WAITING_ASSIGNED) to free agents."""
    definitions: dict[tuple[uuid.UUID, int | None], Mapping[str, Any]] = {}
    for row in await conn.fetch(Q["execution_waiting_tasks"], MAX_WAITING_ASSIGNED):
        task = tasks._task(row)
        assert task.execution_id is not None
        ex = _execution(
            await conn.fetchrow(Q["execution_get"], task.execution_id, None)
        )
        key = (ex.workflow_id, ex.workflow_version)
        if key not in definitions:
            definitions[key] = await _definition(conn, ex)
        step = next(s for s in definitions[key]["steps"] if s["id"] == task.step_id)
        if "capability" not in step:
            continue
        agent, kind = await execution_agents.pick(
            conn, step["capability"], seen_within_s
        )
        if agent is None or kind is None:
            continue
        assigned = tasks._task(
            await conn.fetchrow(Q["execution_assign_task"], task.task_id, agent)
        )
        reason = f"step {step['id']} needs {step['capability']}; a slot freed"
        out.tasks.append(
            (
                assigned,
                "assign",
                await execution_agents.delegate(conn, assigned, agent, kind, reason),
            )
        )


async def _cancel_open_tasks(
    conn: asyncpg.Connection,
    execution_id: uuid.UUID,
    out: Outcome,
    seen_within_s: float,
) -> None:
    for row in await conn.fetch(Q["execution_cancel_tasks"], execution_id):
        out.tasks.append((tasks._task(row), "cancel", None))
    await _assign_waiting(conn, out, seen_within_s)


# --- rows --------------------------------------------------------------------------------------


async def _lock(
    conn: asyncpg.Connection, execution_id: uuid.UUID, workspace_id: uuid.UUID | None
) -> Execution:
    row = await conn.fetchrow(Q["execution_lock"], execution_id, workspace_id)
    if row is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    return _execution(row)


# A workflow version never changes once defined (a new definition is a new version), so its
# parsed steps and config are kept by (workflow id, version), the most recently used ones, and
# read only: the engine's decisions copy what they change. The execution row the caller locked
# or read (under RLS) is what names the version.
_definitions: OrderedDict[tuple[uuid.UUID, int | None], dict[str, Any]] = OrderedDict()


async def _definition(conn: asyncpg.Connection, ex: Execution) -> dict[str, Any]:
    key = (ex.workflow_id, ex.workflow_version)
    found = _definitions.get(key)
    if found is not None:
        _definitions.move_to_end(key)
        return found
    row = await conn.fetchrow(
        Q["execution_definition"], ex.workflow_id, ex.workflow_version
    )
    found = {"steps": json.loads(row["steps"]), "config": json.loads(row["config"])}
    _definitions[key] = found
    if len(_definitions) > MAX_CACHED_DEFINITIONS:
        _definitions.popitem(last=False)
    return found


async def _save(
    conn: asyncpg.Connection, ex: Execution, status: str, states: Mapping[str, Any], results: Mapping[str, Any],
    output: Any = None, error: str | None = None, out: Outcome | None = None,
) -> Execution:  # fmt: skip
    """Write the engine's decision; `out.waiting` learns whether step tasks wait for an agent."""
    row = dict(await conn.fetchrow(
        Q["execution_save"], ex.execution_id, str(status), json.dumps(states), json.dumps(results),
        None if output is None else json.dumps(output), error,
    ))  # fmt: skip
    waiting = row.pop("tasks_waiting")
    if out is not None:
        out.waiting = waiting
    return _execution(row)


def _require_writer(role: str | None) -> None:
    if role is None:
        raise TandemError(ErrorCode.NOT_MEMBER)
    if role not in WRITE_ROLES:
        raise TandemError(ErrorCode.FORBIDDEN)


def _execution(row: Mapping[str, Any]) -> Execution:
    values = dict(row)
    for key in ("input", "context", "step_states", "step_results", "output"):
        values[key] = None if values[key] is None else json.loads(values[key])
    return Execution(**values)
