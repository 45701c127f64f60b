"""Messages of the agent registry (docs/protocol.md section 12.7): register, set status, list.

Pure like server/wire/protocol.py, which adds these to its message union, rules and registry.
Agents are tenant-wide, so every request is legal without a joined workspace (rule `always`).
The agent object they carry is built by server/workspaces/agents.py `Agent.to_wire()`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from server.core.errors import RequestId
from server.wire.fields import Name, Out, ReqId, Request, _not_blank

MAX_CAPABILITIES = 32
MAX_METADATA_BYTES = (
    8192  # compact JSON, as the database's agent_metadata_bounded checks it
)

Capability = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$"),
    AfterValidator(_not_blank),
]
Kind = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(_not_blank)
]
SetStatus = Literal[
    "active", "maintenance", "error"
]  # `inactive` is derived, never set
ListedStatus = Literal["active", "inactive", "error", "maintenance"]


def _bounded_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object of finite numbers, at most MAX_METADATA_BYTES as compact JSON."""
    try:
        text = json.dumps(
            value, allow_nan=False, separators=(",", ":"), ensure_ascii=False
        )
    except ValueError:
        raise PydanticCustomError(
            "json_object", "Must be a JSON object of finite numbers"
        ) from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "At most {limit} bytes as compact JSON",
            {"limit": MAX_METADATA_BYTES},
        )
    if "\\u0000" in text:  # PostgreSQL jsonb cannot hold NUL
        raise PydanticCustomError("json_object", "Must not contain NUL characters")
    return value


def _distinct(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise PydanticCustomError("distinct", "Capabilities must be distinct")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_bounded_metadata)]
Capabilities = Annotated[
    list[Capability], Field(max_length=MAX_CAPABILITIES), AfterValidator(_distinct)
]


class AgentRegister(Request):
    """Register the calling agent (the token's `sub`), or update its registration: idempotent."""

    type: Literal["agent.register"] = "agent.register"
    id: ReqId | None = None
    name: Name
    kind: Kind = "general"
    capabilities: Capabilities = Field(default_factory=list)
    max_concurrent_tasks: Annotated[int, Field(ge=1, le=10_000)] = 1
    metadata: Metadata = Field(default_factory=dict)


class AgentSetStatus(Request):
    """Set the calling agent's own status (section 12.7: only an agent sets its own)."""

    type: Literal["agent.set_status"] = "agent.set_status"
    id: ReqId | None = None
    status: SetStatus


class AgentList(Request):
    type: Literal["agent.list"] = "agent.list"
    id: ReqId | None = None
    capability: Capability | None = None
    status: Annotated[list[ListedStatus], Field(min_length=1, max_length=4)] | None = (
        None
    )
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


CLIENT_MESSAGES = (AgentRegister, AgentSetStatus, AgentList)
RULES = {cls.model_fields["type"].default: "always" for cls in CLIENT_MESSAGES}

# --- server messages -----------------------------------------------------------------------------

Obj = dict[str, Any]  # an agent object (docs/protocol.md#127)


class AgentRegisterOk(Out):
    type: Literal["agent.register.ok"] = "agent.register.ok"
    re: RequestId | None
    agent: Obj


class AgentSetStatusOk(Out):
    type: Literal["agent.set_status.ok"] = "agent.set_status.ok"
    re: RequestId | None
    agent: Obj


class AgentListOk(Out):
    type: Literal["agent.list.ok"] = "agent.list.ok"
    re: RequestId | None
    agents: list[Obj]
    truncated: bool


SERVER_MESSAGES = (AgentRegisterOk, AgentSetStatusOk, AgentListOk)
