"""Leased locks with fencing tokens, and the bounded event streams of coordination
(docs/protocol.md section 12).

`Lock` is `async with doc.lock(ttl=30):` and `async with ws.lock("deploy"):`: `lock.acquire`
(optionally waiting, with backoff, for the holder to let go), `lock.renew` in the background every
ttl/3, the fence on every edit of the locked document while held, `lock.release` at the end. A
lease known to be lost (`StaleFence`) is recorded, never silently ignored. `EventStream` is the
bounded queue behind `ws.state.changes()`, `ws.tasks.events()` and `client.task_events()`.
Imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from tandem_client import wire
from tandem_client.errors import ERROR_CLASSES, ClientError, ConnectionLost, TandemError

if TYPE_CHECKING:
    from tandem_client.document import Document
    from tandem_client.workspace import Workspace

log = logging.getLogger("tandem_client")

E = TypeVar("E")
LockKey = tuple[str, str]  # ("doc", doc_id) or ("name", name)
MIN_TTL_S, MAX_TTL_S = 0.1, 3600.0  # `ttl_ms` is 100 to 3600000 (docs/protocol.md section 5.1)
Locked = ERROR_CLASSES["locked"]
MAX_WAIT_MS = 60_000  # the server's bound on lock.acquire's wait_ms
REPLY_MARGIN_S = 10.0  # how much longer than wait_ms the reply to a queued acquisition may take
StaleFence = ERROR_CLASSES["stale_fence"]


# --- event streams -------------------------------------------------------------------------------


class EventStream(Generic[E]):
    """An async iterator over events from the moment it was opened.

    Holds at most `max_queue` unread events; when it is full the **oldest** unread event is
    dropped and `dropped` counts it, so a slow reader never slows the client down but may miss
    events: list again (`ws.tasks.list()`, `ws.state.get()`) to catch up. Events that happen
    while the client is reconnecting are not replayed either. `close()`, leaving an `async with`
    block, leaving the workspace or closing the client ends the iteration.
    """

    def __init__(self, streams: Streams[E], max_queue: int) -> None:
        self._streams = streams
        self._queue: asyncio.Queue[E | None] = asyncio.Queue(max_queue)
        self.dropped = 0

    def _put(self, event: E | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next(self, timeout_s: float | None = None) -> E:
        """The next event; TimeoutError after `timeout_s`, StopAsyncIteration once closed."""
        async with asyncio.timeout(timeout_s):
            return await self.__anext__()

    def close(self) -> None:
        if self in self._streams.open:
            self._streams.open.discard(self)
            self._put(None)

    async def __aenter__(self) -> EventStream[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Streams(Generic[E]):
    """The open streams of one kind of event."""

    def __init__(self, default_max_queue: int) -> None:
        self.default_max_queue = default_max_queue
        self.open: set[EventStream[E]] = set()

    def new(self, max_queue: int | None = None) -> EventStream[E]:
        stream: EventStream[E] = EventStream(self, max_queue or self.default_max_queue)
        self.open.add(stream)
        return stream

    def put(self, event: E) -> None:
        for stream in list(self.open):
            stream._put(event)

    def close(self) -> None:
        for stream in list(self.open):
            stream.close()


# --- locks ---------------------------------------------------------------------------------------


class Lock:
    """An exclusive lease on a document (`doc.lock(...)`) or a named resource (`ws.lock(name)`).

    `async with doc.lock(ttl=30) as lock:` takes it (`Locked`, with `details["holder"]`, when
    another agent holds it; with `wait=True` the server queues the acquisition, first come first
    served, for up to `timeout` seconds, then `Locked`). While held it is renewed every ttl/3
    (unless `renew=False`) and every edit of the document carries `fence`, so an edit made after
    the lease was lost fails with `StaleFence` (the document then fails) instead of landing.
    Leaving the block waits (up to `flush_on_close_s`) until the document's edits are
    acknowledged, then releases. If the lease was lost meanwhile (a renewal or a fenced edit got
    `StaleFence`, or the release found it lapsed), `lost` is true, `error` says why, and leaving
    the block raises that `StaleFence` (unless the block raised something else).

    Locks belong to the agent, not to this client: another client of the same agent acquiring
    the same lock gets a new fence and this one stops working. Not reentrant.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        document: Document | None = None,
        name: str | None = None,
        ttl_s: float = 30.0,
        wait: bool = False,
        timeout_s: float | None = None,
        renew: bool = True,
    ) -> None:
        if (document is None) == (name is None):
            raise ValueError("a lock guards a document or a name, exactly one")
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl must be between {MIN_TTL_S} and {MAX_TTL_S} seconds")
        self.workspace = workspace
        self.document = document
        self.name = name
        self.ttl_s = ttl_s
        self.wait = wait
        self.timeout_s = timeout_s
        self.renew = renew
        self.info: wire.LockInfo | None = None  # the last lock object the server sent
        self.held = False
        self.lost = False
        self.error: ClientError | None = None  # why the lease was lost
        self._conn = workspace.client._conn
        self._options = workspace.client.options
        self._renewer: asyncio.Task[None] | None = None

    # --- public ----------------------------------------------------------------------------------

    @property
    def fence(self) -> int | None:
        """The fencing token of the current lease (docs/protocol.md section 12.1)."""
        return self.info.fence if self.info else None

    @property
    def expires_at(self) -> datetime | None:
        """When the lease ends unless renewed (the server's clock)."""
        if self.info is None or self.info.expires_at is None:
            return None
        return datetime.fromisoformat(self.info.expires_at)

    @property
    def key(self) -> LockKey:
        return ("doc", self.document.doc_id) if self.document is not None else ("name", str(self.name))

    async def acquire(self) -> Lock:
        """Take the lock (see the class). Safe to retry after a dropped connection: the holder
        may acquire again, which gives it a new fence."""
        if self.held:
            raise RuntimeError("this lock is already held")
        self.workspace._check()
        if self.key in self.workspace._locks:
            raise RuntimeError(f"{self.key[0]} {self.key[1]} is already locked by this client (locks are not reentrant)")
        fields = {**self._target(), "ttl_ms": self._ttl_ms}
        self.workspace._locks[self.key] = self  # reserved: a concurrent acquire here is refused
        try:
            frame = await (self._acquire_waiting(fields) if self.wait else self._acquire_once(fields))
        except BaseException:
            self.workspace._locks.pop(self.key, None)
            raise
        self._take(frame["lock"])
        self.held, self.lost, self.error = True, False, None
        if self.document is not None:
            self.document._lock = self  # its edits carry the fence from now on
            self.document._on_lock_released()  # edits another agent's lock refused may go now
        if self.renew:
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"tandem-client-lock-{self.key[1]}")
        self._conn.changed.notify()
        return self

    async def renew_now(self) -> None:
        """Renew at once (the background renewal does it every ttl/3). Raises `StaleFence` (and
        marks the lock lost) when the lease is gone."""
        try:
            await self._renew()
        except TandemError as exc:
            self._mark_lost(exc)
            raise

    async def release(self) -> None:
        """Stop renewing and release. A release refused with `StaleFence` (the lease lapsed
        first) marks the lock lost; other failures are logged: the lease then ends at its expiry."""
        if not self.held:
            return
        self.held = False
        self._stop_renewing()
        self.workspace._locks.pop(self.key, None)
        if self.document is not None and self.document._lock is self:
            self.document._lock = None
        self._conn.changed.notify()
        if self.lost or self._conn.failed is not None or self._conn.closing:
            return
        fields = {**self._target(), "fence": self.fence}
        try:
            try:
                await self._conn.request("lock.release", fields)
            except ConnectionLost:  # it may or may not have been released: try once on the next session
                try:
                    await self._conn.request("lock.release", fields)
                except StaleFence:
                    pass  # released by the first request (or lapsed): gone either way
        except StaleFence as exc:
            self._mark_lost(exc)
        except (ClientError, TimeoutError) as exc:
            log.warning("tandem_client.lock_release_failed", extra={"lock": self.key, "error": repr(exc)})

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        flush_error: BaseException | None = None
        try:
            document = self.document
            if document is not None and not document.closed and self.held:
                try:  # the block's fenced edits must land while the lease holds
                    await document.flushed(self._options.flush_on_close_s)
                except (ClientError, TimeoutError) as error:
                    flush_error = error
        finally:
            await self.release()
        if exc_type is not None:
            return  # the block's own exception propagates
        if self.lost and self.error is not None:
            raise self.error
        if flush_error is not None:
            raise flush_error

    def __repr__(self) -> str:
        state = "lost" if self.lost else "held" if self.held else "free"
        return f"<Lock {self.key[0]}={self.key[1]} fence={self.fence} {state}>"

    # --- internals -------------------------------------------------------------------------------

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    def _target(self) -> dict[str, Any]:
        if self.document is not None:
            return {"workspace_id": self.workspace.workspace_id, "doc_id": self.document.doc_id}
        return {"workspace_id": self.workspace.workspace_id, "name": self.name}

    def _take(self, obj: wire.Frame) -> None:
        self.info = wire.LockInfo.from_wire(obj)

    async def _acquire_once(self, fields: dict[str, Any], reply_timeout_s: float | None = None) -> wire.Frame:
        client = self.workspace.client
        return await client._retry_lost(lambda: self._conn.request("lock.acquire", fields, timeout_s=reply_timeout_s))

    async def _acquire_waiting(self, fields: dict[str, Any]) -> wire.Frame:
        """The server queues each attempt (`wait_ms`, docs/protocol.md#121) for what is left of
        `timeout`; attempts are repeated only after a dropped connection or a refusal."""
        o = self._options
        timeout_s = o.lock_wait_timeout_s if self.timeout_s is None else self.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def attempt_once() -> wire.Frame:
            left_s = max(0.0, deadline - loop.time())
            wait_ms = min(int(left_s * 1000), MAX_WAIT_MS)
            return await self._acquire_once({**fields, "wait_ms": wait_ms}, wait_ms / 1000 + REPLY_MARGIN_S)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Locked),
            stop=stop_after_delay(timeout_s),
            wait=wait_exponential(multiplier=o.lock_retry_initial_s, max=o.lock_retry_max_s) + wait_random(0, o.lock_retry_jitter_s),
            sleep=self._sleep_until_released,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await attempt_once()
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _sleep_until_released(self, delay_s: float) -> None:
        """The backoff between attempts, cut short by a `lock.released` event for this resource."""
        releases = self.workspace._lock_releases
        seen = releases.get(self.key, 0)
        try:
            await self._conn.changed.wait_for(
                lambda: releases.get(self.key, 0) != seen or self.workspace.failure is not None, delay_s
            )
        except TimeoutError:
            pass

    async def _renew_loop(self) -> None:
        """Renews every ttl/3 while held; ends when released or lost."""
        period_s = self.ttl_s / 3
        while self.held and not self.lost:
            await asyncio.sleep(period_s)  # the renewal period, not a wait for a condition
            try:
                await self._renew()
            except (ConnectionLost, TimeoutError):
                continue  # the reconnect renews it while restoring; if not, the next period does
            except ClientError as exc:  # StaleFence, NotMember, ClientClosed, ReconnectFailed
                self._mark_lost(exc)
                return

    async def _renew(self, restore: bool = False) -> None:
        fields = {**self._target(), "fence": self.fence, "ttl_ms": self._ttl_ms}
        frame = await self._conn.request("lock.renew", fields, restore=restore, timeout_s=max(self.ttl_s, 1.0))
        if self.held:
            self._take(frame["lock"])
            self._conn.changed.notify()

    async def _restore(self) -> None:
        """On a new session (the client's restore step): renew with the fence; the server keeps
        a disconnected holder's locks for its release grace period (and at most until expiry)."""
        if not self.held or self.lost:
            return
        try:
            await self._renew(restore=True)
        except TandemError as exc:
            self._mark_lost(exc)

    def _on_event(self, kind: str, info: wire.LockInfo) -> None:
        """A lock event for this resource: the lease is gone if someone took it with a newer
        fence, or the server released ours (`disconnected`: the grace period ran out)."""
        fence = self.fence
        if not self.held or fence is None:
            return
        if (kind == "lock.acquired" and info.fence > fence) or (kind == "lock.released" and info.fence == fence):
            self._mark_lost(StaleFence(f"the lock was {'taken' if kind == 'lock.acquired' else 'released'} by the server"))

    def _mark_lost(self, error: ClientError) -> None:
        if self.lost:
            return
        self.lost = True
        self.error = error
        log.warning("tandem_client.lock_lost", extra={"lock": self.key, "fence": self.fence, "error": repr(error)})
        self._conn.changed.notify()

    def _stop_renewing(self) -> None:
        if self._renewer is not None and not self._renewer.done() and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
        self._renewer = None
