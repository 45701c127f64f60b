"""Handlers of a connection for coordination (docs/protocol.md section 12): locks, workspace state,
tasks and members. Mixed into `agent.AgentConnection`; each handler runs the change and publishes its
event in one transaction, replies, then delivers the event to this node's sessions.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from server.core.errors import ErrorCode, TandemError
from server.wire import protocol as p
from server.wire import protocol_coordination as pc
from server.workspaces import directory as workspaces
from server.workspaces import executions, locks, members, state, tasks
from server.workspaces.coordination import (
    lock_event,
    member_event,
    state_event,
    task_event,
)

if TYPE_CHECKING:
    from server.transport.agent import AgentConnection

    _Base = AgentConnection
else:
    _Base = object


MAX_LOCK_WAITS = 32  # lock.acquire requests with wait_ms queued at once by one session


def member_wire(member: workspaces.Member) -> dict[str, Any]:
    """The member object of docs/protocol.md#125 (with its permissions)."""
    return {**member.to_wire(), "permissions": list(member.permissions)}


class CoordinationHandlers(_Base):
    """`on_<type>` handlers; the connection keeps `roles` (joined workspace -> role) and
    `held_locks` (locks this session took, released after a grace period when it ends)."""

    # --- helpers ---------------------------------------------------------------------------------

    def _writer(self, workspace_id: uuid.UUID) -> None:
        if not self.can_write.get(workspace_id, False):
            raise TandemError(ErrorCode.FORBIDDEN)

    # --- locks (docs/protocol.md#121) ------------------------------------------------------------

    async def on_lock_acquire(self, msg: pc.LockAcquire) -> None:
        if msg.wait_ms == 0:
            await self._lock_change(msg, "acquire")
            return
        self._writer(msg.workspace_id)
        if self.lock_waits >= MAX_LOCK_WAITS:
            raise TandemError(ErrorCode.LIMIT_EXCEEDED, details={"limit": "lock_waits", "value": MAX_LOCK_WAITS})
        # Queued in the background: the session's other requests go on meanwhile.
        self.lock_waits += 1
        self._spawn(self._acquire_waiting(msg))

    async def _acquire_waiting(self, msg: pc.LockAcquire) -> None:
        """Try, and on `locked` wait for this node to hear the lock released (first come, first
        served) or expire, until `wait_ms` passed; then the reply, or `locked`."""
        assert self.principal is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + msg.wait_ms / 1000
        key = (self.principal.tenant_id, msg.workspace_id, msg.doc_id and str(msg.doc_id), msg.name)
        known = self.node.coordination.known_locks
        try:
            while True:
                turn = known.wait_turn(key)  # before trying: a release meanwhile is not missed
                try:
                    await self._lock_change(msg, "acquire")
                    return
                except TandemError as exc:
                    if exc.code is not ErrorCode.LOCKED or loop.time() >= deadline:
                        self.error(p.ProtocolError(exc.code, msg.id, exc.details, exc.message))
                        return
                    wake_s = deadline - loop.time()
                    expires = (exc.details or {}).get("expires_at")
                    if expires is not None:  # an expired lock is free: try again then
                        until = (datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds()
                        wake_s = min(wake_s, max(until, 0.0) + 0.005)
                    try:
                        async with asyncio.timeout(wake_s):
                            await turn
                    except TimeoutError:
                        pass
                finally:
                    known.leave_queue(key, turn)
        except Exception:
            self.log.exception("session.lock_wait_failed")
            self.error(p.ProtocolError(ErrorCode.INTERNAL_ERROR, msg.id))
        finally:
            self.lock_waits -= 1

    async def on_lock_renew(self, msg: pc.LockRenew) -> None:
        await self._lock_change(msg, "renew")

    async def on_lock_release(self, msg: pc.LockRelease) -> None:
        await self._lock_change(msg, "release")

    async def _lock_change(self, msg: Any, action: str) -> None:
        assert self.principal is not None
        self._writer(msg.workspace_id)
        resource = locks.Resource(msg.workspace_id, msg.doc_id, msg.name)
        agent = self.principal.agent_id
        coordination = self.node.coordination
        if action == "acquire":  # certainly held by someone else: no transaction for that
            key = (self.principal.tenant_id, msg.workspace_id, msg.doc_id and str(msg.doc_id), msg.name)
            held = coordination.known_locks.held_by_other(key, agent)
            if held is not None:
                details = {"holder": held.holder, "expires_at": workspaces.rfc3339(held.expires_at)}
                raise TandemError(ErrorCode.LOCKED, details=details)
        async with self._tx() as conn:
            if action == "acquire":
                lock = await locks.acquire(conn, agent, resource, msg.ttl_ms)
                event = lock_event(self.principal.tenant_id, "lock.acquired", lock)
            elif action == "renew":
                lock = await locks.renew(conn, agent, resource, msg.fence, msg.ttl_ms)
                event = lock_event(self.principal.tenant_id, "lock.renewed", lock)
            else:
                lock = await locks.release(conn, agent, resource, msg.fence)
                event = lock_event(self.principal.tenant_id, "lock.released", lock, reason="released")
            await coordination.publish(conn, event)
        if action == "release":
            self.held_locks.pop(resource, None)
        else:
            self.held_locks[resource] = lock
        reply = {"acquire": pc.LockAcquireOk, "renew": pc.LockRenewOk, "release": pc.LockReleaseOk}[action]
        self.reply(reply(re=msg.id, lock=lock.to_wire()))
        coordination.deliver(event)

    async def on_lock_list(self, msg: pc.LockList) -> None:
        async with self._tx() as conn:
            found = await locks.list_locks(conn, msg.workspace_id)
        self.reply(pc.LockListOk(re=msg.id, workspace_id=msg.workspace_id, locks=[lock.to_wire() for lock in found]))

    def release_held_locks(self) -> None:
        """The session ended: its locks go after the grace period unless renewed meanwhile."""
        assert self.principal is not None
        client = self.ws.client.host if self.ws.client else None
        for lock in self.held_locks.values():
            self.node.coordination.release_later(self.principal.tenant_id, self.principal.agent_id, lock, client)
        self.held_locks.clear()

    # --- workspace state (docs/protocol.md#123) --------------------------------------------------

    async def on_state_get(self, msg: pc.StateGet) -> None:
        async with self._tx() as conn:
            current = await state.get_state(conn, msg.workspace_id)
        self.reply(pc.StateGetOk(re=msg.id, workspace_id=msg.workspace_id, version=current.version, state=current.state))

    async def on_state_update(self, msg: pc.StateUpdate) -> None:
        assert self.principal is not None
        self._writer(msg.workspace_id)
        async with self._tx() as conn:
            done = await state.update_state(
                conn, self.principal.agent_id, msg.workspace_id, expected_version=msg.expected_version, mode=msg.mode,
                value=msg.value, patch=msg.patch, on_conflict=msg.on_conflict,
                max_state_bytes=self.node.settings.max_state_bytes,
            )
            event = state_event(self.principal.tenant_id, msg.workspace_id, done.version, done.state, self.principal.agent_id)
            await self.node.coordination.publish(conn, event)
        self.reply(
            pc.StateUpdateOk(re=msg.id, workspace_id=msg.workspace_id, version=done.version, state=done.state,
                             merged=done.merged_conflict)
        )  # fmt: skip
        self.node.coordination.deliver(event)

    # --- tasks (docs/protocol.md#124) ------------------------------------------------------------

    async def on_task_create(self, msg: pc.TaskCreate) -> None:
        assert self.principal is not None
        self._writer(msg.workspace_id)
        agent = self.principal.agent_id
        async with self._tx() as conn:
            task = await tasks.create_task(conn, agent, self.roles.get(msg.workspace_id, "member"), msg)
            event = task_event(self.principal.tenant_id, task, "create", agent)
            await self.node.coordination.publish(conn, event)
        self.reply(pc.TASK_REPLIES["create"](re=msg.id, task=task.to_wire()))
        self.node.coordination.deliver(event)

    async def _task_action(self, msg: Any) -> None:
        assert self.principal is not None
        action = msg.type.removeprefix("task.")
        agent = self.principal.agent_id
        async with self._tx() as conn:
            # Locked first: its workspace decides who may act, and the transition reads it once.
            locked = await tasks.lock_task(conn, msg.task_id)
            workspace_id = locked.workspace_id
            self._joined_writer(workspace_id)
            # A workflow step's task advances its execution in this same transaction.
            change, run = await executions.transition_task(
                conn, agent, self.roles.get(workspace_id, "member"), msg, self.node.settings.presence_ttl_s, locked
            )
            previous = {change.previous.assigned_to} - {None, change.task.assigned_to}
            event = task_event(self.principal.tenant_id, change.task, action, agent, change.delegation, frozenset(previous))
            run_events = await self._publish_run(conn, run, event)
        self.reply(pc.TASK_REPLIES[action](re=msg.id, task=change.task.to_wire()))
        self.node.coordination.deliver(event)
        self._deliver_run(run_events)

    on_task_assign = on_task_accept = on_task_reject = on_task_start = _task_action
    on_task_complete = on_task_fail = on_task_cancel = on_task_delegate = _task_action

    def _joined_writer(self, workspace_id: uuid.UUID | None) -> None:
        if workspace_id is None or workspace_id not in self.session.workspaces:
            raise TandemError(ErrorCode.NOT_MEMBER)
        self._writer(workspace_id)

    async def on_task_get(self, msg: pc.TaskGet) -> None:
        async with self._tx() as conn:
            task = await tasks.get_task(conn, msg.task_id)
            if task.workspace_id not in self.session.workspaces:
                raise TandemError(ErrorCode.NOT_MEMBER)
            history = await tasks.delegations(conn, msg.task_id, self.node.settings.max_list_items)
        self.reply(pc.TaskGetOk(re=msg.id, task=task.to_wire(), delegations=[d.to_wire() for d in history]))

    async def on_task_list(self, msg: pc.TaskList) -> None:
        async with self._tx() as conn:
            found, truncated = await tasks.list_tasks(conn, msg)
        self.reply(pc.TaskListOk(re=msg.id, workspace_id=msg.workspace_id, tasks=[t.to_wire() for t in found], truncated=truncated))

    async def on_task_stats(self, msg: pc.TaskStats) -> None:
        async with self._tx() as conn:
            workload = await tasks.workload(conn, msg.workspace_id)
            statistics = await tasks.statistics(conn)
        self.reply(pc.TaskStatsOk(re=msg.id, workspace_id=msg.workspace_id, workload=workload, statistics=statistics))

    # --- members (docs/protocol.md#125) ----------------------------------------------------------

    async def on_member_add(self, msg: pc.MemberAdd) -> None:
        await self._member_change(msg, "added")

    async def on_member_remove(self, msg: pc.MemberRemove) -> None:
        await self._member_change(msg, "removed")

    async def on_member_update(self, msg: pc.MemberUpdate) -> None:
        await self._member_change(msg, "updated")

    async def _member_change(self, msg: Any, change: str) -> None:
        assert self.principal is not None
        actor = self.principal.agent_id
        async with self._tx() as conn:
            if change == "added":
                member = await members.add_member(conn, actor, msg.workspace_id, msg.agent_id, msg.role, msg.permissions)
            elif change == "removed":
                member = await members.remove_member(conn, actor, msg.workspace_id, msg.agent_id)
            else:
                member = await members.update_member(
                    conn, actor, msg.workspace_id, msg.agent_id, role=msg.role, permissions=msg.permissions
                )
            wire = member_wire(member)
            event = member_event(self.principal.tenant_id, msg.workspace_id, wire, change, actor)
            await self.node.coordination.publish(conn, event)
        reply = {"added": pc.MemberAddOk, "removed": pc.MemberRemoveOk, "updated": pc.MemberUpdateOk}[change]
        self.reply(reply(re=msg.id, member=wire))
        self.node.coordination.deliver(event)

    async def on_member_list(self, msg: pc.MemberList) -> None:
        async with self._tx() as conn:
            found, truncated = await members.list_members(conn, msg.workspace_id, self.node.settings.max_list_items)
        self.reply(pc.MemberListOk(re=msg.id, workspace_id=msg.workspace_id, members=[member_wire(m) for m in found], truncated=truncated))

    # --- events (server/cluster/events.py) ---------------------------------------------------------------

    def on_event(self, message: pc.WorkspaceEvent, frame: str) -> None:
        """A workspace event for this session; a change of its own membership, or a deletion,
        applies at once (the event itself tells the session)."""
        assert self.principal is not None
        if isinstance(message, pc.DocDeleted):
            self._doc_deleted(message.doc_id)
        elif isinstance(message, pc.WorkspaceDeleted) and message.workspace_id in self.session.workspaces:
            self._removed_from(message.workspace_id)
        if isinstance(message, pc.MemberChanged) and message.member["agent_id"] == self.principal.agent_id:
            workspace_id = message.workspace_id
            if workspace_id in self.session.workspaces:
                if message.change == "removed":
                    self._removed_from(workspace_id)
                else:
                    member = message.member
                    self.roles[workspace_id] = member["role"]
                    self.can_write[workspace_id] = workspaces.wire_can_write(member)
        self.send_text(frame)

    def _doc_deleted(self, doc_id: uuid.UUID) -> None:
        """The document was deleted: closed for this session (a reopen is `not_found`)."""
        room = self.rooms.pop(doc_id, None)
        if room is None:
            return
        room.close(self.conn_id)
        self.session.closed_doc(doc_id)
        self._spawn(self.node.presence.close_doc(self.conn_id, room.workspace_id, doc_id))

    def _removed_from(self, workspace_id: uuid.UUID) -> None:
        """No longer a member: the session leaves the workspace and closes its documents there."""
        assert self.principal is not None
        for doc_id in self.session.left(workspace_id):
            room = self.rooms.pop(doc_id, None)
            if room is not None:
                room.close(self.conn_id)
        self.can_write.pop(workspace_id, None)
        self.roles.pop(workspace_id, None)
        self.node.coordination.events.leave(self.conn_id, self.principal.tenant_id, workspace_id)
        self._spawn(self.node.presence.leave(self.conn_id, workspace_id))
