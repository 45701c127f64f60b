"""Workflow executions, pure (docs/protocol.md section 12.9): the status table and the step plan.

Rule 1: `TRANSITIONS` is the whole execution state machine; a (status, action) pair missing from
it is `invalid_transition`. Rule 2: `plan` decides what an execution does next from its
definition and its recorded step states alone, so the caller (server/workspaces/executions.py)
only has to hold the execution's row lock while it asks and writes the answer back. Conditions
run here, with `celpy` over `input`, `context` and `steps` (the step results); a condition that
errors fails the execution with that error, it never raises. Pure: no I/O, no asyncpg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import celpy
from celpy import celtypes

from server.core.errors import ErrorCode, TandemError


class Status(StrEnum):
    """The `workflow_status` enum of migration 0001 (`timeout` is never entered)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


class Action(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    COMPLETE = "complete"  # the engine's: every step completed or skipped
    FAIL = "fail"  # the engine's: a step failed past its retries with no on_failure
    CANCEL = "cancel"


S, A = Status, Action

TRANSITIONS: dict[tuple[Status, Action], Status] = {
    (S.PENDING, A.START): S.RUNNING,
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.RUNNING, A.PAUSE): S.PAUSED,
    (S.RUNNING, A.COMPLETE): S.COMPLETED,
    (S.RUNNING, A.FAIL): S.FAILED,
    (S.RUNNING, A.CANCEL): S.CANCELLED,
    (S.PAUSED, A.RESUME): S.RUNNING,
    (S.PAUSED, A.CANCEL): S.CANCELLED,
}

TERMINAL = frozenset(Status) - {status for status, _ in TRANSITIONS}


def check(status: str, action: str) -> Status:
    """The status after `action`, or `invalid_transition` naming the status and the action."""
    target = TRANSITIONS.get((status, action))  # type: ignore[call-overload]  # str keys hash as the enums
    if target is None:
        raise TandemError(
            ErrorCode.INVALID_TRANSITION,
            details={"status": str(status), "action": str(action)},
        )
    return target


# --- steps -------------------------------------------------------------------------------------

# A step's recorded status (step_states[id]["status"]); a step with no entry has not started.
RUNNING, RETRY, COMPLETED, SKIPPED, FAILED = (
    "running",
    "retry",
    "completed",
    "skipped",
    "failed",
)


@dataclass
class Plan:
    """What to do now: start these steps (id, attempt), and end the execution (`finish`:
    `complete` or `fail`, with `error`). `states` is the new step_states."""

    states: dict[str, dict[str, Any]]
    start: list[tuple[str, int]] = field(default_factory=list)
    finish: Action | None = None
    error: str | None = None


def record_outcome(
    steps: list[Mapping[str, Any]],
    states: Mapping[str, Any],
    step_id: str,
    attempt: int,
    ok: bool,
    error: str | None,
    task_id: str | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]] | None:
    """The step states after task `task_id` of attempt `attempt` of `step_id` completed (`ok`,
    with `result`) or failed; None when that attempt is not the step's running one (a stale
    outcome changes nothing). A step of several agents has a task for each (`task_ids`, by
    agent) and completes once each completed: until then their results wait in its state
    (`results`, by agent, whoever the task was delegated to). A failure with retries left
    (attempts so far <= the template's max_retries) is `retry`, else `failed`."""
    current = states.get(step_id)
    if (
        current is None
        or current.get("status") != RUNNING
        or current.get("attempt") != attempt
    ):
        return None
    new = {k: dict(v) for k, v in states.items()}
    step = _step(steps, step_id)
    if ok and "agents" in step:
        agent = next(
            (a for a, t in current.get("task_ids", {}).items() if t == task_id), None
        )
        if agent is None:
            return None
        results = {**current.get("results", {}), agent: dict(result or {})}
        done = set(results) >= set(step["agents"])
        new[step_id].update(
            status=COMPLETED if done else RUNNING, error=None, results=results
        )
        return new
    if ok:
        new[step_id].update(status=COMPLETED, error=None)
        return new
    new[step_id].pop("results", None)
    budget = step["task"].get("max_retries", 0)
    new[step_id].update(status=RETRY if attempt <= budget else FAILED, error=error)
    return new


def plan(
    steps: list[Mapping[str, Any]],
    states: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> Plan:
    """The next moves of a running execution. Until nothing changes: a failed step starts its
    `on_failure` step (else the execution fails); a `retry` step starts its next attempt; a step
    not started whose dependencies are settled (completed, skipped, or failed with a completed
    compensating step) is skipped when its condition is false, else started. A compensating step
    (some step's `on_failure`) starts only from that failure, and is skipped once every step
    naming it completed or was skipped. All settled: `complete`."""
    new = {k: dict(v) for k, v in states.items()}
    out = Plan(new)
    sources: dict[str, list[str]] = {}
    for s in steps:
        if "on_failure" in s:
            sources.setdefault(s["on_failure"], []).append(s["id"])
    changed = True
    while changed:
        changed = False
        for s in steps:
            sid, st = s["id"], new.get(s["id"])
            if st is None and sid in sources:
                if all(
                    new.get(src, {}).get("status") in (COMPLETED, SKIPPED)
                    for src in sources[sid]
                ):
                    new[sid] = {
                        "status": SKIPPED,
                        "attempt": 0,
                        "task_id": None,
                        "error": None,
                    }
                    changed = True
            elif st is None:
                if not all(
                    _settled(steps, new, dep) for dep in s.get("depends_on", [])
                ):
                    continue
                if "condition" in s:
                    holds, error = evaluate(s["condition"], variables)
                    if error is not None:
                        out.finish, out.error = (
                            Action.FAIL,
                            f"step {sid!r}: condition failed: {error}",
                        )
                        return out
                    if not holds:
                        new[sid] = {
                            "status": SKIPPED,
                            "attempt": 0,
                            "task_id": None,
                            "error": None,
                        }
                        changed = True
                        continue
                new[sid] = {
                    "status": RUNNING,
                    "attempt": 1,
                    "task_id": None,
                    "error": None,
                }
                out.start.append((sid, 1))
                changed = True
            elif st["status"] == RETRY:
                st.update(status=RUNNING, attempt=st["attempt"] + 1)
                out.start.append((sid, st["attempt"]))
                changed = True
            elif st["status"] == FAILED and not st.get("handled"):
                target = s.get("on_failure")
                if target is None or new.get(target) is not None:
                    out.finish, out.error = (
                        Action.FAIL,
                        f"step {sid!r} failed: {st.get('error')}",
                    )
                    return out
                st["handled"] = True
                new[target] = {
                    "status": RUNNING,
                    "attempt": 1,
                    "task_id": None,
                    "error": None,
                }
                out.start.append((target, 1))
                changed = True
    if all(_settled(steps, new, s["id"]) for s in steps):
        out.finish = Action.COMPLETE
    return out


def step_result(
    step: Mapping[str, Any], state: Mapping[str, Any], result: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a completed step puts in `step_results`: its task's result, or for a step of several
    agents their results by agent."""
    return dict(state["results"]) if "agents" in step else dict(result or {})


def _settled(
    steps: list[Mapping[str, Any]], states: Mapping[str, Any], step_id: str
) -> bool:
    st = states.get(step_id)
    if st is None:
        return False
    if st["status"] in (COMPLETED, SKIPPED):
        return True
    if st["status"] == FAILED and st.get("handled"):
        target = _step(steps, step_id)["on_failure"]
        return states.get(target, {}).get("status") == COMPLETED
    return False


def _step(steps: list[Mapping[str, Any]], step_id: str) -> Mapping[str, Any]:
    return next(s for s in steps if s["id"] == step_id)


# --- conditions --------------------------------------------------------------------------------

_CEL = celpy.Environment()


def evaluate(text: str, variables: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Run condition `text` over `input`, `context` and `steps` (the results of completed steps).
    (holds, None), or (False, reason) when it cannot be evaluated or is not a bool."""
    activation = {
        "input": celpy.json_to_cel(dict(variables.get("input", {}))),
        "context": celpy.json_to_cel(dict(variables.get("context", {}))),
        "steps": celpy.json_to_cel(dict(variables.get("steps", {}))),
    }
    try:
        result = _CEL.program(_CEL.compile(text)).evaluate(activation)
    except Exception as exc:  # noqa: BLE001  (celpy raises its own errors and Python ones alike; none may escape)
        return False, f"{type(exc).__name__}: {exc}"
    if isinstance(
        result, Exception
    ):  # celpy returns CELEvalError values for missing fields
        return False, str(result)
    if not isinstance(result, celtypes.BoolType):
        return False, f"the condition gave {type(result).__name__}, not bool"
    return bool(result), None
