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
Imports uvicorn and websockets; nothing of Tandem's but its settings.
"""

from __future__ import annotations

import websockets.http11
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.core.settings import Settings

HANDSHAKE_HEADROOM_BYTES = 8192  # the rest of a handshake line: path, other parameters, header name
INVALID_UTF8 = "tandem.invalid_utf8"  # key of the `websocket.receive` event of such a frame
ABORT_AFTER_S = 2.0  # after the application ended: for what is still buffered (the close frame)


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
    return {"ws": WebSocketTransport, "h11_max_incomplete_event_size": 2 * line_bytes}


class WebSocketTransport(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol, except for a text frame that is not UTF-8 and
    a transport the peer does not empty after the end."""

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
