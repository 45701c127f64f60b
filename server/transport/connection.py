"""One client connection, whatever its wire: the lifecycle both WebSocket endpoints share.

`Connection.run` accepts, authenticates, starts the endpoint (`start`), then reads frames
eagerly and hands them to the endpoint (`on_frame`), which queues updates (and on /yjs every
message) in the connection's update pipeline (server/transport/pipeline.py). Outgoing frames go through
one `Mailbox`, bounded in frames (`send_queue_len`) and bytes (`max_send_queue_bytes`), drained by
one sender task. A connection that writes through (`write_through`: one message per frame, so
nothing is gained by joining queued frames) writes a frame in the caller's step instead, when
nothing is queued or being written and the transport is not paused (SEND_NOW in
server/transport/websocket.py). A client that lets the outbox fill is a slow consumer: what is
queued for it is dropped at once and nothing more is queued, so a peer that never reads holds no
frames while it is closed (server/transport/websocket.py bounds what its socket keeps afterwards).

A received update is never dropped (docs/protocol.md#44): when the connection ends for any
reason (the client closed or vanished, a limit, token expiry, a server fault, shutdown), reading
and sending stop but the pipeline goes on until every update already read is committed or
refused for a stated reason; only then is the closing sequence sent (if the server started the
close) and the connection cleaned up. What a connection has read and not yet settled is bounded
in bytes (`max_received_bytes`): reading pauses beyond it, never before.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

import structlog
from starlette.websockets import WebSocket

from server.core import auth
from server.core.errors import ErrorCode
from server.transport.mailbox import Mailbox
from server.transport.node import Node
from server.transport.pipeline import UpdatePipeline
from server.transport.websocket import INVALID_UTF8, SEND_NOW

log = structlog.get_logger("tandem.connection")

FLUSH_TIMEOUT_S = 2.0  # before the closing sequence: time for queued frames (acks) to go out
CLOSE_TIMEOUT_S = 2.0  # the closing sequence is best effort
Frame = TypeVar("Frame", str, bytes)


class Connection(UpdatePipeline, Generic[Frame]):
    """The shared lifecycle. Subclasses implement the wire: `start`, `on_frame`, `next_payload`,
    `closing_frames`, `cleanup`, and the pipeline's hooks (the update outcomes, `handle`)."""

    kind = "connection"  # the log's event prefix: "session" (agents), "yws" (editors)
    write_through = False  # frames are written in the caller's step when nothing waits before them

    def __init__(self, ws: WebSocket, node: Node) -> None:
        self.ws = ws
        self.node = node
        s = node.settings
        self.conn_id = str(uuid.uuid4())
        self.principal: auth.Principal | None = None
        self.outbox: Mailbox[Frame] = Mailbox(s.send_queue_len, s.max_send_queue_bytes, len)  # for `_sender`
        self._send_now: Callable[[Frame], bool] | None = None  # the transport's SEND_NOW, if it has one
        self._writing = False  # the sender took a payload and has not written it yet
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log = log.bind(conn_id=self.conn_id)
        self.reading = True  # frames are still read and handled
        self.transport_open = True  # frames can still be sent
        self.sending = True  # frames are still queued (False: a slow consumer, its frames dropped)
        self.ending: tuple[ErrorCode, Any] | None = None  # why the server closes (after the drain)
        self.shutting_down = False  # the node is stopping: the drain is not paced
        self._reader: asyncio.Task[None] | None = None
        self._parked = False  # the reader waits at a point where cancelling it loses nothing
        self.finished = asyncio.Event()
        self._init_pipeline()

    # --- the endpoint's part -------------------------------------------------------------------

    async def start(self) -> bool:
        """After authentication: the endpoint's opening (False: it refused and closed)."""
        raise NotImplementedError

    async def on_frame(self, frame: str | bytes) -> None:
        """One frame read from the socket."""
        raise NotImplementedError

    def next_payload(self, queued: list[Frame]) -> Frame:
        """What the sender writes next: take it from `self.outbox` (one frame or several joined)."""
        return self.outbox.take(1)[0]

    def closing_frames(self, code: ErrorCode, detail: Any) -> tuple[list[Frame], int, str] | None:
        """The frames, close code and reason that end the connection for `code` (None: none)."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Leave rooms, relays, events (after the drain)."""

    # --- sending -------------------------------------------------------------------------------

    def queue(self, frame: Frame) -> None:
        """Send a frame without waiting: written at once if the connection writes through and
        nothing waits before it, queued otherwise. A full queue ends the connection
        (slow_consumer) and drops what it holds, unless the connection is ending anyway: then the
        frame is dropped (what is queued still goes out before the closing sequence)."""
        if not (self.transport_open and self.sending):
            return
        send_now = self._send_now
        if send_now is not None and not self.outbox.items and not self._writing:
            try:
                if send_now(frame):
                    return
            except Exception:  # as in `_sender`: the transport failed; the reader sees the end
                self.transport_open = False
                return
        try:
            self.outbox.put(frame)
        except asyncio.QueueFull:
            if self.ending is None and self.reading:
                self.node.metrics.slow_consumers.inc()
                self.sending = False
                self.outbox.take()
                self.end(ErrorCode.SLOW_CONSUMER)

    async def _sender(self) -> None:
        outbox = self.outbox
        try:
            while True:
                payload = self.next_payload(await outbox.wait())
                self._writing = True
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_text(payload)
                self._writing = False
        except Exception:  # the peer is gone: nothing more can be sent; the reader sees the end
            self.transport_open = False

    async def _flush(self, timeout_s: float) -> None:
        """Wait (bounded) until the sender wrote what is queued."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) and self.transport_open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # --- ending --------------------------------------------------------------------------------

    def end(self, code: ErrorCode, detail: Any = None) -> None:
        """The server closes this connection for `code`: reading stops now; updates already read
        are still settled, then the closing sequence is sent. The first reason stands."""
        if self.ending is not None:
            return
        self.ending = (code, detail)
        self.stop_reading()

    def shutdown(self) -> None:
        """The node is stopping: end with `server_shutdown` and drain without pacing."""
        self.shutting_down = True
        self.end(ErrorCode.SERVER_SHUTDOWN)

    def stop_reading(self) -> None:
        self.reading = False
        if self._parked and self._reader is not None:
            self._reader.cancel()

    async def _send_closing(self) -> None:
        assert self.ending is not None
        code, detail = self.ending
        closing = self.closing_frames(code, detail)
        if closing is None:
            return
        frames, close_code, reason = closing
        self.log.info(f"{self.kind}.closing", reason=code.value, code=close_code, detail=_text(detail))
        self.node.metrics.errors.labels(code.value).inc()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                for frame in frames:
                    if isinstance(frame, bytes):
                        await self.ws.send_bytes(frame)
                    else:
                        await self.ws.send_text(frame)
                await self.ws.close(close_code, reason)
        except Exception:  # the peer may be gone already; the close code is best effort too
            pass
        self.transport_open = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.finished.set()

    async def _run(self) -> None:
        await self.ws.accept()
        verdict = self.node.authenticate(self.ws.query_params, self.ws.headers)
        if isinstance(verdict, auth.Refusal):
            # The class of the problem, never the token: the closing sequence names it too.
            self.log.info("auth.refused", code=verdict.code.value, reason=verdict.reason.value)
            self.ending = (verdict.code, verdict)
            await self._send_closing()
            return
        self.principal = verdict
        if self.write_through:
            self._send_now = self.ws.scope.get("extensions", {}).get(SEND_NOW)
        self.log = self.log.bind(tenant_id=str(verdict.tenant_id), agent_id=verdict.agent_id)
        if not await self.start():
            return
        node = self.node
        node.connections.add(self)
        node.metrics.sessions.inc()
        if node.revocations.revoked(verdict):  # revoked after the check above, before this set held it
            self.end(ErrorCode.TOKEN_REVOKED)
        sender = asyncio.create_task(self._sender())
        pipeline = asyncio.create_task(self._pipeline())
        ttl_s = (verdict.expires_at - datetime.now(timezone.utc)).total_seconds() + node.settings.jwt_leeway_s
        expiry = asyncio.get_running_loop().call_later(max(ttl_s, 0), self.end, ErrorCode.TOKEN_EXPIRED)
        self.log.info(f"{self.kind}.started")
        try:
            self._reader = asyncio.create_task(self._read_loop())
            await asyncio.wait([self._reader])
            if not self._reader.cancelled() and self._reader.exception() is not None:
                self.log.error(f"{self.kind}.crashed", exc_info=self._reader.exception())
                self.end(ErrorCode.INTERNAL_ERROR)
            self.reading = False
            expiry.cancel()
            await self._drain()
            if self.ending is not None and self.transport_open:
                await self._flush(FLUSH_TIMEOUT_S)  # nothing to wait for after slow_consumer
                await self._send_closing()
        finally:
            expiry.cancel()
            if self._reader is not None:
                # A finished task keeps its exception, whose traceback holds the reader's frame
                # and so this connection: drop it, or only the cyclic GC would free the connection.
                self._reader.cancel()
                self._reader = None
            self.transport_open = False
            sender.cancel()
            pipeline.cancel()
            for task in list(self.tasks):
                task.cancel()
            abandoned = self.unsettled
            try:
                await self.cleanup()
            finally:
                node.connections.discard(self)
                node.metrics.sessions.dec()
                outcomes = dict(self.after_close)
                if abandoned:
                    outcomes["abandoned"] = abandoned
                self.log.info(
                    f"{self.kind}.ended", updates=self.updates_received, **({"after_close": outcomes} if outcomes else {})
                )
                # Last: no await ran since the sender stopped, so no presence event was queued in vain.
                await node.presence.disconnect(self.conn_id)

    async def _read_loop(self) -> None:
        """Read eagerly: frames are taken off the socket as they come, and handled or queued; only
        past `max_received_bytes` of unsettled items does reading pause."""
        ws = self.ws
        while self.reading:
            self._parked = True
            try:
                await self.below_bound()
                if not self.reading:
                    return
                message = await ws.receive()
            finally:
                self._parked = False
            if message["type"] == "websocket.disconnect":
                self.transport_open = False
                return
            if message.get(INVALID_UTF8):  # RFC 6455 8.1: fails the connection (server/transport/websocket.py)
                self.end(ErrorCode.INVALID_UTF8)
                return
            frame = message.get("text")
            await self.on_frame(frame if frame is not None else message.get("bytes") or b"")

    async def _drain(self) -> None:
        if self.unsettled:
            self.log.info(f"{self.kind}.draining", unsettled=self.unsettled)
        await self.drained()


def _text(detail: Any) -> str | None:
    return None if detail is None else str(detail)[:200]


async def close_all(node: Node, timeout_s: float) -> None:
    """Shutdown: every connection stops reading, settles what it read, then closes with
    `server_shutdown`; within `timeout_s`, after which the rest are left to the server."""
    connections = list(node.connections)
    if not connections:
        return
    log.info("connections.closing", connections=len(connections), timeout_s=timeout_s)
    for conn in connections:
        conn.shutdown()
    _, pending = await asyncio.wait([asyncio.create_task(c.finished.wait()) for c in connections], timeout=timeout_s)
    for task in pending:
        task.cancel()
    totals: Counter[str] = Counter()
    for conn in connections:
        totals.update(conn.after_close)
    unsettled = sum(c.unsettled for c in connections if not c.finished.is_set())
    log.info(
        "connections.closed", connections=len(connections), still_open=len(pending), updates=dict(totals),
        unsettled=unsettled,
    )
