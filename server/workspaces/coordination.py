"""The node's side of coordination (docs/protocol.md section 12): events, lock views, the sweep.

Sessions change locks, state, tasks and members through the data layer (server/workspaces/locks.py,
server/workspaces/state.py, server/workspaces/tasks.py, server/workspaces/members.py) and publish one event per change through
`Coordination.publish` inside the same transaction. This module keeps what is shared by the
node: the live locks heard of (so updates and acquisitions the lock refuses are refused before
they touch the document or the database), releasing a disconnected holder's locks after a grace period, reading back
events too large for NOTIFY, and the task timeout sweep that every node runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from server.cluster.events import Event, Events
from server.core.errors import TandemError
from server.core.settings import Settings
from server.db import store
from server.documents.room import LockView
from server.documents.rooms import RoomRegistry
from server.wire import protocol_coordination as pc
from server.workspaces import execution_failover, executions, locks, state, tasks
from server.workspaces.workspace_events import execution_events, task_event

log = structlog.get_logger("tandem.coordination")


LockKey = tuple[uuid.UUID, uuid.UUID, str | None, str | None]  # tenant, workspace, doc id, name


@dataclass
class _Known:
    view: LockView | None
    released_fence: int = 0
    seen_at: float = field(default_factory=time.monotonic)


class KnownLocks:
    """The live locks this node has heard of (lock events of every node), so an acquisition
    that would certainly fail is answered `locked` without a transaction: under contention
    most attempts are these. Events may arrive out of order across nodes; as in a room's view,
    an older fence or an acquisition already released changes nothing. Only ever refuses what
    the database refused a moment ago; a free lock always goes to the database."""

    def __init__(self, forget_after_s: float = 60.0) -> None:
        self.entries: dict[LockKey, _Known] = {}
        self.forget_after_s = forget_after_s
        # Acquisitions waiting for a lock (`wait_ms`), first come first served: each release
        # heard of wakes one, which tries the database again.
        self.waiting: dict[LockKey, deque[asyncio.Future[None]]] = {}

    def wait_turn(self, key: LockKey) -> asyncio.Future[None]:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, deque()).append(turn)
        return turn

    def leave_queue(self, key: LockKey, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(key)
        if queue is not None:
            if turn in queue:
                queue.remove(turn)
            if not queue:
                del self.waiting[key]

    def _wake_one(self, key: LockKey) -> None:
        queue = self.waiting.get(key)
        while queue:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)
                break
        if queue is not None and not queue:
            del self.waiting[key]

    def observe(self, key: LockKey, view: LockView | None, fence: int) -> None:
        known = self.entries.get(key)
        if known is None:
            known = self.entries[key] = _Known(None)
        known.seen_at = time.monotonic()
        if view is None:
            known.released_fence = max(known.released_fence, fence)
            if known.view is not None and known.view.fence <= fence:
                known.view = None
            self._wake_one(key)
        elif fence > known.released_fence and (known.view is None or fence >= known.view.fence):
            known.view = view

    def held_by_other(self, key: LockKey, agent_id: str) -> LockView | None:
        known = self.entries.get(key)
        if known is None or known.view is None:
            return None
        view = known.view
        return view if view.holder != agent_id and view.expires_at > datetime.now(UTC) else None

    def prune(self) -> None:
        """Forget released and expired locks not heard of for a while (memory follows use)."""
        now, wall = time.monotonic(), datetime.now(UTC)
        for key, known in list(self.entries.items()):
            gone = known.view is None or known.view.expires_at <= wall
            if gone and now - known.seen_at > self.forget_after_s:
                del self.entries[key]


class Coordination:
    def __init__(self, pool: asyncpg.Pool, node_id: str, rooms: RoomRegistry, settings: Settings) -> None:
        self.pool = pool
        self.rooms = rooms
        self.settings = settings
        self.known_locks = KnownLocks()
        self.events = Events(node_id, refetch=self.refetch)
        self.events.observers.append(self._observe_locks)
        self.events.observers.append(self._observe_deletes)
        self.background: set[asyncio.Task[None]] = set()
        self.swept = 0
        self._failover_after: uuid.UUID | None = None  # where the next failover sweep goes on

    # --- events ----------------------------------------------------------------------------------

    async def publish(self, conn: asyncpg.Connection, *events: Event) -> None:
        """In the change's transaction, in one statement; call `deliver` for each once it committed."""
        await self.events.notify(conn, *events)

    def deliver(self, event: Event) -> None:
        self.events.deliver(event)

    def _observe_locks(self, event: Event) -> None:
        message = event.message
        if not isinstance(message, pc.LockAcquired | pc.LockRenewed | pc.LockReleased):
            return
        lock = message.lock
        view = None
        if not isinstance(message, pc.LockReleased):
            view = LockView(lock["holder"], lock["fence"], datetime.fromisoformat(lock["expires_at"]))
        key = (event.tenant_id, event.workspace_id, lock["doc_id"], lock["name"])
        self.known_locks.observe(key, view, lock["fence"])
        if lock["doc_id"] is not None:
            self.rooms.on_lock(uuid.UUID(lock["doc_id"]), view, lock["fence"])

    def _observe_deletes(self, event: Event) -> None:
        """A deleted document or workspace: its rooms' subscribers that are not workspace
        sessions (the /yjs editors, which hear only events naming their agent) are closed."""
        message = event.message
        if isinstance(message, pc.DocDeleted):
            gone = [r for r in self.rooms.rooms.values() if r.doc_id == message.doc_id]
        elif isinstance(message, pc.WorkspaceDeleted):
            gone = [r for r in self.rooms.rooms.values() if r.workspace_id == message.workspace_id]
        else:
            return
        for room in gone:
            if room.tenant_id != event.tenant_id:
                continue
            for subscription in list(room.subscriptions.values()):
                deleted = getattr(subscription.subscriber, "document_deleted", None)
                if deleted is not None:
                    deleted()

    async def refetch(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, kind: str, ref_id: str) -> dict[str, Any] | None:
        """The fields an event left out of its NOTIFY (server/cluster/events.py), read back."""
        async with store.tenant_transaction(self.pool, tenant_id) as conn:
            try:
                if kind == "state":
                    current = await state.get_state(conn, workspace_id)
                    return {"state": current.state, "version": current.version}
                if kind == "task":
                    return {"task": (await tasks.get_task(conn, uuid.UUID(ref_id))).to_wire()}
                if kind == "execution":
                    found, _ = await executions.get(conn, workspace_id, uuid.UUID(ref_id), 1)
                    return {"execution": found.to_wire()}
            except TandemError:
                return None  # deleted meanwhile
        raise ValueError(f"unknown event reference {kind!r}")

    # --- locks of a disconnected holder ----------------------------------------------------------

    def release_later(
        self, tenant_id: uuid.UUID, agent_id: str, lock: locks.Lock, client_ip: str | None = None
    ) -> None:
        """After `lock_release_grace_s`, release `lock` unless renewed since (a reconnected holder
        that renewed keeps it) or already released or taken."""
        task = asyncio.create_task(self._release_later(tenant_id, agent_id, lock, client_ip))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _release_later(self, tenant_id: uuid.UUID, agent_id: str, lock: locks.Lock, client_ip: str | None) -> None:
        await asyncio.sleep(self.settings.lock_release_grace_s)
        try:
            async with store.tenant_transaction(self.pool, tenant_id, agent_id, client_ip) as conn:
                released = await locks.release(conn, agent_id, lock.resource, lock.fence, if_expires_at=lock.expires_at)
                event = lock_event(tenant_id, "lock.released", released, reason="disconnected")
                await self.publish(conn, event)
        except TandemError:
            return  # renewed, released or taken meanwhile
        except Exception:
            log.exception("coordination.release_failed", agent_id=agent_id)
            return
        self.deliver(event)

    async def stop(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)

    # --- task timeouts ---------------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        """Every `task_sweep_interval_s`: mark overdue tasks `timeout` and fail over step tasks
        of agents gone or out of service (both safe on every node)."""
        while True:
            await asyncio.sleep(self.settings.task_sweep_interval_s)
            self.known_locks.prune()
            try:
                await self.sweep_once()
                await self.failover_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("coordination.sweep_failed", error=f"{type(exc).__name__}: {exc}")

    async def sweep_once(self) -> int:
        """Mark at most `task_sweep_batch` overdue tasks `timeout`, tenant by tenant: each
        tenant's marks and their events commit in one transaction of that tenant (RLS applies)."""
        budget = self.settings.task_sweep_batch
        async with self.pool.acquire() as conn:
            tenants = await tasks.overdue_tenants(conn, budget)
        swept = 0
        for tenant_id in tenants:
            if swept >= budget:
                break
            events: list[Event] = []
            async with store.tenant_transaction(self.pool, tenant_id) as conn:
                marked = await tasks.sweep_timeouts(conn, budget - swept)
                for task_id, workspace_id in marked:
                    if workspace_id is None:
                        continue  # a task of no workspace has nobody to tell
                    task = await tasks.get_task(conn, task_id)
                    events.append(task_event(tenant_id, task, "timeout", "system"))
                    # A workflow step's task: its execution retries or moves on in this transaction.
                    run = await executions.after_outcome(conn, task, "timeout", self.settings.presence_ttl_s)
                    if run is not None:
                        events.extend(execution_events(tenant_id, run, "system"))
                await self.publish(conn, *events)
            swept += len(marked)
            for event in events:
                self.deliver(event)
        self.swept += swept
        return swept

    async def failover_once(self) -> int:
        """Fail over at most `task_sweep_batch` step tasks (server/workspaces/execution_failover.py)
        of up to `task_sweep_batch` tenants with open step tasks, taken in turn across sweeps,
        and hand out their waiting step tasks: each tenant's moves and their `task.changed`
        events (by `system`, to the new and the previous holder too) commit in one transaction
        of that tenant."""
        budget, grace = self.settings.task_sweep_batch, self.settings.agent_failover_grace_s
        async with self.pool.acquire() as conn:
            tenants = await execution_failover.open_step_tenants(conn, self._failover_after, budget)
        moved = 0
        for tenant_id in tenants:
            if moved >= budget:
                break
            self._failover_after = tenant_id
            events: list[Event] = []
            async with store.tenant_transaction(self.pool, tenant_id) as conn:
                found = await execution_failover.fail_over(conn, grace, self.settings.presence_ttl_s, budget - moved)
                for one in found:
                    events.append(task_event(
                        tenant_id, one.task, "delegate", executions.ENGINE, one.delegation, frozenset({one.previous})
                    ))  # fmt: skip
                # Waiting step tasks too: an agent may be back (or free) without registering again.
                waiting = await executions.hand_out_waiting(conn, self.settings.presence_ttl_s)
                events.extend(execution_events(tenant_id, waiting, executions.ENGINE))
                await self.publish(conn, *events)
            moved += len(found)
            for event in events:
                self.deliver(event)
        if moved < budget and len(tenants) < budget:
            self._failover_after = None  # every tenant was looked at: the next sweep starts over
        if moved:
            log.info("coordination.failed_over", tasks=moved)
        return moved


# --- the events (docs/protocol.md#126), each built by its model --------------------------------------

_LOCK_EVENTS: dict[str, type[pc.LockAcquired | pc.LockRenewed | pc.LockReleased]] = {
    cls.model_fields["type"].default: cls for cls in (pc.LockAcquired, pc.LockRenewed, pc.LockReleased)
}


def lock_event(tenant_id: uuid.UUID, type_: str, lock: locks.Lock, reason: str | None = None) -> Event:
    """`lock.acquired`, `lock.renewed`, or `lock.released` with its `reason`."""
    extra = {} if reason is None else {"reason": reason}
    message = _LOCK_EVENTS[type_](lock=lock.to_wire(), **extra)
    return Event(tenant_id, lock.resource.workspace_id, message)


def state_event(tenant_id: uuid.UUID, workspace_id: uuid.UUID, version: int, value: dict[str, Any], agent_id: str) -> Event:
    message = pc.StateChanged(workspace_id=workspace_id, version=version, state=value, agent_id=agent_id)
    return Event(tenant_id, workspace_id, message, ref=("state", str(workspace_id), "state"))


def member_event(tenant_id: uuid.UUID, workspace_id: uuid.UUID, member: dict[str, Any], change: str, agent_id: str) -> Event:
    """To the workspace, and to the member itself (a removed member has left it)."""
    message = pc.MemberChanged(workspace_id=workspace_id, member=member, change=change, agent_id=agent_id)  # type: ignore[arg-type]
    return Event(tenant_id, workspace_id, message, frozenset({member["agent_id"]}))

