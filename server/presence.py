"""Presence and awareness (docs/protocol.md#57): who is joined to which workspace, where, doing what.

Presence is ephemeral and never reaches PostgreSQL. Here: the `Presence` protocol the session
and the app use, this node's entries with their local delivery (`LocalMembers`, no I/O), and
`MemoryPresence` (one node, no `REDIS_URL`). server/presence_redis.py adds Redis for many nodes.
No call raises into a session. Imports no Starlette, asyncpg or Redis; events are encoded once
with server/protocol.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from server import protocol as p
from server.metrics import Metrics
from server.settings import Settings

Background = list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]  # (task name, coroutine function)


class Subscriber(Protocol):
    """The session side: its id and a bounded, non-blocking send (server/session.py)."""

    conn_id: str

    def send_text(self, frame: str) -> None: ...


@dataclass(frozen=True)
class Listing:
    members: list[p.PresenceMember]
    truncated: bool  # more than max_list_items members
    partial: bool = False  # Redis unreachable: only this node's own sessions


@dataclass(frozen=True)
class Change:
    """One change of a local entry: `member` is its new value (None: removed), `frame` the event."""

    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    conn_id: str
    member: p.PresenceMember | None
    frame: str


@dataclass
class Entry:
    subscriber: Subscriber
    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    member: p.PresenceMember


class Presence(Protocol):
    """What a session and the app need from a presence backend. No method raises on Redis faults."""

    configured: bool  # True: Redis is configured

    async def join(self, who: Subscriber, tenant_id: uuid.UUID, agent_id: str, workspace_id: uuid.UUID) -> None: ...
    async def leave(self, conn_id: str, workspace_id: uuid.UUID) -> None: ...
    async def disconnect(self, conn_id: str) -> None: ...
    async def open_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None: ...
    async def close_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None: ...
    async def set_awareness(
        self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID | None, state: dict[str, Any] | None
    ) -> None: ...
    async def list_members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing: ...
    async def health(self) -> dict[str, bool | None]: ...
    def background(self) -> Background: ...
    async def close(self) -> None: ...


# --- this node's sessions: state and local delivery, no I/O -----------------------------------


class LocalMembers:
    """This node's presence entries, keyed by (conn_id, workspace_id), and delivery to them.

    Each change is delivered at once to the node's other sessions in the workspace (a session
    never gets its own events) and returned as a `Change` for a backend to relay. Bounded by the
    sessions: at most `max_joined_workspaces` entries a session, `max_open_docs` doc ids each.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.entries: dict[tuple[str, uuid.UUID], Entry] = {}
        self.by_workspace: dict[tuple[uuid.UUID, uuid.UUID], dict[str, None]] = {}  # insertion-ordered
        self.by_conn: dict[str, dict[uuid.UUID, None]] = {}

    def deliver(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, frame: str, exclude: str | None = None) -> int:
        """Send `frame` to this node's sessions joined to the workspace, except `exclude`."""
        sent = 0
        for conn_id in list(self.by_workspace.get((tenant_id, workspace_id), ())):
            if conn_id != exclude:
                self.entries[(conn_id, workspace_id)].subscriber.send_text(frame)
                sent += 1
        return sent

    def _emit(self, entry: Entry, member: p.PresenceMember | None, event: Any) -> Change:
        frame = p.encode(event)
        self.deliver(entry.tenant_id, entry.workspace_id, frame, exclude=entry.subscriber.conn_id)
        return Change(entry.tenant_id, entry.workspace_id, entry.subscriber.conn_id, member, frame)

    def join(self, who: Subscriber, tenant_id: uuid.UUID, agent_id: str, workspace_id: uuid.UUID) -> Change | None:
        """None when the session is already in the workspace (a repeated join changes nothing)."""
        key = (who.conn_id, workspace_id)
        if key in self.entries:
            return None
        since = datetime.now(UTC)
        member = p.PresenceMember(
            agent_id=agent_id, node_id=self.node_id, conn_id=uuid.UUID(who.conn_id), since=since,
            doc_ids=[], awareness=None, awareness_doc_id=None,
        )  # fmt: skip
        entry = self.entries[key] = Entry(who, tenant_id, workspace_id, member)
        self.by_workspace.setdefault((tenant_id, workspace_id), {})[who.conn_id] = None
        self.by_conn.setdefault(who.conn_id, {})[workspace_id] = None
        event = p.PresenceJoined(
            workspace_id=workspace_id, agent_id=agent_id, conn_id=member.conn_id, node_id=self.node_id, since=since
        )
        return self._emit(entry, member, event)

    def leave(self, conn_id: str, workspace_id: uuid.UUID, reason: p.LeftReason) -> Change | None:
        entry = self.entries.pop((conn_id, workspace_id), None)
        if entry is None:
            return None
        members = self.by_workspace[(entry.tenant_id, workspace_id)]
        members.pop(conn_id, None)
        if not members:
            del self.by_workspace[(entry.tenant_id, workspace_id)]
        workspaces = self.by_conn[conn_id]
        workspaces.pop(workspace_id, None)
        if not workspaces:
            del self.by_conn[conn_id]
        m = entry.member
        return self._emit(entry, None, p.PresenceLeft(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, reason=reason))

    def disconnect(self, conn_id: str) -> list[Change]:
        changes = (self.leave(conn_id, ws, "disconnected") for ws in list(self.by_conn.get(conn_id, ())))
        return [c for c in changes if c is not None]

    def _update(self, entry: Entry, **fields: Any) -> p.PresenceMember:
        entry.member = entry.member.model_copy(update=fields)
        return entry.member

    def open_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> Change | None:
        entry = self.entries.get((conn_id, workspace_id))
        if entry is None or doc_id in entry.member.doc_ids:
            return None
        m = self._update(entry, doc_ids=[*entry.member.doc_ids, doc_id])
        return self._emit(entry, m, p.PresenceChanged(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))

    def close_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> list[Change]:
        """The doc ids change; an awareness state about that document is cleared with it."""
        entry = self.entries.get((conn_id, workspace_id))
        if entry is None or doc_id not in entry.member.doc_ids:
            return []
        m = self._update(entry, doc_ids=[d for d in entry.member.doc_ids if d != doc_id])
        changes = [self._emit(entry, m, p.PresenceChanged(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))]
        if m.awareness_doc_id == doc_id:
            changes.append(self._awareness(entry, doc_id, None))
        return changes

    def set_awareness(
        self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID | None, state: dict[str, Any] | None
    ) -> Change | None:
        entry = self.entries.get((conn_id, workspace_id))
        return None if entry is None else self._awareness(entry, doc_id, state)

    def _awareness(self, entry: Entry, doc_id: uuid.UUID | None, state: dict[str, Any] | None) -> Change:
        m = self._update(entry, awareness=state, awareness_doc_id=doc_id if state is not None else None)
        event = p.AwarenessChanged(workspace_id=entry.workspace_id, doc_id=doc_id, agent_id=m.agent_id, conn_id=m.conn_id, state=state)
        return self._emit(entry, m, event)

    def listing(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, limit: int, partial: bool = False) -> Listing:
        conns = list(self.by_workspace.get((tenant_id, workspace_id), ()))
        members = [self.entries[(c, workspace_id)].member for c in conns[:limit]]
        return Listing(members, len(conns) > limit, partial)

    def announce(self, entry: Entry) -> list[str]:
        """Events that tell another node everything about `entry` (after Redis lost it)."""
        m = entry.member
        ws = entry.workspace_id
        events: list[Any] = [p.PresenceJoined(workspace_id=ws, agent_id=m.agent_id, conn_id=m.conn_id, node_id=m.node_id, since=m.since)]
        if m.doc_ids:
            events.append(p.PresenceChanged(workspace_id=ws, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))
        if m.awareness is not None:
            events.append(p.AwarenessChanged(workspace_id=ws, doc_id=m.awareness_doc_id, agent_id=m.agent_id, conn_id=m.conn_id, state=m.awareness))
        return [p.encode(e) for e in events]


# --- one node --------------------------------------------------------------------------------


class MemoryPresence:
    """Presence of a single node, in process. `RedisPresence` extends it with the relay."""

    configured = False

    def __init__(self, node_id: str, metrics: Metrics, max_list_items: int = 1000) -> None:
        self.local = LocalMembers(node_id)
        self.node_id = node_id
        self.metrics = metrics
        self.max_list_items = max_list_items

    async def _relay(self, op: str, changes: list[Change]) -> None:
        """Make `changes` known beyond this node. One node: nothing to do."""

    async def _changed(self, op: str, changes: list[Change]) -> None:
        self.metrics.presence_entries.set(len(self.local.entries))
        if changes:
            await self._relay(op, changes)

    async def join(self, who: Subscriber, tenant_id: uuid.UUID, agent_id: str, workspace_id: uuid.UUID) -> None:
        change = self.local.join(who, tenant_id, agent_id, workspace_id)
        await self._changed("join", [change] if change else [])

    async def leave(self, conn_id: str, workspace_id: uuid.UUID) -> None:
        change = self.local.leave(conn_id, workspace_id, "left")
        await self._changed("leave", [change] if change else [])

    async def disconnect(self, conn_id: str) -> None:
        await self._changed("disconnect", self.local.disconnect(conn_id))

    async def open_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        change = self.local.open_doc(conn_id, workspace_id, doc_id)
        await self._changed("doc", [change] if change else [])

    async def close_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        await self._changed("doc", self.local.close_doc(conn_id, workspace_id, doc_id))

    async def set_awareness(
        self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID | None, state: dict[str, Any] | None
    ) -> None:
        change = self.local.set_awareness(conn_id, workspace_id, doc_id, state)
        await self._changed("awareness", [change] if change else [])

    async def list_members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing:
        return self.local.listing(tenant_id, workspace_id, self.max_list_items)

    async def health(self) -> dict[str, bool | None]:
        return {"configured": False, "up": None}

    def background(self) -> Background:
        return []

    async def close(self) -> None:
        pass


def create_presence(settings: Settings, node_id: str, metrics: Metrics) -> Presence:
    """`RedisPresence` when `REDIS_URL` is set, else `MemoryPresence` (one node)."""
    if settings.redis_url:
        from server.presence_redis import RedisPresence  # redis is imported only when configured

        return RedisPresence(
            settings.redis_url, node_id, metrics, ttl_s=settings.presence_ttl_s,
            sweep_interval_s=settings.presence_sweep_interval_s, timeout_s=settings.presence_timeout_s,
            max_list_items=settings.max_list_items,
        )  # fmt: skip
    return MemoryPresence(node_id, metrics, settings.max_list_items)
