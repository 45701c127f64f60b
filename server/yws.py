"""The y-websocket compatible endpoint `/yjs/{workspace_id}/{doc_id}` (docs/protocol.md section 11).

Stock Yjs editors (`WebsocketProvider` of y-websocket) join the same documents as agents. The
wire is the y-protocols one: binary frames holding a sync message (step 1, step 2, update), an
awareness update, an awareness query or an auth message; they are read and written with
pycrdt's own helpers (`YMessageType`, `Decoder`, `write_message`, `create_update_message`,
`Awareness`, ...), never with hand-written framing. Updates take the
agents' durable path: checked in the validation worker, applied to the room's document,
sequenced and committed to `document_operations`, and only then sent to the document's other
subscribers on every node (the room delivers committed operations in seq order through its
`send_update` hook). There are no acks; the sender never gets its own update back.

Awareness (cursors, user names) is shared between the y-websocket clients of one document on
this node by `AwarenessRelay`, and bridged to agent presence both ways (docs/protocol.md#113): an
editor is a presence member of the workspace with the document open and its awareness state as
its presence awareness (relayed across nodes by the presence backend); an agent's awareness about
the document (and an editor's on another node) reaches the editors as one more awareness client.
Nothing of it is stored.
The file reads top-down: the wire (pure), the awareness relay, the connection (I/O).

Refusals close the socket with a code and the error code as reason (table `CLOSE_CODES`). Codes
4400-4499 tell y-websocket not to reconnect; transient ones (1011, 1013) let it reconnect and
resync, which loses nothing since Yjs resends what the server lacks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from pycrdt import (
    Awareness,
    Decoder,
    Doc,
    Encoder,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_update_message,
    write_message,
)
from starlette.websockets import WebSocket

from crdt.clock import CorruptStateVector
from crdt.document import CorruptUpdate
from server import store, workspaces
from server.connection import Connection
from server.pipeline import ITEM_OVERHEAD_BYTES, Inbound, Update
from server.errors import ErrorCode, TandemError
from server.node import Node
from server.protocol import awareness_bytes
from server.rooms import Room
from server.yws_rights import LiveRights

log = structlog.get_logger("tandem.yws")

# y-protocols message types pycrdt has no enum for (y-websocket: messageAuth, messageQueryAwareness).
AUTH = 2
QUERY_AWARENESS = 3
PERMISSION_DENIED = 0  # y-protocols/auth
EMPTY_UPDATE = b"\x00\x00"  # Yjs's update with no structs and no deletions

# Limits of this endpoint (the others are the main protocol's, from Settings).
MAX_AWARENESS_ENTRIES = 4096  # client states in one awareness message (it may relay a whole room's)
MAX_AWARENESS_CLIENTS = 32  # awareness client ids one connection may own (introduce or renew)
_MAX_VARUINT_BYTES = 8  # lib0 refuses integers beyond 53 bits; 8 bytes hold 56
AWARENESS_RENEW_S = 15.0  # y-protocols drops remote states older than 30 s; its clients renew at 15

CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_MESSAGE: 4400,
    ErrorCode.UNSUPPORTED_FRAME: 4400,
    ErrorCode.LIMIT_EXCEEDED: 4400,
    ErrorCode.UNAUTHORIZED: 4401,
    ErrorCode.FORBIDDEN: 4403,
    ErrorCode.NOT_MEMBER: 4403,  # removed from the workspace while connected
    ErrorCode.WORKSPACE_FULL: 4403,
    ErrorCode.NOT_FOUND: 4404,
    ErrorCode.FRAME_TOO_LARGE: 4413,
    ErrorCode.AWARENESS_TOO_LARGE: 4413,
    ErrorCode.INVALID_UPDATE: 4422,
    ErrorCode.UPDATE_TOO_COSTLY: 4422,
    ErrorCode.TOKEN_EXPIRED: 4440,
    ErrorCode.INTERNAL_ERROR: 1011,
    ErrorCode.SERVER_SHUTDOWN: 1012,  # "service restart": y-websocket reconnects and resyncs
    ErrorCode.SLOW_CONSUMER: 1013,  # "try again later": y-websocket reconnects and resyncs
    ErrorCode.UNAVAILABLE: 1013,  # the database was away: the resync resends the update
    ErrorCode.INVALID_UTF8: 1007,  # RFC 6455 8.1 (a text frame, which /yjs does not use anyway)
}


# --- the wire (pure): bytes in, typed messages or a refusal out -------------------------------


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """Sync step 2 or update: both carry one Yjs v1 update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    payload: bytes  # the awareness update inside the message (checked: it decodes)


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


@dataclass(frozen=True, slots=True)
class AuthMessage:
    pass


@dataclass(frozen=True, slots=True)
class Refused:
    code: ErrorCode
    detail: str = ""

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]


Message = SyncStep1 | SyncUpdate | AwarenessUpdate | QueryAwareness | AuthMessage


class _TooManyClients(ValueError):
    pass


class _StateTooLarge(ValueError):
    pass


class _Decoder(Decoder):
    """pycrdt's decoder with lib0's bound on integers: a long run of continuation bytes is refused
    instead of growing one Python integer (quadratic time)."""

    def read_var_uint(self) -> int:
        end = min(self.i0 + _MAX_VARUINT_BYTES, len(self.stream))
        if not any(b < 0x80 for b in self.stream[self.i0 : end]):
            raise ValueError("integer too long or truncated")
        return super().read_var_uint()

    def read_payload(self) -> bytes:
        """One varUint8Array (length-prefixed bytes) that must be all that is left."""
        payload = self.read_message()
        if payload is None or self.length != 0:
            raise ValueError("truncated message or trailing bytes")
        return payload


def parse(frame: bytes | str | None, max_frame_bytes: int, max_awareness_bytes: int) -> Message | Refused:
    """One client frame: a message, or why it is refused. Never raises for client input."""
    if not isinstance(frame, bytes):
        return Refused(ErrorCode.UNSUPPORTED_FRAME, "y-websocket messages are binary frames")
    if len(frame) > max_frame_bytes:
        return Refused(ErrorCode.FRAME_TOO_LARGE, f"{len(frame)} bytes > {max_frame_bytes}")
    try:
        kind, rest = frame[0], frame[1:]
        if kind == YMessageType.SYNC:
            step, payload = rest[0], _Decoder(rest[1:]).read_payload()
            if step == YSyncMessageType.SYNC_STEP1:
                return SyncStep1(payload)
            if step in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
                return SyncUpdate(payload)
            raise ValueError(f"unknown sync message type {step}")
        if kind == YMessageType.AWARENESS:
            payload = _Decoder(rest).read_payload()
            _check_awareness(payload, max_awareness_bytes)
            return AwarenessUpdate(payload)
        if kind == QUERY_AWARENESS and len(rest) == 0:
            return QueryAwareness()
        if kind == AUTH:
            return AuthMessage()  # y-protocols defines none for clients to send; ignored
    except _TooManyClients as exc:
        return Refused(ErrorCode.LIMIT_EXCEEDED, str(exc))
    except _StateTooLarge as exc:
        return Refused(ErrorCode.AWARENESS_TOO_LARGE, str(exc))
    except (ValueError, IndexError, RuntimeError) as exc:  # RecursionError: deeply nested JSON
        return Refused(ErrorCode.INVALID_MESSAGE, str(exc)[:80])
    return Refused(ErrorCode.INVALID_MESSAGE, f"unknown message type {frame[0]}")


def _check_awareness(payload: bytes, max_awareness_bytes: int) -> None:
    """Check an awareness update decodes (count, then client id, clock and JSON state per
    client) with bounded integers, and that each state is within `max_awareness_bytes` as compact
    JSON (as `awareness.set` measures it), before pycrdt's `Awareness` (unbounded) reads it."""
    decoder = _Decoder(payload)
    count = decoder.read_var_uint()
    if count > MAX_AWARENESS_ENTRIES:
        raise _TooManyClients(f"awareness update for {count} clients")
    for _ in range(count):
        decoder.read_var_uint()  # client id
        decoder.read_var_uint()  # clock
        text = decoder.read_var_string()
        state = json.loads(text) if text else None
        if state is not None and not isinstance(state, dict):
            raise ValueError("an awareness state is a JSON object or null")
        if (size := awareness_bytes(state)) > max_awareness_bytes:
            raise _StateTooLarge(f"an awareness state of {size} bytes > {max_awareness_bytes}")
    if decoder.length != 0:
        raise ValueError("trailing bytes after the awareness update")


def sync_step1_message(state_vector: bytes) -> bytes:
    """Sync step 1: the server's state vector; the client answers with what the server lacks."""
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1]) + write_message(state_vector)


def sync_step2_message(update: bytes) -> bytes:
    """Sync step 2: the answer to the client's step 1, everything it lacks as one update."""
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2]) + write_message(update)


def permission_denied_message(reason: str) -> bytes:
    """y-protocols/auth permission denied: y-websocket logs the reason and stays connected."""
    encoder = Encoder()
    encoder.write_var_uint(AUTH)
    encoder.write_var_uint(PERMISSION_DENIED)
    encoder.write_var_string(reason)  # ASCII only: pycrdt writes the length in characters
    return encoder.to_bytes()


_last_update: tuple[bytes, bytes] = (b"", b"")


def update_message(update: bytes) -> bytes:
    """The sync update message for an operation, built once for all of a room's subscribers
    (the room hands each of them the same `update` object in turn)."""
    global _last_update
    if _last_update[0] is not update:
        _last_update = (update, create_update_message(update))
    return _last_update[1]


# --- awareness relay (this node) ---------------------------------------------------------------


class AwarenessRelay:
    """One document's y-websocket awareness on this node, kept in pycrdt's `Awareness`, as the
    y-websocket server does: what a client's message changes (newer clocks only) is sent to the
    other clients, newcomers get the current states, and the states a connection owns are
    removed for the others when it ends.

    y-websocket clients re-send every awareness change they receive, so a message may carry
    other clients' states: those are stale here and change nothing, which also ends the echo.
    A connection owns the client ids whose state it last made newer (a client that reconnects
    moves its id to the new connection)."""

    def __init__(self, max_awareness_bytes: int) -> None:
        self.max_awareness_bytes = max_awareness_bytes  # parse() refuses larger states
        self.awareness = Awareness(Doc())
        self.awareness.set_local_state(None)  # the relay itself has no state
        # Sessions seen through presence (agents, editors of other nodes): one awareness client
        # each, with a client id derived from its conn_id; `bridged` is the state last shown.
        self.peers: dict[str, Awareness] = {}
        self.bridged: dict[str, dict[str, Any]] = {}
        self.members: dict[str, YjsConnection] = {}
        self.owner: dict[int, str] = {}  # client id -> conn_id
        self.owned: dict[str, set[int]] = {}  # conn_id -> client ids
        self._changed: dict[str, list[int]] | None = None
        self.awareness.observe(self._on_event)

    def _on_event(self, topic: str, event: tuple[dict[str, list[int]], Any]) -> None:
        if topic == "update":
            self._changed = event[0]

    def join(self, conn: YjsConnection) -> None:
        self.members[conn.conn_id] = conn
        self.owned[conn.conn_id] = set()
        current = self.snapshot()
        if current is not None:
            conn.send_bytes(current)

    def snapshot(self) -> bytes | None:
        ids = list(self.awareness.states)
        return create_awareness_message(self.awareness.encode_awareness_update(ids)) if ids else None

    def apply(self, conn: YjsConnection, message: AwarenessUpdate) -> Refused | None:
        self._changed = None
        self.awareness.apply_awareness_update(message.payload, conn.conn_id)
        changed, self._changed = self._changed, None
        if changed is None:
            return None  # nothing newer: a relayed echo
        for client_id in changed["added"] + changed["updated"]:
            previous = self.owner.get(client_id)
            if previous is not None and previous != conn.conn_id:
                self.owned[previous].discard(client_id)
            self.owner[client_id] = conn.conn_id
            self.owned[conn.conn_id].add(client_id)
        removed_own = False
        for client_id in changed["removed"]:
            previous = self.owner.pop(client_id, None)
            if previous is not None:
                self.owned[previous].discard(client_id)
                removed_own = removed_own or previous == conn.conn_id
        if len(self.owned[conn.conn_id]) > MAX_AWARENESS_CLIENTS:
            return Refused(ErrorCode.LIMIT_EXCEEDED, "too many awareness clients")
        self._send_others(conn, changed["added"] + changed["updated"] + changed["removed"])
        mine = [i for i in changed["added"] + changed["updated"] if self.owner.get(i) == conn.conn_id]
        if mine:
            conn.publish_awareness(self.awareness.states.get(mine[-1]))
        elif removed_own and not self.owned[conn.conn_id]:
            conn.publish_awareness(None)
        return None

    def bridge(self, source: str, agent_id: str, state: dict[str, Any] | None) -> None:
        """Another session's awareness about this document, from presence: shown to this node's
        editors as one more awareness client (named after the agent unless the state names a
        user, or the name would take it over `max_awareness_bytes`: the editors echo the state back,
        and a larger one would be refused). Every editor connection of the document hears the
        same presence event: only a change is sent on."""
        if source in self.members:
            return  # an editor of this relay: its awareness is relayed natively
        shown = None
        if state is not None:
            shown = {"user": {"name": agent_id}, **state}
            shown = shown if awareness_bytes(shown) <= self.max_awareness_bytes else state
        if self.bridged.get(source) == shown:
            return
        peer = self.peers.get(source)
        if peer is None:
            if shown is None:
                return
            peer = self.peers[source] = Awareness(Doc(client_id=bridge_client_id(source)))
        peer.set_local_state(shown)
        if shown is None:
            del self.peers[source]
            self.bridged.pop(source, None)
        else:
            self.bridged[source] = shown
        self._send_peer(peer)

    def renew_peers(self) -> None:
        """Yjs clients drop a remote state not renewed for 30 s: renew the bridged ones (their
        sessions are alive as long as presence lists them)."""
        for source, peer in self.peers.items():
            peer.set_local_state(self.bridged[source])
            self._send_peer(peer)

    def _send_peer(self, peer: Awareness) -> None:
        update = peer.encode_awareness_update([peer.client_id])
        self.awareness.apply_awareness_update(update, "bridge")
        message = create_awareness_message(update)
        for member in list(self.members.values()):
            member.send_bytes(message)

    def leave(self, conn: YjsConnection) -> None:
        self.members.pop(conn.conn_id, None)
        ids = list(self.owned.pop(conn.conn_id, ()))
        for client_id in ids:
            del self.owner[client_id]
        ids = [i for i in ids if i in self.awareness.states]
        if ids:
            self.awareness.remove_awareness_states(ids, conn.conn_id)
            self._send_others(conn, ids)

    def _send_others(self, conn: YjsConnection, client_ids: list[int]) -> None:
        message = create_awareness_message(self.awareness.encode_awareness_update(client_ids))
        for other in list(self.members.values()):
            if other is not conn:
                other.send_bytes(message)


class AwarenessRelays:
    """Relays by document id; one appears with a document's first y-websocket client and goes
    with its last, so memory follows the connections. One task renews every relay's bridged
    states while any relay exists."""

    def __init__(self, max_awareness_bytes: int, renew_s: float = AWARENESS_RENEW_S) -> None:
        self.max_awareness_bytes = max_awareness_bytes
        self.relays: dict[uuid.UUID, AwarenessRelay] = {}
        self.renew_s = renew_s
        self._renewer: asyncio.Task[None] | None = None

    def join(self, doc_id: uuid.UUID, conn: YjsConnection) -> AwarenessRelay:
        relay = self.relays.setdefault(doc_id, AwarenessRelay(self.max_awareness_bytes))
        relay.join(conn)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew())
        return relay

    def leave(self, doc_id: uuid.UUID, conn: YjsConnection) -> None:
        relay = self.relays.get(doc_id)
        if relay is not None:
            relay.leave(conn)
            if not relay.members:
                del self.relays[doc_id]
        if not self.relays and self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def _renew(self) -> None:
        while self.relays:
            await asyncio.sleep(self.renew_s)
            for relay in list(self.relays.values()):
                relay.renew_peers()


def bridge_client_id(conn_id: str) -> int:
    """A stable Yjs client id (31 bits, as Yjs makes them) for a session seen through presence."""
    return uuid.UUID(conn_id).int % (1 << 31)


# --- the connection (I/O) -------------------------------------------------------------------------




@dataclass(slots=True, eq=False)
class Received(Inbound):
    """A message other than an update, handled in order with the updates."""

    message: SyncStep1 | AwarenessUpdate | QueryAwareness


class YjsConnection(Connection[bytes], LiveRights):
    """One y-websocket client of one document: the y-protocols codec and handlers over the shared
    lifecycle (server/connection.py). `send_update` is the room's way in. Every message is
    handled in order through the pipeline, paced by the rate limit (y-protocols has no error to
    refuse with); reading goes on meanwhile up to `max_received_bytes`. Its right to write
    follows its membership (server/yws_rights.py)."""

    kind = "yws"
    paced = True
    presence_batch = False  # presence events one by one: `send_text` bridges awareness from them

    def __init__(self, ws: WebSocket, node: Node, relays: AwarenessRelays, workspace_id: str, doc_id: str) -> None:
        super().__init__(ws, node)
        self.relays = relays
        self.path = (workspace_id, doc_id)
        self.room: Room | None = None
        self.relay: AwarenessRelay | None = None
        self.can_write = False
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
        """No frames (the endpoint speaks only y-protocols): the close code and the error code."""
        return [], CLOSE_CODES[code], code.value

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
        if isinstance(parsed, Refused):
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

    # --- update outcomes (the pipeline: server/connection.py) ------------------------------

    def may_write(self, item: Update) -> bool:
        return self.can_write

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
    state = ws.app.state
    relays = getattr(state, "yws_relays", None)
    if relays is None:
        relays = state.yws_relays = AwarenessRelays(state.tandem.node.settings.max_awareness_bytes)
    await YjsConnection(ws, state.tandem.node, relays, ws.path_params["workspace_id"], ws.path_params["doc_id"]).run()
