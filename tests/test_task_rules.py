"""The task state machine (server/workspaces/task_rules.py), pure: every (status, action) pair and every actor.

The expected tables below are written out again from docs/protocol.md section 12.4, not
derived from the module, so a slip in either shows up as a failing pair.
"""

from __future__ import annotations

import itertools

import pytest

from server.core.errors import ErrorCode, TandemError
from server.workspaces.task_rules import (
    ACTORS,
    TERMINAL,
    TRANSITIONS,
    Action,
    Actor,
    Status,
    check,
    next_status,
)

EXPECTED: dict[str, dict[str, str]] = {
    "pending": {"assign": "assigned", "delegate": "assigned", "cancel": "cancelled"},
    "assigned": {
        "accept": "accepted", "start": "in_progress", "reject": "rejected", "delegate": "assigned", "cancel": "cancelled"
    },
    "accepted": {"start": "in_progress", "reject": "rejected", "delegate": "assigned", "cancel": "cancelled"},
    "rejected": {"assign": "assigned", "delegate": "assigned", "cancel": "cancelled"},
    "in_progress": {
        "complete": "completed", "fail": "failed", "delegate": "assigned", "cancel": "cancelled", "timeout": "timeout"
    },
    "timeout": {"assign": "assigned", "delegate": "assigned", "cancel": "cancelled"},
    "completed": {},
    "failed": {},
    "cancelled": {},
}

EXPECTED_ACTORS: dict[str, set[str]] = {
    "assign": {"creator", "manager", "self_claim"},
    "accept": {"assignee"},
    "reject": {"assignee"},
    "start": {"assignee"},
    "complete": {"assignee"},
    "fail": {"assignee"},
    "cancel": {"creator", "manager"},
    "delegate": {"assignee", "creator", "manager", "system"},
    "timeout": {"system"},
}

EVERYONE = frozenset(Actor)
PAIRS = list(itertools.product([s.value for s in Status], [a.value for a in Action]))


def test_the_enums_are_the_schemas_and_the_issues() -> None:
    assert [s.value for s in Status] == [
        "pending", "assigned", "accepted", "rejected", "in_progress", "completed", "failed", "cancelled", "timeout"
    ]
    assert set(EXPECTED) == {s.value for s in Status}
    assert set(EXPECTED_ACTORS) == {a.value for a in Action}


def test_the_transition_table_is_exactly_the_issues() -> None:
    expected = {(s, a): t for s, moves in EXPECTED.items() for a, t in moves.items()}
    assert {(s.value, a.value): t.value for (s, a), t in TRANSITIONS.items()} == expected
    assert TERMINAL == {Status.COMPLETED, Status.FAILED, Status.CANCELLED}


def test_the_actor_table_is_exactly_the_issues() -> None:
    assert {a.value: {k.value for k in kinds} for a, kinds in ACTORS.items()} == EXPECTED_ACTORS


@pytest.mark.parametrize(("status", "action"), PAIRS)
def test_every_pair_is_legal_exactly_when_the_table_says(status: str, action: str) -> None:
    expected = EXPECTED[status].get(action)
    for retries_left in (False, True):
        if expected is None:
            assert next_status(status, action, retries_left) is None
            with pytest.raises(TandemError) as info:
                check(status, action, EVERYONE, retries_left)
            assert info.value.code is ErrorCode.INVALID_TRANSITION
            assert info.value.details == {"status": status, "action": action}
        else:
            retried = action == "fail" and retries_left
            want = "pending" if retried else expected
            assert next_status(status, action, retries_left) == want
            assert check(status, action, EVERYONE, retries_left) == want


@pytest.mark.parametrize(("status", "action"), [p for p in PAIRS if p[1] in EXPECTED[p[0]]])
def test_each_legal_pair_is_refused_to_every_actor_not_listed(status: str, action: str) -> None:
    for kind in Actor:
        if kind.value in EXPECTED_ACTORS[action]:
            assert check(status, action, {kind}, False) == EXPECTED[status][action]
        else:
            with pytest.raises(TandemError) as info:
                check(status, action, {kind}, False)
            assert info.value.code is ErrorCode.INVALID_TRANSITION
    with pytest.raises(TandemError):
        check(status, action, set(), False)


def test_fail_with_retries_left_goes_back_to_pending_and_at_the_limit_fails() -> None:
    assert check("in_progress", "fail", {Actor.ASSIGNEE}, retries_left=True) is Status.PENDING
    assert check("in_progress", "fail", {Actor.ASSIGNEE}, retries_left=False) is Status.FAILED


def test_only_the_sweep_times_a_task_out() -> None:
    assert check("in_progress", "timeout", {Actor.SYSTEM}, False) is Status.TIMEOUT
    with pytest.raises(TandemError):
        check("in_progress", "timeout", {Actor.CREATOR, Actor.ASSIGNEE, Actor.MANAGER, Actor.SELF_CLAIM}, False)


def test_failover_sends_an_open_task_back_to_assigned_and_never_a_finished_one() -> None:
    for status in ("assigned", "accepted", "in_progress"):
        assert check(status, "delegate", {Actor.SYSTEM}, False) is Status.ASSIGNED
    for status in ("completed", "failed", "cancelled"):
        with pytest.raises(TandemError):
            check(status, "delegate", {Actor.SYSTEM}, False)


def test_unknown_names_are_invalid_transitions_not_crashes() -> None:
    for status, action in (("pending", "explode"), ("lost", "assign"), ("", "")):
        assert next_status(status, action, False) is None
        with pytest.raises(TandemError) as info:
            check(status, action, EVERYONE, False)
        assert info.value.details == {"status": status, "action": action}
