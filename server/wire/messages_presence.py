"""Messages of presence and awareness (docs/protocol.md#57-presence-and-awareness): who is in a
workspace, on which document, and their editor state. Pure; server/wire/messages.py adds them
to the server's message registry."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime

from server.core.errors import RequestId
from server.wire.fields import Out

# --- presence and awareness (docs/protocol.md#57-presence-and-awareness) ----------------------

LeftReason = Literal["left", "disconnected", "expired"]


class PresenceMember(Out):
    """One session joined to a workspace. Also the form presence backends store and relay."""

    agent_id: str
    node_id: str
    conn_id: UUID  # the session's `session_id`
    since: AwareDatetime
    doc_ids: list[UUID]  # the session's open documents in this workspace, in opening order
    awareness: dict[str, Any] | None
    awareness_doc_id: UUID | None


class PresenceListOk(Out):
    type: Literal["presence.list.ok"] = "presence.list.ok"
    re: RequestId | None
    workspace_id: UUID
    members: list[PresenceMember]
    truncated: bool
    partial: bool  # the presence store was unreachable: only this node's sessions are listed


class AwarenessSetOk(Out):
    type: Literal["awareness.set.ok"] = "awareness.set.ok"
    re: RequestId | None
    workspace_id: UUID
    doc_id: UUID | None


class PresenceJoined(Out):
    type: Literal["presence.joined"] = "presence.joined"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    node_id: str
    since: AwareDatetime


class PresenceLeft(Out):
    type: Literal["presence.left"] = "presence.left"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    reason: LeftReason


class PresenceChanged(Out):
    type: Literal["presence.changed"] = "presence.changed"
    workspace_id: UUID
    agent_id: str
    conn_id: UUID
    doc_ids: list[UUID]


class AwarenessChanged(Out):
    type: Literal["awareness.changed"] = "awareness.changed"
    workspace_id: UUID
    doc_id: UUID | None
    agent_id: str
    conn_id: UUID
    state: dict[str, Any] | None


class PresenceStale(Out):
    type: Literal["presence.stale"] = "presence.stale"
    workspace_id: UUID


class PresenceGone(Out):
    """A member that left, in a `presence.batch`."""

    conn_id: UUID
    agent_id: str
    reason: LeftReason


class PresenceBatch(Out):
    """A workspace's presence changes of one short window, each session at most once with its
    latest state: `members` joined or changed (whole member objects), `left` are gone."""

    type: Literal["presence.batch"] = "presence.batch"
    workspace_id: UUID
    members: list[PresenceMember]
    left: list[PresenceGone]
