"""The task state machine (docs/protocol.md section 12.4): where each action leads, and who may take it.

Rule 1: `TRANSITIONS` is the whole state machine; a (status, action) pair missing from it is
illegal, never silently ignored. Rule 2: `ACTORS` says which kinds of agent may take each
action; the caller works out which kinds the acting agent is, this module only decides.
Pure: no I/O, no asyncpg; `server/workspaces/tasks.py` locks the row and asks `check`.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from enum import StrEnum

from server.core.errors import ErrorCode, TandemError


class Status(StrEnum):
    """The `task_status` enum of migration 0001."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


class Action(StrEnum):
    ASSIGN = "assign"
    ACCEPT = "accept"
    REJECT = "reject"
    START = "start"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    DELEGATE = "delegate"
    TIMEOUT = "timeout"


class Actor(StrEnum):
    """What the acting agent is to the task; one agent may be several at once."""

    CREATOR = "creator"
    ASSIGNEE = "assignee"
    MANAGER = "manager"  # the workspace's owner or an admin
    SELF_CLAIM = "self_claim"  # a writer assigning the task to itself
    SYSTEM = "system"  # the timeout and failover sweeps, never a client


S, A = Status, Action

TRANSITIONS: dict[tuple[Status, Action], Status] = {
    (S.PENDING, A.ASSIGN): S.ASSIGNED,
    (S.PENDING, A.DELEGATE): S.ASSIGNED,
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.ASSIGNED, A.ACCEPT): S.ACCEPTED,
    (S.ASSIGNED, A.START): S.IN_PROGRESS,  # accept and start in one step: the worker's usual path
    (S.ASSIGNED, A.REJECT): S.REJECTED,
    (S.ASSIGNED, A.DELEGATE): S.ASSIGNED,
    (S.ASSIGNED, A.CANCEL): S.CANCELLED,
    (S.ACCEPTED, A.START): S.IN_PROGRESS,
    (S.ACCEPTED, A.REJECT): S.REJECTED,
    (S.ACCEPTED, A.DELEGATE): S.ASSIGNED,
    (S.ACCEPTED, A.CANCEL): S.CANCELLED,
    (S.REJECTED, A.ASSIGN): S.ASSIGNED,
    (S.REJECTED, A.DELEGATE): S.ASSIGNED,
    (S.REJECTED, A.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, A.COMPLETE): S.COMPLETED,
    (S.IN_PROGRESS, A.FAIL): S.FAILED,  # S.PENDING instead while retries are left: next_status
    (S.IN_PROGRESS, A.DELEGATE): S.ASSIGNED,
    (S.IN_PROGRESS, A.CANCEL): S.CANCELLED,
    (S.IN_PROGRESS, A.TIMEOUT): S.TIMEOUT,
    (S.TIMEOUT, A.ASSIGN): S.ASSIGNED,
    (S.TIMEOUT, A.DELEGATE): S.ASSIGNED,  # failover
    (S.TIMEOUT, A.CANCEL): S.CANCELLED,
}

# Statuses no action leaves.
TERMINAL = frozenset(Status) - {status for status, _ in TRANSITIONS}

ACTORS: dict[Action, frozenset[Actor]] = {
    A.ASSIGN: frozenset({Actor.CREATOR, Actor.MANAGER, Actor.SELF_CLAIM}),
    A.ACCEPT: frozenset({Actor.ASSIGNEE}),
    A.REJECT: frozenset({Actor.ASSIGNEE}),
    A.START: frozenset({Actor.ASSIGNEE}),
    A.COMPLETE: frozenset({Actor.ASSIGNEE}),
    A.FAIL: frozenset({Actor.ASSIGNEE}),
    A.CANCEL: frozenset({Actor.CREATOR, Actor.MANAGER}),
    A.DELEGATE: frozenset({Actor.ASSIGNEE, Actor.CREATOR, Actor.MANAGER, Actor.SYSTEM}),
    A.TIMEOUT: frozenset({Actor.SYSTEM}),
}


def next_status(status: str, action: str, retries_left: bool) -> Status | None:
    """The status `action` leads to from `status`, or None when the table has no such move.

    A failure with retries left goes back to `pending` (any worker may take it again) instead
    of `failed`. Unknown status or action strings are simply not in the table.
    """
    target = TRANSITIONS.get((status, action))  # type: ignore[call-overload]  # str keys hash as the enums
    if target is S.FAILED and retries_left:
        return S.PENDING
    return target


def check(status: str, action: str, actor_kinds: AbstractSet[Actor], retries_left: bool) -> Status:
    """The status after `action`, or `invalid_transition` when the status does not allow the
    action or none of `actor_kinds` may take it (details: the current status and the action).

    Writing rights (viewers, `permissions`) are the caller's check, made before this one.
    """
    target = next_status(status, action, retries_left)
    if target is None or not actor_kinds & ACTORS.get(action, frozenset()):  # type: ignore[call-overload]
        raise TandemError(ErrorCode.INVALID_TRANSITION, details={"status": str(status), "action": str(action)})
    return target
