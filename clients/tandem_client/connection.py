"""One logical connection to Tandem across many WebSocket sessions: requests, replies, reconnects.

`Connection` owns the socket of the current session, matches replies to requests by `re`
(docs/protocol.md section 3), hands every other frame to `on_event`, and when the socket drops
reconnects with exponential backoff and jitter (tenacity), trying the next URL each time, then
awaits `restore` (rejoin workspaces, reopen documents) before user requests flow again.
Reply callbacks run in the reader, in arrival order: that is what lets documents apply
`doc.open.ok`, `doc.op` and `doc.update.ok` in exactly the order the server sent them (section 6.2).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import websockets
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tandem_client import wire
from tandem_client.errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    ReconnectFailed,
    TandemError,
    close_code_error,
    close_details,
    error_from_frame,
)
from tandem_client.options import Options
from tandem_client.pacing import TokenBucket

log = logging.getLogger("tandem_client")

TokenSource = str | Callable[[], str | Awaitable[str]]
ReplyCallback = Callable[[wire.Frame | ClientError], None]

# Sessions ended with these codes are not retried: the same token would be refused again.
PERMANENT_CLOSE_CODES = {"unauthorized", "unsupported_version"}
# Sessions ended with these are retried only with a token source, which may give a fresh token.
TOKEN_CLOSE_CODES = {"token_expired", "token_revoked"}


class Signal:
    """A pulse for "something changed": waiters re-check their condition on every `notify()`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout_s: float | None) -> None:
        """Return once `predicate()` is true; TimeoutError after `timeout_s` (None: no limit)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._event.wait()


class Connection:
    def __init__(
        self,
        urls: Sequence[str],
        token: TokenSource,
        options: Options,
        on_event: Callable[[wire.Frame], None],
        restore: Callable[[], Awaitable[None]],
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        self.urls = [normalize_url(u) for u in urls]
        self.options = options
        self.changed = Signal()  # connection and document state; see Client.wait_for
        self.hello: wire.Hello | None = None
        self.url: str | None = None
        self.gen = 0  # sessions opened so far; the current session's number
        self.ready = False  # a session is up and restored: user requests may go out
        self.alive = False  # the current session's socket is open (restoring or ready)
        self.failed: ClientError | None = None
        self.closing = False
        self._token = token
        self._on_event = on_event
        self._restore = restore
        self._cursor = 0  # the next URL to try
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._pending: dict[int, tuple[int, ReplyCallback]] = {}
        self._bucket: TokenBucket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._last_close: tuple[int | None, str | None] = (None, None)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the first session (retried like a reconnect); raises what made it impossible."""
        try:
            await self._connect(self.options.connect_timeout_s)
        except ClientError as exc:
            self.failed = exc
            raise
        self.ready = True
        self.changed.notify()
        self._supervisor = asyncio.create_task(self._supervise(), name="tandem-client-supervisor")

    async def close(self) -> None:
        self.closing = True
        self.ready = False
        if self._ws is not None:
            await self._ws.close()
        for task in (self._reader, self._supervisor):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._fail_pending(ClientClosed("the client is closed"))
        self.changed.notify()

    async def _supervise(self) -> None:
        """After each session ends: reconnect and restore, until closed or given up (ReconnectFailed)."""
        while not self.closing:  # one turn per dropped session; each turn is bounded by reconnect_timeout_s
            assert self._reader is not None
            await asyncio.gather(self._reader, return_exceptions=True)
            if self.closing:
                return
            self.ready = False
            self.changed.notify()
            code, reason = self._last_close
            log.info("tandem_client.disconnected", extra={"url": self.url, "close_code": code, "reason": reason})
            try:
                permanent = self._permanent_error(code, reason)
                if permanent is not None:
                    raise permanent
                await self._connect()
                await self._restore()
            except ConnectionLost:
                continue  # the new session dropped while restoring: go round again
            except TimeoutError:
                if self._ws is not None:  # a node that stopped answering: drop it and try the next
                    await self._ws.close()
                continue
            except ClientError as exc:
                self._give_up(exc)
                return
            except Exception as exc:  # a bug in restoring: fail loudly rather than hang not ready
                log.exception("tandem_client.restore_failed")
                self._give_up(ReconnectFailed(f"restoring the session failed: {exc!r}"))
                return
            self.ready = True
            self.changed.notify()

    def _give_up(self, exc: ClientError) -> None:
        self.failed = exc
        self._fail_pending(exc)
        self.changed.notify()

    def _permanent_error(self, code: int | None, reason: str | None) -> ClientError | None:
        cls = close_code_error(code, reason)
        if cls is None:
            return None
        if cls.code in PERMANENT_CLOSE_CODES or (cls.code in TOKEN_CLOSE_CODES and isinstance(self._token, str)):
            return cls(f"the server closed the session: {reason or cls.default_message}", close_details(reason))
        return None

    # --- connecting --------------------------------------------------------------------------

    async def _connect(self, timeout_s: float | None = None) -> None:
        """Open a session on the next URL, retrying transient failures with backoff and jitter
        for up to `timeout_s` (default `reconnect_timeout_s`)."""
        o = self.options
        timeout_s = o.reconnect_timeout_s if timeout_s is None else timeout_s
        retrying = AsyncRetrying(
            # wait_exponential_jitter renamed its arguments across tenacity versions; this sum works in all.
            wait=wait_exponential(multiplier=o.reconnect_initial_s, max=o.reconnect_max_s) + wait_random(0, o.reconnect_jitter_s),
            stop=stop_after_delay(timeout_s),
            retry=retry_if_exception(self._transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    url = self.urls[self._cursor % len(self.urls)]
                    self._cursor += 1
                    await self._open_session(url)
        except Exception as exc:
            if isinstance(exc, ClientError) and not self._transient(exc):
                raise  # refused for good (unauthorized, unsupported version, expired fixed token)
            raise ReconnectFailed(f"no session with {self.urls} within {timeout_s}s: {exc!r}") from exc

    def _transient(self, exc: BaseException) -> bool:
        if self.closing:
            return False
        if isinstance(exc, TandemError):
            if exc.code in TOKEN_CLOSE_CODES:
                return not isinstance(self._token, str)  # a token source can give a fresh one
            return exc.code not in PERMANENT_CLOSE_CODES
        if isinstance(exc, websockets.InvalidStatus):
            return exc.response.status_code >= 500
        if isinstance(exc, websockets.InvalidURI | ClientError):
            return False
        return isinstance(exc, OSError | TimeoutError | websockets.WebSocketException)

    async def _token_value(self) -> str:
        if isinstance(self._token, str):
            return self._token
        value = self._token()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    async def _open_session(self, url: str) -> None:
        o = self.options
        token = await self._token_value()
        ws = await ws_connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=o.open_timeout_s,
            ping_interval=o.ping_interval_s,
            ping_timeout=o.ping_timeout_s,
            close_timeout=o.close_timeout_s,
            max_size=o.max_frame_bytes,
            user_agent_header=o.client_name,
        )
        try:
            async with asyncio.timeout(o.open_timeout_s):
                hello = await self._handshake(ws)
        except BaseException:
            await ws.close()
            raise
        self._ws, self.url, self.hello = ws, url, hello
        self.gen += 1
        self.alive = True
        self._cursor = self.urls.index(url) + 1  # after a drop, start with the next node
        self._bucket = TokenBucket.from_limits(hello.limits or {}, o.rate_fraction)
        self._reader = asyncio.create_task(self._read(ws, self.gen), name=f"tandem-client-reader-{self.gen}")
        log.info("tandem_client.connected", extra={"url": url, "node_id": hello.node_id, "session_id": hello.session_id})

    async def _handshake(self, ws: ClientConnection) -> wire.Hello:
        """Read the server's `hello` and negotiate protocol 1 (docs/protocol.md sections 2.4, 2.5).

        A refused session sends `error`, then `session.closing`, then closes (section 4.4)."""
        try:
            first = wire.decode(await ws.recv())
            if first is None or first["type"] != "hello":
                raise self._refusal(ws, first)
            hello = wire.Hello.from_wire(first)
            # Batched frames (section 3) and presence as one `presence.batch` per window (section 5.7).
            fields = {"protocol": wire.PROTOCOL_VERSION, "client": self.options.client_name, "batch": True, "presence_batch": True}
            await ws.send(wire.encode(wire.request("hello", 0, fields)))
            replies = wire.decode_all(await ws.recv())
            reply = next((f for f in replies if f["type"] in ("hello.ok", "error")), replies[0] if replies else None)
            if reply is None or reply["type"] != "hello.ok":
                raise self._refusal(ws, reply)
            return hello
        except websockets.ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd else None
            cls = close_code_error(exc.rcvd.code if exc.rcvd else None, reason)
            if cls is not None:
                details = close_details(reason)  # `unauthorized: bad_signature`: say why
                raise (cls(None, details) if details else cls(reason)) from None
            raise

    @staticmethod
    def _refusal(ws: ClientConnection, frame: wire.Frame | None) -> Exception:
        if frame is not None and frame["type"] == "error":
            return error_from_frame(frame)
        return ConnectionError(f"unexpected first frames from the server: {frame!r}")

    # --- reading -----------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection, gen: int) -> None:
        try:
            async for raw in ws:
                # What is not a message is not ours to judge: clients ignore what they do not know.
                for frame in wire.decode_all(raw):
                    try:
                        self._dispatch(frame)
                    except Exception:  # a bug in a callback must not end the session
                        log.exception("tandem_client.dispatch_failed", extra={"type": frame.get("type")})
        except websockets.ConnectionClosed:
            pass
        finally:
            self.alive = False
            self._last_close = (ws.close_code, ws.close_reason)
            self._fail_pending(ConnectionLost(f"the connection to {self.url} dropped"), gen)

    def _dispatch(self, frame: wire.Frame) -> None:
        re = frame.get("re")
        if re is not None:
            entry = self._pending.pop(re, None)
            if entry is not None:
                entry[1](frame)
            return  # a reply to a request that timed out or belongs to an older session
        if frame["type"] in ("error", "session.closing"):
            log.warning("tandem_client.server_error", extra={"frame": frame})
            return  # the close code that follows tells the supervisor what to do
        self._on_event(frame)

    def _fail_pending(self, exc: ClientError, gen: int | None = None) -> None:
        for rid, (entry_gen, callback) in list(self._pending.items()):
            if gen is None or entry_gen == gen:
                del self._pending[rid]
                callback(exc)
        self.changed.notify()

    # --- sending -----------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    async def wait_ready(self, timeout_s: float | None) -> None:
        await self.changed.wait_for(lambda: self.ready or self.failed or self.closing, timeout_s)
        self.check_usable()

    def check_usable(self) -> None:
        if self.failed is not None:
            raise self.failed
        if self.closing:
            raise ClientClosed("the client is closed")

    async def send(
        self, type_: str, fields: dict[str, Any], callback: ReplyCallback, *, rid: int | None = None, gen: int | None = None
    ) -> int:
        """Send a request on session `gen` (default: the current one); `callback` gets the reply
        frame (ok or error) or a `ClientError` when the session ends first. Never raises for a
        dropped connection: the callback hears about it."""
        self.check_usable()
        rid = self.next_id() if rid is None else rid
        ws, current = self._ws, self.gen
        if ws is None or (gen is not None and gen != current):
            callback(ConnectionLost("the session this request belonged to has ended"))
            return rid
        self._pending[rid] = (current, callback)
        if self._bucket is not None:
            delay_s = self._bucket.reserve()
            if delay_s > 0:
                await asyncio.sleep(delay_s)  # pacing under the server's rate limit, not a wait for a condition
        try:
            await ws.send(wire.encode(wire.request(type_, rid, fields)))
        except websockets.ConnectionClosed:
            entry = self._pending.pop(rid, None)
            if entry is not None:
                callback(ConnectionLost(f"the connection to {self.url} dropped"))
        return rid

    async def request(
        self,
        type_: str,
        fields: dict[str, Any],
        *,
        on_reply: Callable[[wire.Frame], None] | None = None,
        restore: bool = False,
        timeout_s: float | None = None,
    ) -> wire.Frame:
        """Send a request and wait for its reply; an `error` reply raises its typed exception.

        `on_reply` runs in the reader with a successful reply, before anything later is read.
        Unless `restore` (used while restoring a new session), waits for a session first."""
        timeout_s = self.options.request_timeout_s if timeout_s is None else timeout_s
        future: asyncio.Future[wire.Frame] = asyncio.get_running_loop().create_future()

        def done(result: wire.Frame | ClientError) -> None:
            if future.done():
                return
            if isinstance(result, ClientError):
                future.set_exception(result)
                return
            if on_reply is not None and result["type"] != "error":
                on_reply(result)
            future.set_result(result)

        async with asyncio.timeout(timeout_s):
            if not restore:
                await self.wait_ready(None)
            rid = await self.send(type_, fields, done)
            try:
                frame = await future
            finally:
                self._pending.pop(rid, None)
        if frame["type"] == "error":
            raise error_from_frame(frame)
        return frame


def normalize_url(url: str) -> str:
    """Accept `ws(s)://host:port/ws` as is; `http(s)://host:port` becomes the `/ws` endpoint."""
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url = f"{scheme}://{rest}/ws"
    return url
