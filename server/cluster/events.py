"""Workspace events (locks, state, tasks, members) to every node's sessions: docs/protocol.md#126.

A change and its event commit together: `notify` runs `pg_notify` in the writer's transaction,
so other nodes hear of it only if it commits, in commit order; after the commit the writer
calls `deliver` for this node's sessions. The event's webhook is written to the outbox in
that same transaction (migration 0030). Other nodes receive the NOTIFY through the fan-out's
LISTEN connection (server/cluster/fanout.py; the payload's format is server/cluster/hints.py's) and call
`on_remote`.

An event reaches the sessions that joined its workspace and, for task events, every session
of the agents it names (creator, assignee, previous assignee) wherever they are. A session that
joined with `task_events: "own"` is left out of its workspace's `task.changed` (its own tasks'
still reach it through its agent): the choice is which index it is in, decided at the join, so
nothing is parsed per session. NOTIFY payloads are limited (`hints.MAX_NOTIFY_BYTES`): an event
too large to carry (a big state or task result) travels as a reference and the receiving node
reads the current value back (`refetch`). Imports no Starlette.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import structlog
from pydantic import ValidationError

from server.cluster import hints
from server.db.store import Q
from server.wire import protocol as p
from server.wire import protocol_coordination as pc
from server.wire import protocol_executions as pe
from server.wire import webhook_types

log = structlog.get_logger("tandem.events")


class Listener(Protocol):
    """A session: its id, and a non-blocking hand-off of one event (message and encoded frame)."""

    conn_id: str

    def on_event(self, message: pc.WorkspaceEvent, frame: str) -> None: ...


@dataclass(frozen=True)
class Event:
    tenant_id: uuid.UUID
    workspace_id: uuid.UUID
    message: pe.WorkspaceEvent  # the wire message (docs/protocol.md#126); the frame is its encoding
    agents: frozenset[str] = field(default_factory=frozenset)  # reached even if not joined
    # (kind, id, field): when the message is too large for NOTIFY, `field` is left out and other
    # nodes read the current value back by kind ("state", "task") and id.
    ref: tuple[str, str, str] | None = None


# (tenant, workspace, kind, id) -> the fields to put back into the message (None: gone).
Refetch = Callable[[uuid.UUID, uuid.UUID, str, str], Awaitable[dict[str, Any] | None]]
Observer = Callable[[Event], None]


class Events:
    """This node's listeners by workspace and by agent, and the NOTIFY side of events."""

    def __init__(self, node_id: str, refetch: Refetch | None = None) -> None:
        self.node_id = node_id
        self.refetch = refetch
        self.observers: list[Observer] = []  # node-side reactions (rooms' lock views)
        self._by_workspace: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Listener]] = defaultdict(dict)
        # The joined sessions that get every `task.changed` of the workspace (`task_events: "all"`).
        self._tasks_by_workspace: dict[tuple[uuid.UUID, uuid.UUID], dict[str, Listener]] = defaultdict(dict)
        self._by_agent: dict[tuple[uuid.UUID, str], dict[str, Listener]] = defaultdict(dict)
        self.delivered = 0
        self._refetching: set[asyncio.Task[None]] = set()

    # --- who listens -----------------------------------------------------------------------------

    def connect(self, listener: Listener, tenant_id: uuid.UUID, agent_id: str) -> None:
        self._by_agent[(tenant_id, agent_id)][listener.conn_id] = listener

    def join(
        self, listener: Listener, tenant_id: uuid.UUID, workspace_id: uuid.UUID, task_events: p.TaskEvents = "all"
    ) -> None:
        """Subscribe `listener` to the workspace; joining again replaces its `task_events` choice."""
        key = (tenant_id, workspace_id)
        self._by_workspace[key][listener.conn_id] = listener
        if task_events == "all":
            self._tasks_by_workspace[key][listener.conn_id] = listener
        else:
            _discard(self._tasks_by_workspace, key, listener.conn_id)

    def leave(self, conn_id: str, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> None:
        _discard(self._by_workspace, (tenant_id, workspace_id), conn_id)
        _discard(self._tasks_by_workspace, (tenant_id, workspace_id), conn_id)

    def disconnect(self, conn_id: str, tenant_id: uuid.UUID, agent_id: str, workspace_ids: list[uuid.UUID]) -> None:
        _discard(self._by_agent, (tenant_id, agent_id), conn_id)
        for workspace_id in workspace_ids:
            self.leave(conn_id, tenant_id, workspace_id)

    def connected_agents(self) -> dict[uuid.UUID, list[str]]:
        """The agents with an open session on this node, by tenant (the registry's heartbeat)."""
        found: dict[uuid.UUID, list[str]] = defaultdict(list)
        for (tenant_id, agent_id), listeners in self._by_agent.items():
            if listeners:
                found[tenant_id].append(agent_id)
        return dict(found)

    # --- sending ---------------------------------------------------------------------------------

    def payload(self, event: Event) -> str:
        return hints.encode_event(
            self.node_id, event.tenant_id, event.workspace_id, event.agents, event.message.model_dump(mode="json"),
            event.ref,
        )  # fmt: skip

    async def notify(self, conn: asyncpg.Connection, *events: Event) -> None:
        """In the writer's transaction: other nodes hear of the events only if it commits, in
        this order, and each of a type webhook endpoints subscribe to enters the outbox with it;
        one statement however many events (one round trip)."""
        if not events:
            return
        kinds = [webhook_types.of_event(event.message.type) for event in events]
        await conn.execute(
            Q["notify_and_emit"],
            [self.payload(event) for event in events],
            [event.workspace_id for event in events],
            [None if kind is None else str(kind) for kind in kinds],
            # jsonb: the pool's codec encodes it
            [None if kind is None else event.message.model_dump(mode="json") for event, kind in zip(events, kinds)],
        )

    def deliver(self, event: Event) -> int:
        """After the commit: this node's listeners (each once) and observers. Never raises."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception("events.observer_failed", type=event.message.type)
        joined = self._tasks_by_workspace if event.message.type == "task.changed" else self._by_workspace
        targets: dict[str, Listener] = dict(joined.get((event.tenant_id, event.workspace_id), {}))
        for agent_id in event.agents:
            targets.update(self._by_agent.get((event.tenant_id, agent_id), {}))
        if not targets:
            return 0
        frame = p.encode(event.message)
        for listener in targets.values():
            listener.on_event(event.message, frame)
        self.delivered += len(targets)
        return len(targets)

    def on_remote(self, hint: hints.EventHint) -> None:
        """Another node's event (the fan-out decoded its NOTIFY and skipped our own). Delivered
        at once, in NOTIFY order; one sent as a reference is read back first (it may then
        overtake an earlier one: events carry versions, fences and statuses to order them).
        The message is read back into its model, so what is sent is that model's encoding."""
        if hint.ref is None:
            message = _message(hint.message)
            if message is not None:
                self.deliver(Event(hint.tenant_id, hint.workspace_id, message, hint.agents))
            return
        task = asyncio.create_task(self._refetched(hint, hint.ref))
        self._refetching.add(task)
        task.add_done_callback(self._refetching.discard)

    async def _refetched(self, hint: hints.EventHint, ref: tuple[str, str, str]) -> None:
        kind, ref_id, _field = ref
        try:
            fetched = None if self.refetch is None else await self.refetch(hint.tenant_id, hint.workspace_id, kind, ref_id)
        except Exception:
            log.exception("events.refetch_failed", kind=kind)
            return
        if fetched is None:  # gone meanwhile (a deleted task), nothing left to tell
            return
        message = _message({**hint.message, **fetched})
        if message is not None:
            self.deliver(Event(hint.tenant_id, hint.workspace_id, message, hint.agents))


def _message(data: Any) -> pe.WorkspaceEvent | None:
    """Another node's event message as its model; None (logged) when it is not one."""
    try:
        return pe.EVENTS.validate_python(data)
    except ValidationError as exc:
        log.error("events.invalid_message", errors=exc.errors(include_url=False, include_input=False))
        return None


def _discard(index: dict[Any, dict[str, Listener]], key: Any, conn_id: str) -> None:
    listeners = index.get(key)
    if listeners is not None:
        listeners.pop(conn_id, None)
        if not listeners:
            del index[key]
