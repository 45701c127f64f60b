"""The execution state machine (server/workspaces/execution_rules.py), pure: every (status,
action) pair against the table written out again from docs/protocol.md section 12.9, and the
docs' table against the module.
"""

from __future__ import annotations

import itertools

import pytest

from server.core.errors import ErrorCode, TandemError
from server.workspaces.execution_rules import (
    TERMINAL,
    TRANSITIONS,
    Action,
    Status,
    check,
    evaluate,
)
from tests.protocol_helpers import code, section, table

EXPECTED: dict[str, dict[str, str]] = {
    "pending": {"start": "running", "cancel": "cancelled"},
    "running": {"pause": "paused", "complete": "completed", "fail": "failed", "cancel": "cancelled"},
    "paused": {"resume": "running", "cancel": "cancelled"},
    "completed": {}, "failed": {}, "cancelled": {}, "timeout": {},
}  # fmt: skip


def test_the_statuses_are_the_schemas_enum() -> None:
    assert [s.value for s in Status] == [
        "pending",
        "running",
        "paused",
        "completed",
        "failed",
        "cancelled",
        "timeout",
    ]
    assert TERMINAL == {
        Status.COMPLETED,
        Status.FAILED,
        Status.CANCELLED,
        Status.TIMEOUT,
    }


@pytest.mark.parametrize(
    ("status", "action"), list(itertools.product(list(Status), list(Action)))
)
def test_every_pair_follows_the_table(status: Status, action: Action) -> None:
    want = EXPECTED[status.value].get(action.value)
    if want is None:
        with pytest.raises(TandemError) as info:
            check(status.value, action.value)
        assert info.value.code is ErrorCode.INVALID_TRANSITION
        assert info.value.details == {"status": status.value, "action": action.value}
    else:
        assert check(status.value, action.value) == want


def test_the_documented_table_is_the_module() -> None:
    # docs/protocol.md#129-workflow-executions
    text = section("12.9 Workflow executions")
    rows = table(text)  # the section's one table
    documented = {(code(s), code(a)): code(t) for s, a, t in rows}
    assert documented == {
        (s.value, a.value): t.value for (s, a), t in TRANSITIONS.items()
    }


def test_conditions_evaluate_or_report_their_error_never_raise() -> None:
    variables = {
        "input": {"kind": "bug", "n": 3},
        "context": {"env": "prod"},
        "steps": {"a": {"ok": True}},
    }
    assert evaluate(
        'input.kind == "bug" && steps.a.ok && context.env == "prod"', variables
    ) == (True, None)
    assert evaluate("input.n > 5", variables) == (False, None)
    for text in ("input.missing == 1", "input.n", "1 / 0 == 1", "steps.b.ok"):
        holds, error = evaluate(text, variables)
        assert holds is False and error, text
