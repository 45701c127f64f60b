"""The WebSocket transport under both endpoints: uvicorn's websockets protocol with Tandem's
limit on the opening handshake and its answer to a text frame that is not UTF-8.

- Handshake: websockets refuses a request line or a header line longer than its line limit
  with HTTP 414 or 431, before any WebSocket exists. The limit is `max_token_bytes` plus
  `HANDSHAKE_HEADROOM_BYTES`, so a token up to well past `max_token_bytes` (in the query or in
  `Authorization`) reaches authentication and is refused as `unauthorized`, 4401
  (docs/protocol.md#22); only a longer line is an HTTP refusal (docs/protocol.md#7).
- Invalid UTF-8: RFC 6455 section 8.1 fails the connection. uvicorn would log a traceback at
  ERROR and close with 1007 without telling the application; here the application receives a
  `websocket.receive` event marked `INVALID_UTF8` and ends the connection with the typed
  `invalid_utf8` (1007), logged in one line like any other closing.
- The end: once the application is done with a connection, or when the peer did not answer a
  keepalive ping, uvicorn closes the transport gracefully (`transport.close()`), which waits for
  the write buffer to go out: forever, for a peer that never reads, keeping the buffer and the
  socket as long as the peer keeps its TCP connection (and, after a keepalive timeout, the
  application waiting for a disconnect that never comes). Here the transport gets
  `ABORT_AFTER_S` more, then is aborted.
- permessage-deflate (`ws_compression`, when a client offers it): a whole message shorter than
  `ws_compression_min_bytes` goes out uncompressed (RSV1 clear, which RFC 7692 section 6
  allows for any message). Compressing a typical update of a few dozen bytes saves a few bytes
  and, once per receiving peer, costs more CPU than the rest of delivering it; the large ones
  (a sync reply, a document) are compressed as before.
- Writing at once (`SEND_NOW`, an ASGI scope extension): a callable that writes one message to
  the transport in the caller's own step, if it can go out now (the handshake is done, no close
  was sent, the transport is not paused), and returns whether it did. A connection whose
  outbox is empty writes each frame of a fan-out this way instead of waking its sender task for
  it; a paused transport (a peer not reading) still takes the bounded outbox.
Imports uvicorn and websockets; nothing of Tandem's but its settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import websockets.http11
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.exceptions import InvalidState
from websockets.frames import CONT, CTRL_OPCODES, Frame
from websockets.typing import ExtensionParameter

from server.core.settings import Settings

HANDSHAKE_HEADROOM_BYTES = 8192  # the rest of a handshake line: path, other parameters, header name
INVALID_UTF8 = "tandem.invalid_utf8"  # key of the `websocket.receive` event of such a frame
ABORT_AFTER_S = 2.0  # after the application ended: for what is still buffered (the close frame)
SEND_NOW = "tandem.send_now"  # scope["extensions"] key: Callable[[bytes | str], bool]


def handshake_line_bytes(settings: Settings) -> int:
    """The longest request line or header line the handshake accepts."""
    return settings.max_token_bytes + HANDSHAKE_HEADROOM_BYTES


def configure(settings: Settings) -> dict[str, object]:
    """Set this process's handshake limit and return the uvicorn `Config` arguments of the
    WebSocket transport. websockets keeps its handshake limits in module variables (read from
    WEBSOCKETS_MAX_LINE_LENGTH when it is imported); they are set here, whatever the import
    order. h11 (uvicorn's HTTP parser when httptools is absent) bounds the whole request head."""
    line_bytes = handshake_line_bytes(settings)
    websockets.http11.MAX_LINE_LENGTH = line_bytes
    transport = type("WebSocketTransport", (WebSocketTransport,), {"deflate_min_bytes": settings.ws_compression_min_bytes})
    return {"ws": transport, "h11_max_incomplete_event_size": 2 * line_bytes}


class ThresholdDeflate(PerMessageDeflate):
    """permessage-deflate that sends a whole message shorter than `min_bytes` as it is. The
    compressor's window holds only what was compressed, so skipping a message leaves the
    context of the next compressed one intact on both sides."""

    def __init__(self, negotiated: PerMessageDeflate, min_bytes: int) -> None:
        super().__init__(
            negotiated.remote_no_context_takeover, negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits, negotiated.local_max_window_bits, negotiated.compress_settings,
        )  # fmt: skip
        self.min_bytes = min_bytes

    def encode(self, frame: Frame) -> Frame:
        if frame.fin and frame.opcode not in CTRL_OPCODES and frame.opcode is not CONT and len(frame.data) < self.min_bytes:
            return frame  # RSV1 stays clear: the peer reads it uncompressed
        return super().encode(frame)


class ThresholdDeflateFactory(ServerPerMessageDeflateFactory):
    """uvicorn's permessage-deflate parameters (12-bit windows, memLevel 5), negotiating a
    `ThresholdDeflate`."""

    def __init__(self, min_bytes: int) -> None:
        super().__init__(server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})
        self.min_bytes = min_bytes

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, ThresholdDeflate(negotiated, self.min_bytes)


class WebSocketTransport(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, except for a text frame that is not UTF-8 and
    a transport the peer does not empty after the end, and permessage-deflate only for a
    message of at least `deflate_min_bytes` (set by `configure`)."""

    deflate_min_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.conn.available_extensions:  # uvicorn's permessage-deflate, as ws_per_message_deflate asked
            self.conn.available_extensions = [ThresholdDeflateFactory(self.deflate_min_bytes)]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][SEND_NOW] = self.send_now

    def send_now(self, data: bytes | str) -> bool:
        """Write one message now if it can go out without waiting (True), as the ASGI
        `websocket.send` would; False leaves it to the caller's queue."""
        if not self.writable.is_set() or self.disconnected or self.close_sent or self.initial_response is not None:
            return False
        try:
            if isinstance(data, bytes):
                self.conn.send_binary(data)
            else:
                self.conn.send_text(data.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._abort_later()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_later()

    def _abort_later(self) -> None:
        if not self.disconnected:
            self.loop.call_later(ABORT_AFTER_S, self._abort)

    def _abort(self) -> None:
        if not self.disconnected:
            self.transport.abort()  # connection_lost: the application gets its disconnect

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()  # decoded again by the base class: under a microsecond per KiB
            except UnicodeDecodeError:
                self.frames = []
                # The connection ends, so reading need not pause for this one event.
                self.queue.put_nowait({"type": "websocket.receive", "text": None, "bytes": None, INVALID_UTF8: True})
                return
        super().send_receive_event_to_app()
