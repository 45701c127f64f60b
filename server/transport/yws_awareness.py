"""Awareness (cursors, user names) of the `/yjs` endpoint on this node (docs/protocol.md#113):
shared between the y-websocket clients of one document by `AwarenessRelay`, and bridged to
agent presence both ways. Nothing of it is stored."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from pycrdt import (
    Awareness,
    Doc,
    create_awareness_message,
)

from server.core.errors import ErrorCode
from server.wire.protocol import awareness_bytes
from server.wire.y_protocols import AwarenessUpdate, FrameRefused

if TYPE_CHECKING:
    from server.transport.yws import YjsConnection

MAX_AWARENESS_CLIENTS = 32  # awareness client ids one connection may own (introduce or renew)
AWARENESS_RENEW_S = 15.0  # y-protocols drops remote states older than 30 s; its clients renew at 15


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

    def apply(self, conn: YjsConnection, message: AwarenessUpdate) -> FrameRefused | None:
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
            return FrameRefused(ErrorCode.LIMIT_EXCEEDED, "too many awareness clients")
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
