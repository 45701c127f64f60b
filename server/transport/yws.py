"""The y-websocket compatible endpoint `/yjs/{workspace_id}/{doc_id}` (docs/protocol.md section 11).

Stock Yjs editors (`WebsocketProvider` of y-websocket) join the same documents as agents. The
wire is the y-protocols one: binary frames holding a sync message (step 1, step 2, update), an
awareness update, an awareness query or an auth message. Updates take the
agents' durable path: checked in the update checker, applied to the room's document,
sequenced and committed to `document_operations`, and only then sent to the document's other
subscribers on every node (the room delivers committed operations in seq order through its
`send_update` hook). There are no acks; the sender never gets its own update back.

Awareness (cursors, user names) is shared between the y-websocket clients of one document on
this node by `AwarenessRelay`, and bridged to agent presence both ways (docs/protocol.md#113): an
editor is a presence member of the workspace with the document open and its awareness state as
its presence awareness (relayed across nodes by the presence backend); an agent's awareness about
the document (and an editor's on another node) reaches the editors as one more awareness client.
Nothing of it is stored.
This module is the connection (I/O); the wire is `server/wire/y_protocols.py` (pure), the awareness
relay `server/transport/yws_awareness.py`, the right to write following membership `server/transport/yws_rights.py`.

Refusals close the socket with a code and the error code as reason (table `CLOSE_CODES`). Codes
4400-4499 tell y-websocket not to reconnect; transient ones (1011, 1013) let it reconnect and
resync, which loses nothing since Yjs resends what the server lacks.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.websockets import WebSocket

from crdt.clock import CorruptStateVector
from crdt.document import CorruptUpdate
from server.core.auth import Refusal
from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.documents.room import Room
from server.transport.connection import Connection
from server.transport.node import Node
from server.transport.pipeline import ITEM_OVERHEAD_BYTES, Inbound, Update
from server.transport.yws_awareness import AwarenessRelay, AwarenessRelays
from server.transport.yws_rights import LiveRights
from server.wire.y_protocols import (
    CLOSE_CODES,
    EMPTY_UPDATE,
    AuthMessage,
    AwarenessUpdate,
    FrameRefused,
    QueryAwareness,
    SyncStep1,
    SyncUpdate,
    parse,
    permission_denied_message,
    sync_step1_message,
    sync_step2_message,
    update_message,
)
from server.workspaces import directory as workspaces

log = structlog.get_logger("tandem.yws")

@dataclass(slots=True, eq=False)
class Received(Inbound):
    """A message other than an update, handled in order with the updates."""

    message: SyncStep1 | AwarenessUpdate | QueryAwareness


class YjsConnection(Connection[bytes], LiveRights):
    """One y-websocket client of one document: the y-protocols codec and handlers over the shared
    lifecycle (server/transport/connection.py). `send_update` is the room's way in. Every message is
    handled in order through the pipeline, paced by the rate limit (y-protocols has no error to
    refuse with); reading goes on meanwhile up to `max_received_bytes`. Its right to write
    follows its membership (server/transport/yws_rights.py)."""

    kind = "yws"
    paced = True
    write_through = True  # one y-protocols message per frame: nothing to join
    presence_batch = False  # presence events one by one: `send_text` bridges awareness from them

    def __init__(self, ws: WebSocket, node: Node, relays: AwarenessRelays, workspace_id: str, doc_id: str) -> None:
        super().__init__(ws, node)
        self.relays = relays
        self.path = (workspace_id, doc_id)
        self.room: Room | None = None
        self.relay: AwarenessRelay | None = None
        self.can_write = False
        self._asked_for_missing = False  # `update_ahead`
        self._published: dict[str, Any] | None = None  # the awareness last given to presence

    # --- sending ---------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        self.queue(data)

    def send_text(self, frame: str) -> None:
        """Presence events of the workspace (this connection is a presence member): awareness
        about this document from other sessions is bridged to the editor; the rest is not for it."""
        if self.relay is None or self.room is None:
            return
        event = json.loads(frame)
        kind, doc_id = event.get("type"), str(self.room.doc_id)
        if kind == "awareness.changed" and event["doc_id"] == doc_id:
            self.relay.bridge(event["conn_id"], event["agent_id"], event["state"])
        elif kind == "presence.left" or (kind == "presence.changed" and doc_id not in event["doc_ids"]):
            self.relay.bridge(event["conn_id"], event["agent_id"], None)  # gone, or closed the document

    def publish_awareness(self, state: dict[str, Any] | None) -> None:
        """The editor's own awareness state changed: make it its presence awareness (it is
        within `max_awareness_bytes`: parse() refuses larger states)."""
        if state == self._published or self.room is None:
            return
        self._published = state
        room = self.room
        self._spawn(self.node.presence.set_awareness(self.conn_id, room.workspace_id, room.doc_id, state))

    def send_update(self, seq: int, agent_id: str, update: bytes, own: bool) -> None:
        if not own:  # y-websocket has no acks: the sender already has its update
            self.send_bytes(update_message(update))

    def closing_frames(self, code: ErrorCode, detail: Any) -> tuple[list[bytes], int, str]:
        """No frames (the endpoint speaks only y-protocols): the close code and the error code
        (for a refused token, with its class: `unauthorized: bad_signature`)."""
        return [], CLOSE_CODES[code], detail.close_reason if isinstance(detail, Refusal) else code.value

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> bool:
        assert self.principal is not None
        self.log = self.log.bind(doc_id=self.path[1])
        self.follow_membership()  # before the membership is read: no change falls in between
        try:
            room = await self._join(*self.path)
            # Subscribe at once (the room counts this client and will not unload) and ask the
            # client for what the server lacks (not a viewer: its changes would be refused).
            # The client's own step 1 gets the step 2 reply.
            await room.open(self, room.document.state_vector(), self._ask_for_missing)
        except TandemError as exc:
            self.ending = (exc.code, None)
        except Exception:
            self.log.exception("yws.join_failed")
            self.ending = (ErrorCode.INTERNAL_ERROR, None)
        if self.ending is not None:
            self.unfollow_membership()
            self.leave_document()
            await self._send_closing()
            return False
        self.relay = self.relays.join(room.doc_id, self)
        self.log.info("yws.joined", can_write=self.can_write)
        # A presence member like an agent with the document open: agents see the editor, and
        # the relay shows the editor the others' awareness (bridge).
        await self.node.presence.join(self, self.principal.tenant_id, self.principal.agent_id, room.workspace_id)
        await self.node.presence.open_doc(self.conn_id, room.workspace_id, room.doc_id)
        await self._replay_awareness(room)
        self.membership_read()
        return True

    async def cleanup(self) -> None:
        self.unfollow_membership()
        self.leave_document()

    def leave_document(self) -> None:
        """Nothing more reaches the editor: the room's updates and the relay's awareness stop
        (its own awareness is removed for the others)."""
        if self.room is not None:
            self.room.close(self.conn_id)
            if self.relay is not None:
                self.relays.leave(self.room.doc_id, self)
                self.relay = None

    async def _replay_awareness(self, room: Room) -> None:
        """The awareness other sessions already hold about the document, bridged at once."""
        assert self.principal is not None and self.relay is not None
        listing = await self.node.presence.list_members(self.principal.tenant_id, room.workspace_id)
        for member in listing.members:
            if member.awareness is not None and member.awareness_doc_id == room.doc_id:
                self.relay.bridge(str(member.conn_id), member.agent_id, member.awareness)

    def _ask_for_missing(self, _missing: bytes, server_vector: bytes, _seq: int) -> None:
        if self.can_write:
            self.send_bytes(sync_step1_message(server_vector))

    def ask_for_missing(self) -> None:
        """Sync step 1 with the server's state vector: the editor answers with what it lacks."""
        assert self.room is not None
        self.send_bytes(sync_step1_message(self.room.document.state_vector()))

    def _reply_step2(self, missing: bytes, _server_vector: bytes, _seq: int) -> None:
        self.send_bytes(sync_step2_message(missing))

    async def _join(self, workspace_id: str, doc_id: str) -> Room:
        """The document's room, after the main protocol's checks: the document exists in this
        workspace, and the agent is a member (a team or public workspace admits it, as
        `workspace.join` does). Raises TandemError."""
        assert self.principal is not None
        try:
            ws_id, d_id = uuid.UUID(workspace_id), uuid.UUID(doc_id)
        except ValueError:
            raise TandemError(ErrorCode.NOT_FOUND) from None
        agent = self.principal.agent_id
        client = self.ws.client.host if self.ws.client else None
        async with store.tenant_transaction(self.node.pool, self.principal.tenant_id, agent, client) as conn:
            info = await workspaces.get_document(conn, d_id)
            if info is None or info.workspace_id != ws_id:
                raise TandemError(ErrorCode.NOT_FOUND)
            member = await workspaces.membership(conn, agent, ws_id)
            if member is None:
                joined = await workspaces.join_workspace(conn, agent, ws_id, 1)
                self.can_write = joined.can_write
            else:
                self.can_write = workspaces.can_write(member)
        try:
            self.room = await self.node.rooms.get(self.principal.tenant_id, d_id)
        except LookupError:
            raise TandemError(ErrorCode.NOT_FOUND) from None
        return self.room

    # --- reading and handling --------------------------------------------------------------

    async def on_frame(self, frame: str | bytes) -> None:
        s = self.node.settings
        parsed = parse(frame, s.max_frame_bytes, s.max_awareness_bytes)
        if isinstance(parsed, FrameRefused):
            self.end(parsed.code, parsed.detail)
            return
        size = len(frame) + ITEM_OVERHEAD_BYTES
        if isinstance(parsed, SyncUpdate):
            assert self.room is not None
            if parsed.update != EMPTY_UPDATE:
                self.receive(Update(size, self.room, parsed.update))
        elif not isinstance(parsed, AuthMessage):  # y-protocols defines none for clients to send
            self.receive(Received(size, parsed))

    async def handle(self, item: Inbound) -> None:
        assert isinstance(item, Received) and self.room is not None and self.relay is not None
        msg = item.message
        if isinstance(msg, SyncStep1):
            try:  # the reply is queued before the updates committed meanwhile
                await self.room.open(self, msg.state_vector, self._reply_step2)
            except (CorruptStateVector, CorruptUpdate) as exc:
                self.end(ErrorCode.INVALID_MESSAGE, f"state vector: {exc}"[:80])
        elif isinstance(msg, AwarenessUpdate):
            refused = self.relay.apply(self, msg)
            if refused is not None:
                self.end(refused.code, refused.detail)
        elif isinstance(msg, QueryAwareness):
            current = self.relay.snapshot()
            if current is not None:
                self.send_bytes(current)

    # --- update outcomes (the pipeline: server/transport/connection.py) ------------------------------

    def may_write(self, item: Update) -> bool:
        return self.can_write

    def update_committed(self, item: Update, seq: int) -> None:
        self._asked_for_missing = False

    def update_ahead(self, item: Update) -> bool:
        """The editor kept edits the server refused or has not seen (a viewer promoted, a lock
        released, or typing on before its answer to sync step 1): its updates build on them. As
        y-websocket would hold it pending, ask the editor for what the server lacks (once until
        one of its updates commits); its answer carries this update too."""
        if self.can_write and not self._asked_for_missing:
            self._asked_for_missing = True
            self.ask_for_missing()
        return True

    def update_refused(self, item: Update, code: ErrorCode, details: dict[str, Any] | None) -> None:
        """A refused update cannot be reported on this wire: a refusal of the writer's rights
        (a viewer, another agent's lock) is a permission-denied message and the connection
        stays; anything else closes it (y-websocket reconnects and resends after transient
        codes, docs/protocol.md#114)."""
        if code is ErrorCode.FORBIDDEN:
            self.node.metrics.errors.labels(code.value).inc()
            self.send_bytes(permission_denied_message("forbidden: read-only access (viewer)"))
        elif code in (ErrorCode.LOCKED, ErrorCode.STALE_FENCE):
            self.node.metrics.errors.labels(code.value).inc()
            self.send_bytes(permission_denied_message(f"{code.value}: the document is locked by another agent"))
        else:  # counted with the close
            self.end(code, (details or {}).get("reason", "")[:80] or None)


async def endpoint(ws: WebSocket) -> None:
    """`WebSocketRoute("/yjs/{workspace_id}/{doc_id}", endpoint)`."""
    app_state = ws.app.state  # Starlette's per-app namespace (server/app.py's AppState is `.tandem`)
    relays = getattr(app_state, "yws_relays", None)
    if relays is None:
        relays = app_state.yws_relays = AwarenessRelays(app_state.tandem.node.settings.max_awareness_bytes)
    await YjsConnection(ws, app_state.tandem.node, relays, ws.path_params["workspace_id"], ws.path_params["doc_id"]).run()
