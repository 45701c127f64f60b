"""Presence and awareness (docs/protocol.md#57): who is joined to which workspace, where, doing what.

Presence is ephemeral and never reaches PostgreSQL. Here: the `Presence` protocol the session
and the app use, this node's entries and the changes not yet delivered (`LocalMembers`, no I/O),
and `MemoryPresence` (one node, no `REDIS_URL`), whose flush loop sends each workspace's changes
of a short window as one `presence.batch` per session, so a crowd joining costs each session a
frame per window, not one per joiner. server/cluster/presence_redis.py adds Redis for many nodes.
No call raises into a session. Imports no Starlette, asyncpg or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from server.core.metrics import Metrics
from server.core.settings import Settings
from server.wire import protocol as p

Background = list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]  # (task name, coroutine function)
State = p.PresenceMember | p.PresenceGone  # a session's latest state in a window: present or gone
# A `presence.batch` frame holds members up to about this many bytes; a larger window is cut
# into several frames (a member without awareness is about 250 bytes).
MAX_BATCH_FRAME_BYTES = 262_144
MEMBER_BYTES = 300
# A workspace with more sessions on this node gets a longer window (docs/protocol.md#57): each
# flush costs a frame per session, so a crowd's windows grow with it, up to MAX_WINDOW_FACTOR
# times `presence_batch_ms`.
SESSIONS_PER_WINDOW = 100
MAX_WINDOW_FACTOR = 20


class Subscriber(Protocol):
    """The session side: its id, a bounded, non-blocking send (server/transport/agent.py), and the form
    presence reaches it in."""

    conn_id: str
    presence_batch: bool  # True: `presence.batch` frames; False: the events one by one

    def send_text(self, frame: str) -> None: ...


@dataclass(frozen=True)
class Listing:
    members: list[p.PresenceMember]
    truncated: bool  # more than max_list_items members
    partial: bool = False  # Redis unreachable: only this node's own sessions


@dataclass
class Window:
    """A workspace's changes not delivered yet: each session's latest state, and the events in
    the order they happened (for subscribers without `presence.batch`)."""

    latest: dict[str, State] = field(default_factory=dict)  # by conn_id
    events: list[tuple[str, str]] = field(default_factory=list)  # (conn_id it is about, event frame)
    opened_s: float = field(default_factory=time.monotonic)  # when its first change came
    joined: set[str] = field(default_factory=set)  # conn_ids whose join it announces


@dataclass(frozen=True)
class Batch:
    """One workspace's window, encoded once for every session on every node."""

    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    latest: dict[str, State]
    events: list[tuple[str, str]]
    frames: list[str]  # `presence.batch` frames of `latest`
    joined: frozenset[str] = frozenset()  # conn_ids whose join it announces

    @classmethod
    def of(cls, tenant_id: uuid.UUID, workspace_id: uuid.UUID, window: Window) -> Batch:
        frames = batch_frames(workspace_id, window.latest.values())
        return cls(tenant_id, workspace_id, window.latest, window.events, frames, frozenset(window.joined))


def batch_frames(workspace_id: uuid.UUID, states: Iterable[State]) -> list[str]:
    """`presence.batch` frames holding `states`, cut at about MAX_BATCH_FRAME_BYTES each."""
    frames: list[str] = []
    members: list[p.PresenceMember] = []
    left: list[p.PresenceGone] = []
    size = 0
    for state in states:
        cost = MEMBER_BYTES + (p.awareness_bytes(state.awareness) if isinstance(state, p.PresenceMember) else 0)
        if (members or left) and size + cost > MAX_BATCH_FRAME_BYTES:
            frames.append(p.encode(p.PresenceBatch(workspace_id=workspace_id, members=members, left=left)))
            members, left, size = [], [], 0
        (members if isinstance(state, p.PresenceMember) else left).append(state)  # type: ignore[arg-type]
        size += cost
    if members or left:
        frames.append(p.encode(p.PresenceBatch(workspace_id=workspace_id, members=members, left=left)))
    return frames


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
    async def flush(self, keys: Iterable[tuple[uuid.UUID, uuid.UUID]] | None = None) -> None: ...
    def background(self) -> Background: ...
    async def close(self) -> None: ...


# --- this node's sessions: state and local delivery, no I/O -----------------------------------


class LocalMembers:
    """This node's presence entries, keyed by (conn_id, workspace_id), and their delivery.

    Each change updates the entry at once (listings see it) and joins its workspace's window;
    `flush` delivers the windows to the node's sessions and returns them for a backend to relay.
    Bounded by the sessions: at most `max_joined_workspaces` entries a session, `max_open_docs`
    doc ids each, and a window holds one state per session plus its events since the last flush.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.entries: dict[tuple[str, uuid.UUID], Entry] = {}
        self.by_workspace: dict[tuple[uuid.UUID, uuid.UUID], dict[str, None]] = {}  # insertion-ordered
        self.by_conn: dict[str, dict[uuid.UUID, None]] = {}
        self.windows: dict[tuple[uuid.UUID, uuid.UUID], Window] = {}  # changes not delivered yet

    def _subscribers(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> list[Subscriber]:
        conns = list(self.by_workspace.get((tenant_id, workspace_id), ()))
        return [e.subscriber for c in conns if (e := self.entries.get((c, workspace_id))) is not None]

    def deliver(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, frame: str) -> int:
        """Send one frame to every session of this node joined to the workspace."""
        subscribers = self._subscribers(tenant_id, workspace_id)
        for subscriber in subscribers:
            subscriber.send_text(frame)
        return len(subscribers)

    def deliver_batch(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, frames: list[str], events: list[tuple[str, str]]) -> int:
        """Send a window to this node's sessions in the workspace: its `presence.batch` frames (a
        session's own state may be among them), or to the others its events not about themselves."""
        subscribers = self._subscribers(tenant_id, workspace_id)
        for subscriber in subscribers:
            if subscriber.presence_batch:
                for frame in frames:
                    subscriber.send_text(frame)
            else:
                for about, frame in events:
                    if about != subscriber.conn_id:
                        subscriber.send_text(frame)
        return len(subscribers)

    def flush(self, keys: Iterable[tuple[uuid.UUID, uuid.UUID]] | None = None) -> list[Batch]:
        """Deliver the windows of `keys` (all by default) to this node's sessions; the windows,
        encoded, for the relay."""
        if keys is None:
            windows, self.windows = self.windows, {}
        else:
            windows = {key: self.windows.pop(key) for key in keys if key in self.windows}
        batches = [Batch.of(tenant_id, workspace_id, w) for (tenant_id, workspace_id), w in windows.items()]
        for b in batches:
            self.deliver_batch(b.tenant_id, b.workspace_id, b.frames, b.events)
        return batches

    def _emit(self, entry: Entry, state: State, event: Any) -> None:
        window = self.windows.setdefault((entry.tenant_id, entry.workspace_id), Window())
        window.latest[entry.subscriber.conn_id] = state
        window.events.append((entry.subscriber.conn_id, p.encode(event)))

    def join(self, who: Subscriber, tenant_id: uuid.UUID, agent_id: str, workspace_id: uuid.UUID) -> None:
        """A repeated join of a session already in the workspace changes nothing."""
        key = (who.conn_id, workspace_id)
        if key in self.entries:
            return
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
        self._emit(entry, member, event)
        self.windows[(tenant_id, workspace_id)].joined.add(who.conn_id)

    def leave(self, conn_id: str, workspace_id: uuid.UUID, reason: p.LeftReason) -> None:
        entry = self.entries.pop((conn_id, workspace_id), None)
        if entry is None:
            return
        members = self.by_workspace[(entry.tenant_id, workspace_id)]
        members.pop(conn_id, None)
        if not members:
            del self.by_workspace[(entry.tenant_id, workspace_id)]
        workspaces = self.by_conn[conn_id]
        workspaces.pop(workspace_id, None)
        if not workspaces:
            del self.by_conn[conn_id]
        m = entry.member
        gone = p.PresenceGone(conn_id=m.conn_id, agent_id=m.agent_id, reason=reason)
        self._emit(entry, gone, p.PresenceLeft(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, reason=reason))

    def disconnect(self, conn_id: str) -> None:
        for workspace_id in list(self.by_conn.get(conn_id, ())):
            self.leave(conn_id, workspace_id, "disconnected")

    def _update(self, entry: Entry, **fields: Any) -> p.PresenceMember:
        entry.member = entry.member.model_copy(update=fields)
        return entry.member

    def open_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        entry = self.entries.get((conn_id, workspace_id))
        if entry is None or doc_id in entry.member.doc_ids:
            return
        m = self._update(entry, doc_ids=[*entry.member.doc_ids, doc_id])
        self._emit(entry, m, p.PresenceChanged(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))

    def close_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        """The doc ids change; an awareness state about that document is cleared with it."""
        entry = self.entries.get((conn_id, workspace_id))
        if entry is None or doc_id not in entry.member.doc_ids:
            return
        m = self._update(entry, doc_ids=[d for d in entry.member.doc_ids if d != doc_id])
        self._emit(entry, m, p.PresenceChanged(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))
        if m.awareness_doc_id == doc_id:
            self._awareness(entry, doc_id, None)

    def set_awareness(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID | None, state: dict[str, Any] | None) -> None:
        entry = self.entries.get((conn_id, workspace_id))
        if entry is not None:
            self._awareness(entry, doc_id, state)

    def _awareness(self, entry: Entry, doc_id: uuid.UUID | None, state: dict[str, Any] | None) -> None:
        m = self._update(entry, awareness=state, awareness_doc_id=doc_id if state is not None else None)
        event = p.AwarenessChanged(workspace_id=entry.workspace_id, doc_id=doc_id, agent_id=m.agent_id, conn_id=m.conn_id, state=state)
        self._emit(entry, m, event)

    def members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> list[p.PresenceMember]:
        """This node's members of the workspace, oldest first."""
        conns = self.by_workspace.get((tenant_id, workspace_id), ())
        return [self.entries[(c, workspace_id)].member for c in conns]

    def listing(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, limit: int, partial: bool = False) -> Listing:
        members = self.members(tenant_id, workspace_id)
        return Listing(members[:limit], len(members) > limit, partial)

    def snapshot(self, entries: Iterable[Entry]) -> list[Batch]:
        """`entries` as batches that tell another node everything about them (after Redis lost them)."""
        windows: dict[tuple[uuid.UUID, uuid.UUID], Window] = {}
        for entry in entries:
            m, ws = entry.member, entry.workspace_id
            events: list[Any] = [p.PresenceJoined(workspace_id=ws, agent_id=m.agent_id, conn_id=m.conn_id, node_id=m.node_id, since=m.since)]
            if m.doc_ids:
                events.append(p.PresenceChanged(workspace_id=ws, agent_id=m.agent_id, conn_id=m.conn_id, doc_ids=m.doc_ids))
            if m.awareness is not None:
                events.append(p.AwarenessChanged(workspace_id=ws, doc_id=m.awareness_doc_id, agent_id=m.agent_id, conn_id=m.conn_id, state=m.awareness))
            window = windows.setdefault((entry.tenant_id, ws), Window())
            window.latest[entry.subscriber.conn_id] = m
            window.events.extend((entry.subscriber.conn_id, p.encode(e)) for e in events)
        return [Batch.of(tenant_id, ws, w) for (tenant_id, ws), w in windows.items()]


# --- one node --------------------------------------------------------------------------------


class MemoryPresence:
    """Presence of a single node, in process. `RedisPresence` extends it with the relay.

    Changes apply at once (a listing sees them); the flush loop delivers them `batch_window_s`
    after the first one of a window, so a burst of joins and opens reaches each session as one
    `presence.batch` (docs/protocol.md#57) instead of one frame per change.
    """

    configured = False

    def __init__(self, node_id: str, metrics: Metrics, max_list_items: int = 1000, batch_window_s: float = 0.05) -> None:
        self.local = LocalMembers(node_id)
        self.node_id = node_id
        self.metrics = metrics
        self.max_list_items = max_list_items
        self.batch_window_s = batch_window_s
        self._pending = asyncio.Event()  # a window is open

    async def _relay(self, op: str, batches: list[Batch]) -> None:
        """Make `batches` known beyond this node. One node: nothing to do."""

    def _changed(self) -> None:
        self.metrics.presence_entries.set(len(self.local.entries))
        if self.local.windows:
            self._pending.set()

    async def flush(self, keys: Iterable[tuple[uuid.UUID, uuid.UUID]] | None = None) -> None:
        """Deliver the windows of `keys` (default: every window, as at close) now and relay them."""
        batches = self.local.flush(keys)
        if batches:
            await self._relay("flush", batches)

    def window_s(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> float:
        """How long a workspace's changes are gathered: `batch_window_s`, longer beyond
        SESSIONS_PER_WINDOW sessions of it on this node (0.5 s for 1,000 at 50 ms)."""
        sessions = len(self.local.by_workspace.get((tenant_id, workspace_id), ()))
        return self.batch_window_s * min(MAX_WINDOW_FACTOR, max(1.0, sessions / SESSIONS_PER_WINDOW))

    async def _flush_loop(self) -> None:
        """Send each window when it is due, until cancelled."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self.local.windows:
                now = time.monotonic()
                due = {key: w.opened_s + self.window_s(*key) for key, w in self.local.windows.items()}
                ready = [key for key, at in due.items() if at <= now]
                if ready:
                    await self.flush(ready)
                    continue
                with contextlib.suppress(TimeoutError):  # until the next window is due or one opens
                    async with asyncio.timeout(min(due.values()) - now):
                        await self._pending.wait()
                self._pending.clear()

    async def join(self, who: Subscriber, tenant_id: uuid.UUID, agent_id: str, workspace_id: uuid.UUID) -> None:
        self.local.join(who, tenant_id, agent_id, workspace_id)
        self._changed()

    async def leave(self, conn_id: str, workspace_id: uuid.UUID) -> None:
        self.local.leave(conn_id, workspace_id, "left")
        self._changed()

    async def disconnect(self, conn_id: str) -> None:
        self.local.disconnect(conn_id)
        self._changed()

    async def open_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        self.local.open_doc(conn_id, workspace_id, doc_id)
        self._changed()

    async def close_doc(self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID) -> None:
        self.local.close_doc(conn_id, workspace_id, doc_id)
        self._changed()

    async def set_awareness(
        self, conn_id: str, workspace_id: uuid.UUID, doc_id: uuid.UUID | None, state: dict[str, Any] | None
    ) -> None:
        self.local.set_awareness(conn_id, workspace_id, doc_id, state)
        self._changed()

    async def list_members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing:
        return self.local.listing(tenant_id, workspace_id, self.max_list_items)

    async def health(self) -> dict[str, bool | None]:
        return {"configured": False, "up": None}

    def background(self) -> Background:
        return [("presence.flush", self._flush_loop)]

    async def close(self) -> None:
        await self.flush()


def create_presence(settings: Settings, node_id: str, metrics: Metrics) -> Presence:
    """`RedisPresence` when `REDIS_URL` is set, else `MemoryPresence` (one node)."""
    if settings.redis_url:
        from server.cluster.presence_redis import (
            RedisPresence,  # redis is imported only when configured
        )

        return RedisPresence(
            settings.redis_url, node_id, metrics, ttl_s=settings.presence_ttl_s,
            sweep_interval_s=settings.presence_sweep_interval_s, timeout_s=settings.presence_timeout_s,
            max_list_items=settings.max_list_items, batch_window_s=settings.presence_batch_ms / 1000,
        )  # fmt: skip
    return MemoryPresence(node_id, metrics, settings.max_list_items, settings.presence_batch_ms / 1000)
