"""The agent endpoint `/ws`: the JSON protocol's codec and handlers over the shared lifecycle.

It drives the sans-I/O `protocol.ProtocolSession` (docs/protocol.md section 4): frames in, typed
messages or typed errors out. Handlers call the data layer (`workspaces`, `rooms`); `doc.update`s
go to the connection's update pipeline. Reading, the bounded send queue, the pipeline and the
closing sequence are `server/transport/connection.py`'s, shared with the y-websocket endpoint.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.websockets import WebSocket

from server.core.auth import Refusal
from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.documents.room import Room
from server.transport.agent_coordination import CoordinationHandlers
from server.transport.agent_executions import ExecutionHandlers
from server.transport.agent_registry import AgentRegistryHandlers
from server.transport.agent_workflows import WorkflowHandlers
from server.transport.connection import Connection
from server.transport.node import Node
from server.transport.pipeline import ITEM_OVERHEAD_BYTES, Update
from server.wire import protocol as p
from server.workspaces import directory as workspaces

SERVER_VERSION = "0.1.0"
MAX_BATCH_BYTES = 65_536  # characters of messages joined into one batched frame (a larger one goes alone)


class AgentConnection(
    Connection[str], CoordinationHandlers, AgentRegistryHandlers, WorkflowHandlers, ExecutionHandlers
):
    """One agent connection: the JSON codec and the handlers. `send_text` is the rooms' and the
    presence's non-blocking way in (a Subscriber). The lifecycle (reading, sending, the update
    pipeline, closing) is `Connection`'s; coordination handlers are in agent_coordination.py, the
    agent registry's in agent_registry.py, workflow definitions' in agent_workflows.py."""

    kind = "session"

    def __init__(self, ws: WebSocket, node: Node) -> None:
        super().__init__(ws, node)
        self.session = p.ProtocolSession(p.Limits.from_settings(node.settings))
        self.rooms: dict[uuid.UUID, Room] = {}  # open documents
        # Documents an update of which was refused since their last open or resync: this
        # client's later updates there may build on it (answered `update_ahead`, not invalid).
        self.refused_since_sync: set[uuid.UUID] = set()
        self.can_write: dict[uuid.UUID, bool] = {}  # joined workspace -> may this agent write
        self.roles: dict[uuid.UUID, str] = {}  # joined workspace -> this agent's role
        self.held_locks: dict[Any, Any] = {}  # locks.Resource -> locks.Lock taken in this session
        self.lock_waits = 0  # lock.acquire requests with wait_ms still waiting for their lock

    # --- the wire ----------------------------------------------------------------------------

    def send_text(self, frame: str) -> None:
        self.queue(frame)

    @property
    def presence_batch(self) -> bool:
        """Presence reaches this session as `presence.batch` frames (its hello asked for them)."""
        return self.session.presence_batch

    def reply(self, message: Any) -> None:
        self.queue(p.encode(message))

    def error(self, err: p.ProtocolError) -> None:
        self.queue(p.encode(err.frame()))

    def next_payload(self, queued: list[str]) -> str:
        """One frame per message; for a client that asked for batches, the messages queued
        while the previous frame was being written go out together as one JSON array (one
        write and one wakeup of the client instead of many), up to MAX_BATCH_BYTES."""
        count, size = 1, len(queued[0])
        if self.session.batch:  # the client's hello asked for batched frames (docs/protocol.md#3)
            while count < len(queued) and size + len(queued[count]) <= MAX_BATCH_BYTES:
                size += len(queued[count]) + 1
                count += 1
        frames = self.outbox.take(count)
        return frames[0] if count == 1 else "[" + ",".join(frames) + "]"

    def closing_frames(self, code: ErrorCode, detail: Any) -> tuple[list[str], int, str] | None:
        """The closing sequence (docs/protocol.md#44): error, session.closing, close frame. A
        refused token's class is in the error's details and the close reason (section 2.2)."""
        if isinstance(detail, Refusal):
            closing = self.session.fail(p.ProtocolError(code, details={"reason": detail.reason.value}))
            return None if closing is None else (list(closing.frames), closing.code, detail.close_reason)
        closing = self.session.fail(detail if isinstance(detail, p.ProtocolError) else code)
        return None if closing is None else (list(closing.frames), closing.code, closing.reason)

    def fail(self, err: p.ProtocolError) -> None:
        """End the session for an error that closes it (after what was read is settled)."""
        self.end(err.code, err)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> bool:
        verdict = self.principal
        assert verdict is not None
        # The wire's session_id is this connection's conn_id (server/wire/session_rules.py).
        hello = p.ServerHello(
            node_id=self.node.node_id, server_version=SERVER_VERSION, session_id=uuid.UUID(self.conn_id),
            agent_id=verdict.agent_id, tenant_id=verdict.tenant_id, expires_at=verdict.expires_at,
            limits=self.session.limits,
        )
        await self.ws.send_text(self.session.accept(hello))
        self.node.coordination.events.connect(self, verdict.tenant_id, verdict.agent_id)
        return True

    async def cleanup(self) -> None:
        assert self.principal is not None
        for room in self.rooms.values():
            room.close(self.conn_id)
        self.rooms.clear()
        self.node.coordination.events.disconnect(
            self.conn_id, self.principal.tenant_id, self.principal.agent_id, list(self.session.workspaces)
        )
        self.release_held_locks()
        self.session.transport_closed()

    async def on_frame(self, frame: str | bytes) -> None:
        # One message, or several from a batched frame (docs/protocol.md#3), handled in order.
        for result in self.session.receive_frame(frame, time.monotonic()):
            if not self.reading:  # a handler ended the session: the rest is not handled
                break
            if isinstance(result, p.ProtocolError):
                self.node.metrics.errors.labels(result.code.value).inc()
                if result.close_code is not None:
                    self.fail(result)
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
        self.reply(p.HelloOk(re=msg.id, protocol=self.session.protocol, batch=msg.batch, presence_batch=msg.presence_batch))

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
        self.node.coordination.events.join(self, self.principal.tenant_id, msg.workspace_id, msg.task_events)
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
        if room is not None and room.broken:  # its rebuild from the log failed: load it afresh
            room.close(self.conn_id)
            room = None
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
        self.refused_since_sync.discard(msg.doc_id)
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
        self.refused_since_sync.discard(msg.doc_id)  # bounded by the documents open now
        self.session.closed_doc(msg.doc_id)
        self.reply(p.DocCloseOk(re=msg.id, doc_id=msg.doc_id))
        if room is not None:
            await self.node.presence.close_doc(self.conn_id, room.workspace_id, msg.doc_id)

    async def on_doc_update(self, msg: p.DocUpdate) -> None:
        room = self.rooms[msg.doc_id]
        if not self.can_write.get(room.workspace_id, False):
            raise TandemError(ErrorCode.FORBIDDEN)
        # Checked and committed by the update pipeline, in the order sent, while reading goes
        # on; the ack comes from the room, in sequence order with the document's other events
        # (docs/protocol.md#62).
        self.receive(Update(len(msg.update) + ITEM_OVERHEAD_BYTES, room, msg.update, msg.id, msg.fence))

    # --- update outcomes (the pipeline: server/transport/connection.py) ----------------------------------

    def may_write(self, item: Update) -> bool:
        return self.can_write.get(item.room.workspace_id, False)

    def update_committed(self, item: Update, seq: int) -> None:
        if self.rooms.get(item.room.doc_id) is not item.room:  # closed meanwhile: no stream to ack in
            self.reply(p.DocUpdateOk(re=item.re, doc_id=item.room.doc_id, seq=seq))

    def update_unchanged(self, item: Update) -> None:
        self.reply(p.DocUpdateOk(re=item.re, doc_id=item.room.doc_id, seq=None))

    def update_ahead(self, item: Update) -> bool:
        """An update of a document this session had an update refused in since it last synced
        builds on what the server never stored: `update_ahead` (the client resyncs and sends
        what the server lacks; docs/protocol.md section 6.1). Otherwise it is invalid."""
        if item.room.doc_id not in self.refused_since_sync:
            return False
        self.node.metrics.errors.labels(ErrorCode.UPDATE_AHEAD.value).inc()
        self.error(p.ProtocolError(ErrorCode.UPDATE_AHEAD, item.re, None))
        return True

    def update_refused(self, item: Update, code: ErrorCode, details: dict[str, Any] | None) -> None:
        self.refused_since_sync.add(item.room.doc_id)
        err = p.ProtocolError(code, item.re, details)
        if code in (ErrorCode.INVALID_UPDATE, ErrorCode.UPDATE_TOO_COSTLY):  # both spend the budget
            counted = self.session.invalid_update(item.re, details)
            if counted.close_code is not None:  # the budget is spent: counted with the close
                self.fail(counted)
                return
        self.node.metrics.errors.labels(err.code.value).inc()
        self.error(err)

    # --- presence and awareness (docs/protocol.md#57; server/cluster/presence.py) ---------------------

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
    await AgentConnection(ws, node).run()
