"""What an error's `details` say, in words a person can act on (docs/protocol.md sections 8 and 12).

`DETAIL_FIELDS` names, per error code, the `details` fields the server documents; each becomes an
attribute of that code's exception (`InvalidTransition.status`, `Locked.holder`, ...). `explain`
turns them into one sentence for the exception's text ("cannot complete a task that is pending:
complete needs in_progress"). Details are the server's and may be missing or of another shape
(an older or newer server): `explain` then says nothing rather than fail.

`MOVES_FROM` and `TAKEN_BY` copy the server's task table (server/workspaces/task_rules.py), so an
`invalid_transition` can say which of the two refused; tests/test_sdk_errors.py compares them.
Imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DETAIL_FIELDS: dict[str, tuple[str, ...]] = {
    "invalid_transition": ("status", "action"),
    "locked": ("holder", "expires_at"),
    "conflict": ("version", "state"),
    "limit_exceeded": ("limit", "value"),
    "rate_limited": ("retry_after_ms",),
    "frame_too_large": ("max_frame_bytes", "frame_bytes"),
    "awareness_too_large": ("max_awareness_bytes", "awareness_bytes"),
    "invalid_state": ("reason", "max_state_bytes", "state_bytes"),
    "invalid_patch": ("reason",),
    "update_too_costly": ("reason",),
    "unsupported_version": ("supported",),
    "invalid_workflow": ("step", "pointer", "reason", "cycle", "limit"),
    "unauthorized": ("reason",),
}

# Each task action, and the statuses it may leave (docs/protocol.md section 12.4).
MOVES_FROM: dict[str, frozenset[str]] = {
    "assign": frozenset({"pending", "rejected", "timeout"}),
    "accept": frozenset({"assigned"}),
    "reject": frozenset({"assigned", "accepted"}),
    "start": frozenset({"assigned", "accepted"}),
    "complete": frozenset({"in_progress"}),
    "fail": frozenset({"in_progress"}),
    "cancel": frozenset({"pending", "assigned", "accepted", "rejected", "in_progress", "timeout"}),
    "delegate": frozenset({"pending", "assigned", "accepted", "rejected", "in_progress", "timeout"}),
    "timeout": frozenset({"in_progress"}),
}

# Who may take each action: the server's actor kinds.
TAKEN_BY: dict[str, frozenset[str]] = {
    "assign": frozenset({"creator", "manager", "self_claim"}),
    "accept": frozenset({"assignee"}),
    "reject": frozenset({"assignee"}),
    "start": frozenset({"assignee"}),
    "complete": frozenset({"assignee"}),
    "fail": frozenset({"assignee"}),
    "cancel": frozenset({"creator", "manager"}),
    "delegate": frozenset({"assignee", "creator", "manager", "system"}),
    "timeout": frozenset({"system"}),
}

_ACTOR_WORDS = {
    "assignee": "its assignee",
    "creator": "its creator",
    "manager": "a workspace owner/admin",
    "self_claim": "a writer claiming it for itself",
    "system": "the server's sweeps (timeout, failover)",
}
_STATUS_ORDER = (
    "pending",
    "assigned",
    "accepted",
    "rejected",
    "in_progress",
    "timeout",
)
FINAL = frozenset({"completed", "failed", "cancelled"})  # statuses no action leaves


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _transition(d: dict[str, Any]) -> str | None:
    status, action = d.get("status"), d.get("action")
    if not isinstance(status, str) or not isinstance(action, str):
        return None
    text = f"cannot {action} a task that is {status}"
    allowed = MOVES_FROM.get(action)
    if allowed is None:
        return text
    if status in FINAL:
        return f"{text}: a {status} task is final"
    if status not in allowed:
        return f"{text}: {action} needs a task that is {_either([s for s in _STATUS_ORDER if s in allowed])}"
    who = [words for actor, words in _ACTOR_WORDS.items() if actor in TAKEN_BY.get(action, ())]
    return f"{text}: only {_either(who)} may {action} it" if who else text


def _locked(d: dict[str, Any]) -> str | None:
    holder, until = d.get("holder"), d.get("expires_at")
    if holder is None:
        return None
    return f"held by {holder}" + (f" until {until}" if until else "") + "; wait for it (lock(wait=True)) or retry later"


def _conflict(d: dict[str, Any]) -> str | None:
    version = d.get("version")
    if version is None:
        return None
    return f"the current version is {version}; compute the change again from it (state.update(fn) does)"


def _limit(d: dict[str, Any]) -> str | None:
    limit, value = d.get("limit"), d.get("value")
    if limit is None:
        return None
    return f"this session reached {limit} ({value})" if value is not None else f"this session reached {limit}"


def _rate(d: dict[str, Any]) -> str | None:
    after = d.get("retry_after_ms")
    return None if after is None else f"retry after {after} ms"


def _sizes(limit: str, size: str) -> Callable[[dict[str, Any]], str | None]:
    def explain(d: dict[str, Any]) -> str | None:
        if d.get(limit) is None:
            return d.get("reason") if isinstance(d.get("reason"), str) else None
        return f"{d.get(size)} bytes, {limit} is {d[limit]}"

    return explain


def _reason(d: dict[str, Any]) -> str | None:
    reason = d.get("reason")
    return reason if isinstance(reason, str) and reason else None


# Why a token was refused (`unauthorized`'s details.reason, docs/protocol.md section 2.2).
TOKEN_REFUSALS: dict[str, str] = {
    "missing": "no token was sent (the token query parameter or an Authorization: Bearer header)",
    "too_long": "the token is longer than the server's max_token_bytes",
    "malformed": "the token is not a JWT",
    "wrong_algorithm": "the token is not signed with HS256",
    "bad_signature": "the token was signed with another secret, or altered; issue one with the server's secret",
    "wrong_issuer": "the token's iss is not the server's issuer (TANDEM_JWT_ISSUER)",
    "wrong_audience": "the token's aud is not the server's audience (TANDEM_JWT_AUDIENCE)",
    "invalid_claims": "a claim of the token is missing or of the wrong type",
    "not_yet_valid": "the token's iat or nbf is in the future (are the clocks apart?)",
    "expired": "the token has expired; issue a fresh one",
}


def _token(d: dict[str, Any]) -> str | None:
    reason = d.get("reason")
    if not isinstance(reason, str) or not reason:
        return None
    words = TOKEN_REFUSALS.get(reason)
    return f"{reason}: {words}" if words else reason


def _supported(d: dict[str, Any]) -> str | None:
    supported = d.get("supported")
    return None if not isinstance(supported, list) else f"the server speaks {_either([str(v) for v in supported] or ['none'])}"


_EXPLAIN: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "invalid_transition": _transition,
    "locked": _locked,
    "conflict": _conflict,
    "limit_exceeded": _limit,
    "rate_limited": _rate,
    "frame_too_large": _sizes("max_frame_bytes", "frame_bytes"),
    "awareness_too_large": _sizes("max_awareness_bytes", "awareness_bytes"),
    "invalid_state": _sizes("max_state_bytes", "state_bytes"),
    "invalid_patch": _reason,
    "update_too_costly": _reason,
    "unsupported_version": _supported,
    "unauthorized": _token,
}


def explain(code: str, details: dict[str, Any] | None) -> str | None:
    """One sentence from `details` for a person, or None when there is nothing (usable) to say."""
    fn = _EXPLAIN.get(code)
    if fn is None or not details:
        return None
    try:
        return fn(details)
    except (
        TypeError,
        ValueError,
        KeyError,
    ):  # details of a shape this SDK does not know
        return None
