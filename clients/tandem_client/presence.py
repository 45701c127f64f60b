"""Presence and awareness of one workspace (docs/protocol.md section 5.7): who is here, on which
node, with which documents open, and the small JSON state each session publishes.

`Presence` keeps a view keyed by `conn_id`: `presence.list` after every join (and after a
reconnect or a `presence.stale`), with the events received since the request was sent applied
on top of the reply (events may overtake it). The client asks for `presence.batch` (one frame
per server window with each changed member's latest state); the event stream turns each batch
back into per-member events, coalesced per window. Events are idempotent and best effort.
Awareness set with `Workspace.set_awareness` is published again after a reconnect, since it
dies with the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tandem_client import wire
from tandem_client.errors import ClientError, TandemError

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace

log = logging.getLogger("tandem_client")

EVENT_TYPES = ("presence.joined", "presence.left", "presence.changed", "awareness.changed", "presence.stale", "presence.batch")


@dataclass(frozen=True)
class PresenceMember:
    """One session present in the workspace (one agent with two sessions is two members)."""

    conn_id: str
    agent_id: str
    node_id: str | None = None
    since: str | None = None
    doc_ids: tuple[str, ...] = ()
    awareness: dict[str, Any] | None = None
    awareness_doc_id: str | None = None

    @classmethod
    def from_wire(cls, obj: wire.Frame) -> PresenceMember:
        return cls(
            conn_id=obj["conn_id"],
            agent_id=obj["agent_id"],
            node_id=obj.get("node_id"),
            since=obj.get("since"),
            doc_ids=tuple(obj.get("doc_ids") or ()),
            awareness=obj.get("awareness"),
            awareness_doc_id=obj.get("awareness_doc_id"),
        )


@dataclass(frozen=True)
class PresenceEvent:
    """A presence or awareness event as received: `type` is the wire type (`presence.joined`, ...)."""

    type: str
    workspace_id: str
    agent_id: str | None
    conn_id: str | None
    raw: wire.Frame = field(repr=False, compare=False)


class PresenceEvents:
    """An async iterator over a workspace's presence events, from the moment it was created.
    Holds at most `max_queue` unread events; when full, the oldest is dropped. `close()` (or
    leaving an `async with` block) ends it."""

    def __init__(self, presence: Presence, max_queue: int) -> None:
        self._presence = presence
        self._queue: asyncio.Queue[PresenceEvent | None] = asyncio.Queue(max_queue)
        self.dropped = 0

    def _put(self, event: PresenceEvent | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def __aiter__(self) -> PresenceEvents:
        return self

    async def __anext__(self) -> PresenceEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        if self in self._presence._streams:
            self._presence._streams.discard(self)
            self._put(None)

    async def __aenter__(self) -> PresenceEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Presence:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.members: dict[str, PresenceMember] = {}  # by conn_id, this session included
        self.partial = False  # the last list came from one node only (the presence store was down)
        self.truncated = False
        self.available = True  # false when the server does not speak presence (older servers)
        self._collectors: list[list[wire.Frame]] = []
        self._streams: set[PresenceEvents] = set()
        self._refresh_task: asyncio.Task[None] | None = None

    # --- public ------------------------------------------------------------------------------

    def others(self) -> list[PresenceMember]:
        """Every member but this client's own session, oldest first."""
        own = self.workspace.client.hello.session_id if self.workspace.client.hello else None
        return [m for m in self.members.values() if m.conn_id != own]

    def agents(self) -> set[str]:
        """The agent ids present (this client's included)."""
        return {m.agent_id for m in self.members.values()}

    async def refresh(self) -> dict[str, PresenceMember]:
        """`presence.list`: replace the view with the server's, keeping events that overtook it."""
        collected: list[wire.Frame] = []
        self._collectors.append(collected)

        def apply(frame: wire.Frame) -> None:  # in the reader, before any later frame
            self.members = {m["conn_id"]: PresenceMember.from_wire(m) for m in frame["members"]}
            self.partial, self.truncated = bool(frame.get("partial")), bool(frame.get("truncated"))
            for event in collected:
                self._apply(event)
            self.workspace.client._conn.changed.notify()

        try:
            await self.workspace.client._retry_lost(
                lambda: self.workspace.client._conn.request(
                    "presence.list", {"workspace_id": self.workspace.workspace_id}, on_reply=apply
                )
            )
        finally:
            self._collectors.remove(collected)
        return dict(self.members)

    async def wait_for(self, predicate: Callable[[Presence], object], timeout_s: float | None = None) -> None:
        """Wait until `predicate(self)` is true; checked after every presence change."""
        await self.workspace.client._conn.changed.wait_for(lambda: predicate(self), timeout_s)

    def events(self, max_queue: int = 1024) -> PresenceEvents:
        """Events from now on: `async with ws.presence.events() as events: async for e in events:`."""
        stream = PresenceEvents(self, max_queue)
        self._streams.add(stream)
        return stream

    # --- events ------------------------------------------------------------------------------

    def _on_event(self, frame: wire.Frame) -> None:
        for collected in self._collectors:
            collected.append(frame)
        if frame["type"] == "presence.stale":
            self._schedule_refresh()
            events = [frame]
        elif frame["type"] == "presence.batch":
            events = self._unbatch(frame)
        else:
            events = [frame]
        own = self.workspace.client.hello.session_id if self.workspace.client.hello else None
        for single in events:
            self._apply(single)
            if single.get("conn_id") == own and frame["type"] == "presence.batch":
                continue  # a batch may hold this session's own member: the view keeps it, the stream does not
            event = PresenceEvent(single["type"], frame.get("workspace_id", ""), single.get("agent_id"), single.get("conn_id"), single)
            for stream in list(self._streams):
                stream._put(event)
        self.workspace.client._conn.changed.notify()

    def _unbatch(self, frame: wire.Frame) -> list[wire.Frame]:
        """A `presence.batch` as the single events that take the current view to it: a member
        not known yet `presence.joined` (with its whole state), a known one `presence.changed`
        and/or `awareness.changed` for what differs, a member gone `presence.left`."""
        ws = frame.get("workspace_id")
        events: list[wire.Frame] = []
        for obj in frame.get("members") or ():
            known = self.members.get(obj["conn_id"])
            new = PresenceMember.from_wire(obj)
            if known is None:
                events.append({**obj, "type": "presence.joined", "workspace_id": ws})
                continue
            if known.doc_ids != new.doc_ids:
                events.append({"type": "presence.changed", "workspace_id": ws, "agent_id": new.agent_id, "conn_id": new.conn_id,
                               "doc_ids": list(new.doc_ids)})  # fmt: skip
            if (known.awareness, known.awareness_doc_id) != (new.awareness, new.awareness_doc_id):
                events.append({"type": "awareness.changed", "workspace_id": ws, "agent_id": new.agent_id, "conn_id": new.conn_id,
                               "doc_id": new.awareness_doc_id, "state": new.awareness})  # fmt: skip
        for obj in frame.get("left") or ():
            if obj["conn_id"] in self.members:
                events.append({**obj, "type": "presence.left", "workspace_id": ws})
        return events

    def _apply(self, frame: wire.Frame) -> None:
        kind, conn_id = frame["type"], frame.get("conn_id")
        if kind == "presence.batch":  # overtook a presence.list reply: applied on top of it
            for obj in frame.get("members") or ():
                self.members[obj["conn_id"]] = PresenceMember.from_wire(obj)
            for obj in frame.get("left") or ():
                self.members.pop(obj["conn_id"], None)
            return
        if conn_id is None:
            return
        known = self.members.get(conn_id)
        if kind == "presence.joined":
            if known is None:
                self.members[conn_id] = PresenceMember.from_wire(frame)
        elif kind == "presence.left":
            self.members.pop(conn_id, None)
        elif kind == "presence.changed":
            base = known or PresenceMember(conn_id=conn_id, agent_id=frame["agent_id"])
            self.members[conn_id] = replace(base, doc_ids=tuple(frame.get("doc_ids") or ()))
        elif kind == "awareness.changed":
            base = known or PresenceMember(conn_id=conn_id, agent_id=frame["agent_id"])
            state = frame.get("state")
            self.members[conn_id] = replace(base, awareness=state, awareness_doc_id=frame.get("doc_id") if state is not None else None)

    def _schedule_refresh(self) -> None:
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(self._refresh_quietly(), name="tandem-client-presence")

    async def _refresh_quietly(self) -> None:
        """Refresh after a join, a reconnect or `presence.stale`; never fails the caller."""
        if not self.available:
            return
        try:
            await self.refresh()
        except TandemError as exc:
            if exc.code == "unknown_type":
                self.available = False
            log.info("tandem_client.presence_unavailable", extra={"workspace_id": self.workspace.workspace_id, "error": repr(exc)})
        except (ClientError, TimeoutError) as exc:
            log.info("tandem_client.presence_refresh_failed", extra={"error": repr(exc)})

    def _close(self) -> None:
        for stream in list(self._streams):
            stream.close()
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
