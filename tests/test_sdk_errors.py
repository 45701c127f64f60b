"""The SDK's typed errors say what their details mean (clients/tandem_client/explain.py): an
`invalid_transition` names the status and the action and which of the two refused, `locked` the
holder, `conflict` the current version, `limit_exceeded` the limit; each field is an attribute.
The SDK's copy of the task table equals the server's (docs/protocol.md section 12.4)."""

from __future__ import annotations

import sys

import pytest

from server.workspaces import task_rules
from tests.serverproc import REPO

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402
from tandem_client import errors, explain  # noqa: E402
from tandem_client.errors import error_from_frame  # noqa: E402


def refused(code: str, details: object, message: str | None = None) -> tandem_client.TandemError:
    return error_from_frame({"type": "error", "re": 3, "code": code, "message": message, "details": details})


def test_the_sdk_task_table_equals_the_server_one() -> None:
    moves: dict[str, set[str]] = {}
    for status, action in task_rules.TRANSITIONS:
        moves.setdefault(str(action), set()).add(str(status))
    assert explain.MOVES_FROM == moves
    assert explain.TAKEN_BY == {str(a): {str(k) for k in kinds} for a, kinds in task_rules.ACTORS.items()}
    assert explain.FINAL == {str(s) for s in task_rules.TERMINAL}


@pytest.mark.parametrize(
    ("status", "action", "says"),
    [
        (
            "pending",
            "complete",
            "cannot complete a task that is pending: complete needs a task that is in_progress",
        ),
        (
            "accepted",
            "assign",
            "cannot assign a task that is accepted: assign needs a task that is pending, rejected or timeout",
        ),
        (
            "in_progress",
            "complete",
            "cannot complete a task that is in_progress: only its assignee may complete it",
        ),
        (
            "pending",
            "cancel",
            "cannot cancel a task that is pending: only its creator or a workspace owner/admin may cancel it",
        ),
        (
            "completed",
            "fail",
            "cannot fail a task that is completed: a completed task is final",
        ),
        ("pending", "frobnicate", "cannot frobnicate a task that is pending"),
    ],
)
def test_invalid_transition_names_status_and_action_and_what_refused(status: str, action: str, says: str) -> None:
    error = refused("invalid_transition", {"status": status, "action": action})
    assert isinstance(error, tandem_client.InvalidTransition)
    assert (error.status, error.action) == (status, action)  # type: ignore[attr-defined]
    assert str(error) == f"invalid_transition: This state change is not allowed: {says}"
    assert error.explanation == says and error.message == "This state change is not allowed."


def test_locked_names_the_holder_and_until_when() -> None:
    error = refused("locked", {"holder": "alice", "expires_at": "2030-01-01T00:00:00Z"})
    assert isinstance(error, tandem_client.Locked)
    assert (error.holder, error.expires_at) == ("alice", "2030-01-01T00:00:00Z")  # type: ignore[attr-defined]
    assert "held by alice until 2030-01-01T00:00:00Z" in str(error)
    # A document update refused by another agent's lock carries only the holder.
    assert str(refused("locked", {"holder": "bob"})).startswith("locked: Locked by another agent: held by bob;")


def test_conflict_names_the_current_version() -> None:
    error = refused("conflict", {"version": 7, "state": {"done": 2}})
    assert isinstance(error, tandem_client.Conflict)
    assert (error.version, error.state) == (7, {"done": 2})  # type: ignore[attr-defined]
    assert "the current version is 7" in str(error)


def test_limit_exceeded_names_the_limit_and_its_value() -> None:
    error = refused("limit_exceeded", {"limit": "max_open_docs", "value": 100})
    assert isinstance(error, tandem_client.LimitExceeded)
    assert (error.limit, error.value) == ("max_open_docs", 100)  # type: ignore[attr-defined]
    assert str(error) == "limit_exceeded: A session limit was reached: this session reached max_open_docs (100)"


@pytest.mark.parametrize(
    ("code", "details", "says"),
    [
        ("rate_limited", {"retry_after_ms": 40}, "retry after 40 ms"),
        (
            "frame_too_large",
            {"max_frame_bytes": 10, "frame_bytes": 12},
            "12 bytes, max_frame_bytes is 10",
        ),
        (
            "invalid_state",
            {"max_state_bytes": 10, "state_bytes": 12},
            "12 bytes, max_state_bytes is 10",
        ),
        (
            "invalid_patch",
            {"reason": "operation 0: path /a not found"},
            "operation 0: path /a not found",
        ),
        ("unsupported_version", {"supported": [1]}, "the server speaks 1"),
    ],
)
def test_other_documented_details_are_said_too(code: str, details: dict[str, object], says: str) -> None:
    assert refused(code, details).explanation == says


@pytest.mark.parametrize(
    ("code", "details"),
    [
        ("locked", None),
        ("invalid_transition", {"status": 3}),
        ("conflict", {}),
        ("limit_exceeded", ["x"]),
        ("not_found", {"x": 1}),
    ],
)
def test_missing_or_unknown_details_leave_the_plain_text(code: str, details: object) -> None:
    error = refused(code, details, "Server text.")
    assert error.explanation is None and str(error) == f"{code}: Server text."


def test_detail_attributes_are_none_when_the_server_sent_none() -> None:
    error = tandem_client.Locked()
    assert (error.holder, error.expires_at, error.details) == (None, None, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("bad_signature", "bad_signature: the token was signed with another secret, or altered"),
        ("malformed", "malformed: the token is not a JWT"),
        ("expired", "expired: the token has expired"),
        ("a_newer_class", "a_newer_class"),
    ],
)
def test_unauthorized_says_why_the_token_was_refused(reason: str, says: str) -> None:
    error = refused("unauthorized", {"reason": reason}, "Authentication failed.")
    assert isinstance(error, tandem_client.Unauthorized)
    assert error.reason == reason
    assert str(error).startswith(f"unauthorized: Authentication failed: {says}")


def test_a_close_reason_names_the_refusal_class() -> None:
    assert errors.close_details("unauthorized: bad_signature") == {"reason": "bad_signature"}
    assert errors.close_details("token_expired") is None and errors.close_details(None) is None
    error = tandem_client.Unauthorized(None, errors.close_details("unauthorized: malformed"))
    assert "malformed: the token is not a JWT" in str(error)


def test_a_close_with_4401_is_token_revoked_when_the_reason_says_so() -> None:
    # docs/protocol.md#23: 4401 is shared by unauthorized and token_revoked; the reason tells them apart.
    assert errors.close_code_error(4401, "token_revoked") is tandem_client.TokenRevoked
    assert errors.close_code_error(4401, "unauthorized: bad_signature") is tandem_client.Unauthorized
    assert errors.close_code_error(4401, None) is tandem_client.Unauthorized
    assert errors.close_code_error(4440, "token_revoked") is tandem_client.TokenExpired
    assert tandem_client.TokenRevoked().close_code == 4401
