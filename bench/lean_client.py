"""A lean WebSocket client for the benchmarks: `LeanSocket` drives websockets' sans-I/O
`ClientProtocol` from an `asyncio.Protocol`, so an incoming frame costs one parse and one
callback, not a task switch (the client shares the machine's cores with the server it
measures); `Agent` sends requests and matches their replies over it. Every wait has a deadline.
Imports nothing from tests/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class LeanSocket(asyncio.Protocol):
    """One client WebSocket. Each incoming text message is passed, decoded, to `on_text`,
    synchronously from `data_received`; `send_text` writes at once (no send queue: callers bound
    what they have in flight). Close frames are recorded in `close_code` / `close_reason`."""

    def __init__(self, url: str, headers: Mapping[str, str], on_text: Callable[[str], None]) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.request = self.protocol.connect()
        for name, value in headers.items():
            self.request.headers[name] = value
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._fragments: list[bytes] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._flush()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    if event.fin:
                        self.on_text(event.data.decode())
                    else:
                        self._fragments = [event.data]
                elif event.opcode is Opcode.CONT:
                    self._fragments.append(event.data)
                    if event.fin:
                        text, self._fragments = b"".join(self._fragments).decode(), []
                        self.on_text(text)
                elif event.opcode is Opcode.CLOSE:
                    self.close_code = self.protocol.close_code
                    self.close_reason = self.protocol.close_reason
            elif isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        if self.protocol.close_expected() and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # sending

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def send_text(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.protocol.send_text(text.encode())
        self._flush()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close handshake, bounded; the transport is aborted after `timeout_s`."""
        if self.transport is None or self.closed.done():
            return
        try:
            self.protocol.send_close(1000)
            self._flush()
        except Exception:  # already closing
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        except TimeoutError:
            self.transport.abort()


async def open_socket(url: str, token: str, on_text: Callable[[str], None], timeout_s: float = 30.0) -> LeanSocket:
    """Connect and finish the WebSocket handshake (the token goes in the Authorization header)."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    sock = LeanSocket(url, {"Authorization": f"Bearer {token}"}, on_text)
    async with asyncio.timeout(timeout_s):
        await loop.create_connection(lambda: sock, parts.hostname, parts.port)
        await sock.opened
    return sock


class ReplyError(Exception):
    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code = frame.get("code")


def messages(text: str) -> list[dict[str, Any]]:
    """The messages of one server frame: one JSON object, or an array of them when the client
    asked for batched frames (docs/protocol.md section 3)."""
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


class Agent:
    """Request/reply over a `LeanSocket` for setup steps (join, create, open); load loops swap
    `sock.on_text` for a handler of their own once set up."""

    def __init__(self) -> None:
        self.sock: LeanSocket | None = None
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []  # unsolicited frames seen during setup (bounded)

    @classmethod
    async def connect(cls, url: str, token: str, timeout_s: float = 30.0, batch: bool = False) -> Agent:
        """`batch`: ask for batched frames in a `hello` (docs/protocol.md section 3), as the SDK
        does; the frames handed to `sock.on_text` may then hold a JSON array of messages."""
        agent = cls()
        agent.sock = await open_socket(url, token, agent.on_text, timeout_s)
        async with asyncio.timeout(timeout_s):
            await agent.hello
        if batch:
            await agent.request("hello", timeout_s, protocol=1, batch=True)
        return agent

    def on_text(self, text: str) -> None:
        for frame in messages(text):
            self.on_frame(frame)

    def on_frame(self, frame: dict[str, Any]) -> None:
        re = frame.get("re")
        if re is not None and re in self._pending:
            self._pending.pop(re).set_result(frame)
        elif frame.get("type") == "hello" and not self.hello.done():
            self.hello.set_result(frame)
        elif len(self.events) < 1000:
            self.events.append(frame)

    async def request(self, type_: str, timeout_s: float = 60.0, **fields: Any) -> dict[str, Any]:
        assert self.sock is not None
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self.sock.send_text(json.dumps({"type": type_, "id": rid, **fields}))
        try:
            async with asyncio.timeout(timeout_s):
                frame = await future
        finally:
            self._pending.pop(rid, None)
        if frame["type"] == "error":
            raise ReplyError(frame)
        return frame

    async def close(self) -> None:
        if self.sock is not None:
            await self.sock.close()
