"""The entry point: `async with tandem_client.connect(urls, token) as client:`.

`Client` owns one `Connection` (sessions, reconnects), the joined workspaces and the open
documents, and routes server events to them. After a reconnect it restores the session: joins
the workspaces again, renews the locks it holds (with their fences, within the server's release
grace period), then reopens every document, which sends what the server lacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from tandem_client import wire
from tandem_client.agents import Agents
from tandem_client.connection import Connection, TokenSource
from tandem_client.coordination import EventStream, Streams
from tandem_client.document import Document
from tandem_client.errors import ClientError, ConnectionLost, error_from_code
from tandem_client.executions import ExecutionEvent
from tandem_client.options import Options
from tandem_client.presence import EVENT_TYPES
from tandem_client.tasks import TaskEvent
from tandem_client.workspace import Workspace

T = TypeVar("T")
# Coordination events routed to their workspace (docs/protocol.md section 12.6); `task.changed` apart.
WORKSPACE_EVENT_TYPES = ("lock.acquired", "lock.renewed", "lock.released", "state.changed", "member.changed")


def connect(urls: str | Sequence[str], token: TokenSource, **options: Any) -> Client:
    """A client for one or more nodes of a Tandem cluster; use it as `async with` (or `await` it).

    `urls`: `ws://host:port/ws` (or `http://host:port`) of each node; the client connects to the
    first that answers and, when the connection drops, reconnects to the next. `token`: the
    agent's token, or a function (sync or async) returning a fresh one at each connect.
    `options`: any field of `tandem_client.Options` (timeouts, backoff, limits).
    """
    return Client([urls] if isinstance(urls, str) else list(urls), token, Options(**options))


class Client:
    def __init__(self, urls: Sequence[str], token: TokenSource, options: Options | None = None) -> None:
        self.options = options or Options()
        self._conn = Connection(urls, token, self.options, self._on_event, self._restore)
        self._workspaces: dict[str, Workspace] = {}
        self._docs: dict[str, Document] = {}
        self._join_lock = asyncio.Lock()
        self._task_streams: Streams[TaskEvent] = Streams(self.options.max_event_queue)
        self.agents = Agents(self)  # the tenant's agent registry (docs/protocol.md section 12.7)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Client:
        """Connect (retrying transient failures for `connect_timeout_s`). Raises `Unauthorized`,
        `TokenExpired`, `UnsupportedVersion`, or `ReconnectFailed` when no node answered."""
        await self._conn.start()
        return self

    async def close(self) -> None:
        """Flush and close every open document (each up to `flush_on_close_s`), then disconnect."""
        if self._conn.closing:
            return
        for document in list(self._docs.values()):
            await document.close()
        for workspace in self._workspaces.values():
            for lock in list(workspace._locks.values()):
                await lock.release()
            workspace._close_streams()
        self._task_streams.close()
        await self._conn.close()

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Client]:
        return self.start().__await__()

    # --- session facts -----------------------------------------------------------------------

    @property
    def hello(self) -> wire.Hello | None:
        """The current (or last) session's `hello`: node_id, agent_id, tenant_id, limits."""
        return self._conn.hello

    @property
    def agent_id(self) -> str | None:
        return self.hello.agent_id if self.hello else None

    @property
    def node_id(self) -> str | None:
        return self.hello.node_id if self.hello else None

    @property
    def url(self) -> str | None:
        """The URL of the current (or last) session."""
        return self._conn.url

    @property
    def connected(self) -> bool:
        """A session is up and restored."""
        return self._conn.ready

    @property
    def sessions(self) -> int:
        """Sessions opened so far: 1 + the number of reconnects."""
        return self._conn.gen

    @property
    def failure(self) -> ClientError | None:
        """Why the client stopped for good (`ReconnectFailed`, `Unauthorized`, ...), if it did."""
        return self._conn.failed

    async def wait_for(self, predicate: Callable[[], object], timeout_s: float | None = None) -> None:
        """Wait until `predicate()` is true; checked on every connection or document change."""
        await self._conn.changed.wait_for(predicate, timeout_s)

    # --- requests ----------------------------------------------------------------------------

    async def ping(self) -> float:
        """A protocol `ping`; returns the round trip in seconds."""
        start = time.perf_counter()
        await self._idempotent("ping", {})
        return time.perf_counter() - start

    async def create_workspace(
        self, name: str, *, visibility: str = "private", workspace_type: str | None = None, max_members: int | None = None
    ) -> wire.WorkspaceInfo:
        """A new workspace with this agent as owner (not joined). Not retried on `ConnectionLost`."""
        frame = await self._conn.request(
            "workspace.create",
            wire.given(name=name, visibility=visibility, workspace_type=workspace_type, max_members=max_members),
        )
        return wire.WorkspaceInfo.from_wire(frame["workspace"])

    async def workspaces(self) -> list[wire.WorkspaceInfo]:
        """Workspaces this agent is a member of, and the tenant's team and public ones."""
        frame = await self._idempotent("workspace.list", {})
        return [wire.WorkspaceInfo.from_wire(w) for w in frame["workspaces"]]

    async def join(self, workspace_id: str, *, task_events: wire.TaskEvents = "all") -> Workspace:
        """Join a workspace (becoming a member of a team or public one). Joining again returns
        the same `Workspace`. `task_events="own"`: of the workspace's `task.changed` events, only
        those of tasks this agent created, is assigned or was assigned before the change reach
        this client (docs/protocol.md section 5.4): enough for `ws.tasks.assigned_to_me()`, and
        the rest of the workspace's task traffic is not sent. Joining again with another choice
        applies it (the last join decides); a reconnect joins with it again."""
        async with self._join_lock:
            existing = self._workspaces.get(workspace_id)
            if existing is not None and existing.failure is None:
                if existing.task_events != task_events:
                    # Set first: a reconnect while the join is on its way joins with the new choice.
                    previous, existing.task_events = existing.task_events, task_events
                    fields = wire.join_fields(workspace_id, task_events)
                    try:
                        existing._apply(wire.JoinReply.from_wire(await self._idempotent("workspace.join", fields)))
                    except BaseException:
                        existing.task_events = previous
                        raise
                return existing
            frame = await self._idempotent("workspace.join", wire.join_fields(workspace_id, task_events))
            workspace = Workspace(self, wire.JoinReply.from_wire(frame), task_events)
            self._workspaces[workspace.workspace_id] = workspace
            await workspace.presence._refresh_quietly()  # the view starts from the server's list
            return workspace

    def task_events(self, max_queue: int | None = None) -> EventStream[TaskEvent]:
        """Every `task.changed` event this client receives from now on: those of its joined
        workspaces (of a workspace joined with `task_events="own"`, only this agent's tasks'),
        and those of tasks this agent created or is assigned (or was, before a delegation), in
        any workspace, joined or not (docs/protocol.md section 12.6). Bounded, oldest dropped
        (see `EventStream`)."""
        return self._task_streams.new(max_queue)

    async def _idempotent(self, type_: str, fields: dict[str, Any]) -> wire.Frame:
        """A request that is safe to repeat, sent again on the next session if the connection drops."""
        return await self._retry_lost(lambda: self._conn.request(type_, fields))

    async def _retry_lost(self, call: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ConnectionLost),
            stop=stop_after_attempt(self.options.idempotent_attempts),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")

    # --- events and restore ------------------------------------------------------------------

    def _on_event(self, frame: wire.Frame) -> None:
        if frame["type"] == "doc.op":
            document = self._docs.get(frame.get("doc_id", ""))
            if document is not None:
                document._on_op(frame)
        elif frame["type"] in EVENT_TYPES:
            workspace = self._workspaces.get(frame.get("workspace_id", ""))
            if workspace is not None:
                workspace.presence._on_event(frame)
        elif frame["type"] in WORKSPACE_EVENT_TYPES:
            scope = frame.get("lock") if frame["type"].startswith("lock.") else frame
            workspace = self._workspaces.get((scope or {}).get("workspace_id", ""))
            if workspace is not None:
                workspace._on_event(frame)
        elif frame["type"] == "doc.deleted":  # section 12.6: the document is gone for good
            document = self._docs.get(frame.get("doc_id", ""))
            if document is not None:
                document._fail(error_from_code("not_found", "the document was deleted"))
        elif frame["type"] == "workspace.deleted":
            workspace = self._workspaces.get(frame.get("workspace_id", ""))
            if workspace is not None:
                workspace._fail(error_from_code("not_found", "the workspace was deleted"))
        elif frame["type"] == "task.changed":
            event = TaskEvent.from_wire(frame)
            workspace = self._workspaces.get(event.task.workspace_id)
            if workspace is not None:
                workspace.tasks._on_event(event)
            self._task_streams.put(event)
        elif frame["type"] == "workflow.execution.changed":
            run = ExecutionEvent.from_wire(frame)
            workspace = self._workspaces.get(run.execution.workspace_id or "")
            if workspace is not None:
                workspace.workflows._on_event(run)
        # Other event types (later protocol versions) are ignored, as section 3 asks.

    async def _restore(self) -> None:
        """On a new session: join every workspace again, then reopen every document."""
        workspaces = [w for w in self._workspaces.values() if w.failure is None and not w.left]
        await _gather_lost(w._rejoin() for w in workspaces)
        await _gather_lost(w._restore_locks() for w in workspaces if w.failure is None)
        documents = [d for w in workspaces if w.failure is None for d in w._documents.values() if not d.closed and d.failure is None]
        await _gather_lost(d._restore() for d in documents)
        await _gather_lost(w._restore_presence() for w in workspaces if w.failure is None)

    def __repr__(self) -> str:
        return f"<Client agent={self.agent_id} node={self.node_id} connected={self.connected}>"


async def _gather_lost(calls: Any) -> None:
    """Run `calls` concurrently; once all have ended, re-raise the first failure (ConnectionLost
    or TimeoutError: the supervisor reconnects again)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
