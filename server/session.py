"""The only code that touches an agent's WebSocket: authenticate, read loop, bounded send queue.

It drives the sans-I/O `protocol.Session` (docs/protocol.md section 4): frames in, typed
messages or typed errors out. Handlers call the data layer (`workspaces`, `rooms`); replies go
through one bounded send queue per connection, and a client that cannot keep up is closed with
`slow_consumer` instead of growing the server's memory. Cleanup sits in one `finally`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from crdt.document import CorruptUpdate
from server import auth, protocol as p, store, workspaces
from server.errors import ErrorCode, TandemError
from server.mailbox import Mailbox
from server.node import Node
from server.rooms import Room
from server.session_coordination import CoordinationHandlers

log = structlog.get_logger("tandem.session")

SERVER_VERSION = "0.1.0"
MAX_BATCH_BYTES = 65_536  # characters of messages joined into one batched frame (a larger one goes alone)


class Connection(CoordinationHandlers):
    """One agent connection. `send_text` is the rooms' non-blocking way in (a Subscriber).
    Coordination handlers (locks, state, tasks, members) are in server/session_coordination.py."""

    def __init__(self, ws: WebSocket, node: Node) -> None:
        self.ws = ws
        self.node = node
        self.conn_id = str(uuid.uuid4())
        self.session = p.Session(p.Limits.from_settings(node.settings))
        self.outbox: Mailbox[str] = Mailbox(node.settings.send_queue_len)  # frames for `_sender`
        self.principal: auth.Principal | None = None
        self.rooms: dict[uuid.UUID, Room] = {}  # open documents
        self.inflight = asyncio.Semaphore(node.settings.max_inflight_updates)
        self.updates: Mailbox[p.DocUpdate] = Mailbox()  # for `_update_pipeline`; bounded by `inflight`
        self.can_write: dict[uuid.UUID, bool] = {}  # joined workspace -> may this agent write
        self.roles: dict[uuid.UUID, str] = {}  # joined workspace -> this agent's role
        self.held_locks: dict[Any, Any] = {}  # locks.Resource -> locks.Lock taken in this session
        self.lock_waits = 0  # lock.acquire requests with wait_ms still waiting for their lock
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False  # the closing sequence has begun: nothing more is sent or handled
        self.log = log.bind(conn_id=self.conn_id)

    # --- sending -----------------------------------------------------------------------------

    def send_text(self, frame: str) -> None:
        """Queue a frame without waiting; a full queue closes the session (slow_consumer)."""
        if self.closing:
            return
        try:
            self.outbox.put(frame)
        except asyncio.QueueFull:
            self.node.metrics.slow_consumers.inc()
            self._spawn(self.fail(ErrorCode.SLOW_CONSUMER))

    def reply(self, message: Any) -> None:
        self.send_text(p.encode(message))

    def error(self, err: p.ProtocolError) -> None:
        self.send_text(p.encode(err.frame()))

    async def _sender(self) -> None:
        """One frame per message; for a client that asked for batches, the messages queued
        while the previous frame was being written go out together as one JSON array (one
        write and one wakeup of the client instead of many), up to MAX_BATCH_BYTES."""
        outbox = self.outbox
        while True:
            queued = await outbox.wait()
            count, size = 1, len(queued[0])
            if self.session.batch:  # the client's hello asked for batched frames (docs/protocol.md#3)
                while count < len(queued) and size + len(queued[count]) <= MAX_BATCH_BYTES:
                    size += len(queued[count]) + 1
                    count += 1
            frames = outbox.take(count)
            await self.ws.send_text(frames[0] if count == 1 else "[" + ",".join(frames) + "]")

    async def fail(self, code: ErrorCode | p.ProtocolError, re: p.RequestId | None = None) -> None:
        """The closing sequence (docs/protocol.md#44): error, session.closing, close frame."""
        closing = self.session.fail(code, re)
        if closing is None:
            return
        self.closing = True
        self.log.info("session.closing", reason=closing.reason, code=closing.code)
        try:
            async with asyncio.timeout(2):
                for frame in closing.frames:
                    await self.ws.send_text(frame)
                await self.ws.close(closing.code, closing.reason)
        except Exception:  # the peer may be gone already; the close code is best effort too
            pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        s = self.node.settings
        verdict = self.node.authenticate(self.ws.query_params, self.ws.headers)
        if isinstance(verdict, ErrorCode):
            await self.fail(verdict)
            return
        self.principal = verdict
        self.log = self.log.bind(tenant_id=str(verdict.tenant_id), agent_id=verdict.agent_id)
        hello = p.ServerHello(
            node_id=self.node.node_id, server_version=SERVER_VERSION, session_id=uuid.UUID(self.conn_id),
            agent_id=verdict.agent_id, tenant_id=verdict.tenant_id, expires_at=verdict.expires_at,
            limits=self.session.limits,
        )
        await self.ws.send_text(self.session.accept(hello))
        self.node.metrics.sessions.inc()
        events = self.node.coordination.events
        events.connect(self, verdict.tenant_id, verdict.agent_id)
        sender = asyncio.create_task(self._sender())
        pipeline = asyncio.create_task(self._update_pipeline())
        ttl_s = (verdict.expires_at - datetime.now(timezone.utc)).total_seconds() + s.jwt_leeway_s
        expiry = asyncio.get_running_loop().call_later(max(ttl_s, 0), lambda: self._spawn(self.fail(ErrorCode.TOKEN_EXPIRED)))
        self.log.info("session.started")
        try:
            await self._read_loop()
        except WebSocketDisconnect:
            pass
        except Exception:
            self.log.exception("session.crashed")
            if self.ws.client_state is WebSocketState.CONNECTED:
                try:
                    await self.ws.close(1011, "internal_error")
                except Exception:
                    pass
        finally:
            expiry.cancel()
            sender.cancel()
            pipeline.cancel()
            for task in list(self.tasks):
                task.cancel()
            for room in self.rooms.values():
                room.close(self.conn_id)
            self.rooms.clear()
            events.disconnect(self.conn_id, verdict.tenant_id, verdict.agent_id, list(self.session.workspaces))
            self.release_held_locks()
            self.session.transport_closed()
            self.node.metrics.sessions.dec()
            self.log.info("session.ended")
            # Last: no await ran since the sender stopped, so no presence event was queued in vain.
            await self.node.presence.disconnect(self.conn_id)

    async def _read_loop(self) -> None:
        while not self.closing:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            # One message, or several from a batched frame (docs/protocol.md#3), handled in order.
            for result in self.session.receive_frame(frame, time.monotonic()):
                if self.closing:  # a handler ended the session: drop the rest
                    break
                if isinstance(result, p.ProtocolError):
                    self.node.metrics.errors.labels(result.code.value).inc()
                    if result.close_code is not None:
                        await self.fail(result)
                        break
                    self.error(result)
                    continue
                await self._dispatch(result)

    async def _dispatch(self, msg: p.ClientMessage) -> None:
        handler = getattr(self, "on_" + msg.type.replace(".", "_"))
        try:
            await handler(msg)
        except TandemError as exc:
            self.node.metrics.errors.labels(exc.code.value).inc()
            self.error(p.ProtocolError(exc.code, msg.id, exc.details, exc.message))
        except Exception:
            self.log.exception("session.handler_failed", type=msg.type)
            self.node.metrics.errors.labels(ErrorCode.INTERNAL_ERROR.value).inc()
            self.error(p.ProtocolError(ErrorCode.INTERNAL_ERROR, msg.id))

    def _tx(self):  # noqa: ANN202 - an async context manager
        assert self.principal is not None
        client = self.ws.client.host if self.ws.client else None
        return store.tenant_transaction(self.node.pool, self.principal.tenant_id, self.principal.agent_id, client)

    # --- handlers (docs/protocol.md section 5) ------------------------------------------------

    async def on_hello(self, msg: p.Hello) -> None:
        self.reply(p.HelloOk(re=msg.id, protocol=self.session.protocol, batch=msg.batch))

    async def on_ping(self, msg: p.Ping) -> None:
        self.reply(p.Pong(re=msg.id))

    async def on_workspace_create(self, msg: p.WorkspaceCreate) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            ws = await workspaces.create_workspace(
                conn, self.principal.tenant_id, self.principal.agent_id, msg.name, msg.workspace_type,
                msg.visibility, msg.max_members,
            )
        self.reply(p.WorkspaceCreateOk(re=msg.id, workspace=ws.to_wire()))

    async def on_workspace_list(self, msg: p.WorkspaceList) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            items, truncated = await workspaces.list_workspaces(conn, self.principal.agent_id, self.node.settings.max_list_items)
        self.reply(p.WorkspaceListOk(re=msg.id, workspaces=[w.to_wire() for w in items], truncated=truncated))

    async def on_workspace_join(self, msg: p.WorkspaceJoin) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            joined = await workspaces.join_workspace(conn, self.principal.agent_id, msg.workspace_id, self.node.settings.max_list_items)
        self.session.joined(msg.workspace_id)
        self.can_write[msg.workspace_id] = joined.can_write
        self.roles[msg.workspace_id] = joined.role
        self.node.coordination.events.join(self, self.principal.tenant_id, msg.workspace_id)
        await self.node.presence.join(self, self.principal.tenant_id, self.principal.agent_id, msg.workspace_id)
        self.reply(
            p.WorkspaceJoinOk(
                re=msg.id, workspace=joined.workspace.to_wire(), role=joined.role, state_version=joined.state_version,
                members=[m.to_wire() for m in joined.members], documents=[d.to_wire() for d in joined.documents],
                truncated=joined.truncated,
            )
        )

    async def on_workspace_leave(self, msg: p.WorkspaceLeave) -> None:
        assert self.principal is not None
        closed = self.session.left(msg.workspace_id)
        self.can_write.pop(msg.workspace_id, None)
        self.roles.pop(msg.workspace_id, None)
        self.node.coordination.events.leave(self.conn_id, self.principal.tenant_id, msg.workspace_id)
        for doc_id in closed:
            room = self.rooms.pop(doc_id, None)
            if room is not None:
                room.close(self.conn_id)
        await self.node.presence.leave(self.conn_id, msg.workspace_id)
        self.reply(p.WorkspaceLeaveOk(re=msg.id, workspace_id=msg.workspace_id, closed_doc_ids=closed))

    async def on_doc_create(self, msg: p.DocCreate) -> None:
        assert self.principal is not None
        async with self._tx() as conn:
            doc = await workspaces.create_document(
                conn, self.principal.agent_id, msg.workspace_id, msg.title, msg.content_type, msg.language
            )
        self.reply(p.DocCreateOk(re=msg.id, document=doc.to_wire()))

    async def on_doc_list(self, msg: p.DocList) -> None:
        async with self._tx() as conn:
            docs, truncated = await workspaces.list_documents(conn, msg.workspace_id, self.node.settings.max_list_items)
        self.reply(p.DocListOk(re=msg.id, workspace_id=msg.workspace_id, documents=[d.to_wire() for d in docs], truncated=truncated))

    async def _sync(self, msg: p.DocOpen | p.DocResync) -> Room:
        """Subscribe (or resubscribe) and send the catch-up reply; events for later seqs follow
        it in the same queue (docs/protocol.md#62)."""
        assert self.principal is not None
        room = self.rooms.get(msg.doc_id)
        if room is None:
            async with self._tx() as conn:
                info = await workspaces.get_document(conn, msg.doc_id)
            if info is None:
                raise TandemError(ErrorCode.NOT_FOUND)
            not_member = self.session.check_joined(info.workspace_id, msg.id)
            if not_member is not None:
                raise TandemError(ErrorCode.NOT_MEMBER)
            try:
                room = await self.node.rooms.get(self.principal.tenant_id, msg.doc_id)
            except LookupError:
                raise TandemError(ErrorCode.NOT_FOUND) from None
        reply_type = p.DocOpenOk if isinstance(msg, p.DocOpen) else p.DocResyncOk
        workspace_id = room.workspace_id

        def reply(missing: bytes, state_vector: bytes, seq: int) -> None:
            self.reply(reply_type(re=msg.id, doc_id=msg.doc_id, workspace_id=workspace_id, seq=seq, update=missing, state_vector=state_vector))

        await room.open(self, msg.state_vector, reply)
        # Open only once subscribed: a failed open leaves the session as it was.
        self.rooms[msg.doc_id] = room
        self.session.opened(msg.doc_id, room.workspace_id)
        return room

    async def on_doc_open(self, msg: p.DocOpen) -> None:
        room = await self._sync(msg)
        await self.node.presence.open_doc(self.conn_id, room.workspace_id, msg.doc_id)

    async def on_doc_resync(self, msg: p.DocResync) -> None:
        await self._sync(msg)

    async def on_doc_close(self, msg: p.DocClose) -> None:
        room = self.rooms.pop(msg.doc_id, None)
        if room is not None:
            room.close(self.conn_id)
        self.session.closed_doc(msg.doc_id)
        self.reply(p.DocCloseOk(re=msg.id, doc_id=msg.doc_id))
        if room is not None:
            await self.node.presence.close_doc(self.conn_id, room.workspace_id, msg.doc_id)

    async def on_doc_update(self, msg: p.DocUpdate) -> None:
        room = self.rooms[msg.doc_id]
        if not self.can_write.get(room.workspace_id, False):
            raise TandemError(ErrorCode.FORBIDDEN)
        # Bounded pipelining: the read loop goes on while updates are checked and committed; the
        # ack is sent by the room, in sequence order with the document's other events
        # (docs/protocol.md#62). The pipeline keeps this connection's updates in order.
        await self.inflight.acquire()
        self.updates.put(msg)

    async def _update_pipeline(self) -> None:
        while True:
            await self.updates.wait()
            batch = self.updates.take()
            validator = self.node.validator
            if validator is None:
                verdicts: list[str | None] = [None] * len(batch)
            else:  # one round trip to the worker, shared with other connections' checks
                verdicts = await validator.check_many([m.update for m in batch])
            for msg, verdict in zip(batch, verdicts):
                await self._apply_update(msg, verdict)

    async def _apply_update(self, msg: p.DocUpdate, verdict: str | None) -> None:
        assert self.principal is not None
        room = self.rooms.get(msg.doc_id)
        if room is None:  # closed while the update waited
            self.inflight.release()
            self.error(p.ProtocolError(ErrorCode.DOC_NOT_OPEN, msg.id))
            return
        await room.writable()
        refused = room.write_refused(self.principal.agent_id, msg.fence)
        if refused is not None:  # the document's lock (docs/protocol.md#121): nothing applied
            self.inflight.release()
            holder = room.lock.holder if room.lock is not None else None
            self.error(p.ProtocolError(refused, msg.id, {"holder": holder} if holder else None))
            return
        try:
            if verdict is not None:
                raise CorruptUpdate(verdict)
            op = room.validate(self.principal.agent_id, msg.update, origin=self.conn_id, request_id=msg.id, fence=msg.fence)
        except CorruptUpdate as exc:
            self.inflight.release()
            self.node.metrics.invalid_updates.inc()
            err = self.session.invalid_update(msg.id, {"reason": str(exc)[:200]})
            self.node.metrics.errors.labels(err.code.value).inc()
            if err.close_code is not None:
                await self.fail(err)
            else:
                self.error(err)
            return
        if op is None:
            self.inflight.release()
            self.reply(p.DocUpdateOk(re=msg.id, doc_id=msg.doc_id, seq=None))
            return
        # No task per update: the commit goes on even if this session ends now (the room needs
        # it), and the ack comes from the room in seq order; this callback only reports failure.
        seq = await self.node.rooms.submit(room, op)
        seq.add_done_callback(functools.partial(self._committed, room, msg.id))

    def _committed(self, room: Room, re: p.RequestId | None, seq: asyncio.Future[int]) -> None:
        self.inflight.release()
        exc = seq.exception() if not seq.cancelled() else None
        if isinstance(exc, TandemError):  # the lock refused it in the write path: nothing stored
            self.error(p.ProtocolError(exc.code, re, exc.details))
        elif exc is not None:
            self.log.error("session.commit_failed", doc_id=str(room.doc_id), error=repr(exc))
            self.error(p.ProtocolError(ErrorCode.INTERNAL_ERROR, re))

    # --- presence and awareness (docs/protocol.md#57; server/presence.py) ---------------------

    async def on_presence_list(self, msg: p.PresenceList) -> None:
        assert self.principal is not None
        found = await self.node.presence.list_members(self.principal.tenant_id, msg.workspace_id)
        self.reply(
            p.PresenceListOk(
                re=msg.id, workspace_id=msg.workspace_id, members=found.members, truncated=found.truncated,
                partial=found.partial,
            )
        )

    async def on_awareness_set(self, msg: p.AwarenessSet) -> None:
        err = self.session.check_awareness(msg, self.node.settings.max_awareness_bytes)
        if err is not None:
            raise TandemError(err.code, details=err.details)
        await self.node.presence.set_awareness(self.conn_id, msg.workspace_id, msg.doc_id, msg.state)
        self.reply(p.AwarenessSetOk(re=msg.id, workspace_id=msg.workspace_id, doc_id=msg.doc_id))


async def websocket_endpoint(ws: WebSocket) -> None:
    node = ws.app.state.tandem.node
    await Connection(ws, node).run()
