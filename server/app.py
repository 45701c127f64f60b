"""Assemble the server: routes, middleware, and the one lifespan that owns every resource.

The lifespan opens, in order: the database server (the embedded PostgreSQL, or nothing when
`DATABASE_URL` is set), the schema (roles, migrations, partitions), the application pool, then
the background tasks; one `AsyncExitStack` closes them in reverse. Later resources (the LISTEN
connection, rooms, presence) join the same stack. `run` serves the app with uvicorn in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import health, listen, welcome
from server.cluster import fanout, presence
from server.core import auth
from server.core.logs import bind_ids, get_logger
from server.core.metrics import HttpMetrics, Metrics
from server.core.settings import Settings
from server.core.supervisor import Supervised, Supervisor, TaskFactory
from server.db import database, migrate
from server.db.dbserver import EXPECTED_ERRORS, StartupError, database_server, explain
from server.documents.checker import UpdateChecker
from server.documents.committer import Committer
from server.documents.rooms import RoomRegistry
from server.http import api as http_api
from server.transport import agent, connection, yws
from server.transport import websocket as transport
from server.transport.node import Node
from server.workspaces.agent_liveness import AgentLiveness
from server.workspaces.coordination import Coordination
from server.workspaces.webhook_delivery import WebhookDelivery

log = get_logger("tandem.app")


@dataclass
class Database:
    admin_url: str  # migrations and maintenance only
    app_url: str  # the application role (the pool, and the fan-out's LISTEN connection)
    pool: asyncpg.Pool  # the application role: every request
    embedded: bool
    schema_version: str | None
    migrations_applied_at_start: int


@dataclass
class AppState:
    """Everything the running app owns; lives on `app.state.tandem`.

    "State" here is Starlette's word: `app.state` is its per-app namespace, and this object is
    what Tandem keeps there. Not the workspace state (server/workspaces/state.py, the versioned
    JSON agents share) nor a connection's state (`ConnState`, server/wire/session_rules.py)."""

    settings: Settings
    node_id: str
    metrics: Metrics
    supervisor: Supervisor  # every long-running task of the node
    database: Database | None = None
    node: Node | None = None
    startup_error: BaseException | None = None


def with_node_id(settings: Settings) -> Settings:
    """Settings with `node_id` filled in: the configured one, else a fresh random one."""
    if settings.node_id:
        return settings
    return settings.model_copy(update={"node_id": f"node-{secrets.token_hex(4)}"})


async def _schema_version(admin_url: str) -> str | None:
    conn = await asyncpg.connect(admin_url)
    try:
        return await migrate.current_version(conn)
    finally:
        await conn.close()


async def _close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("db.pool.close_timeout", timeout_s=timeout_s)
        pool.terminate()


async def open_database(stack: contextlib.AsyncExitStack, settings: Settings) -> Database:
    """Start or reach the database, bring the schema up to date, and open the app pool."""
    admin_url, embedded = await stack.enter_async_context(database_server(settings))
    applied = await database.prepare(settings, admin_url)
    for m in applied:
        log.info("db.migration.applied", version=m.version, name=m.name)
    version = await _schema_version(admin_url)
    app_url = database.app_url(settings, admin_url)
    pool = await database.create_pool(app_url, settings.db_pool_min, settings.db_pool_max, f"tandem {settings.node_id}")
    stack.push_async_callback(_close_pool, pool, settings.shutdown_timeout_s)
    return Database(admin_url, app_url, pool, embedded, version, len(applied))


async def maintain_partitions(admin_url: str, interval_s: float, metrics: Metrics) -> None:
    """Run partition maintenance every `interval_s` (prepare already ran it at start).

    Runs until cancelled; a failed run is logged and counted, and the next one is still due.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            conn = await asyncpg.connect(admin_url, timeout=30)
            try:
                await database.maintain(conn)
            finally:
                await conn.close()
        except EXPECTED_ERRORS as exc:
            metrics.maintenance_runs.labels("failed").inc()
            log.warning("db.maintenance.failed", error=explain(exc))
        else:
            metrics.maintenance_runs.labels("ok").inc()
            log.info("db.maintenance.done")


def start_background(stack: contextlib.AsyncExitStack, supervisor: Supervisor, name: str, factory: TaskFactory) -> Supervised:
    """Run `factory()` under the node's supervisor for the lifespan's duration (restarted with
    backoff when it raises); it is cancelled and awaited on exit."""
    entry = supervisor.start(name, factory)
    stack.push_async_callback(entry.stop)
    return entry


async def bounded(name: str, step: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """A shutdown step that must not hold the exit up (it may wait on a database that is away)."""
    try:
        async with asyncio.timeout(timeout_s):
            await step()
    except TimeoutError:
        log.warning("server.shutdown_step_timeout", step=name, timeout_s=timeout_s)


async def start_node(
    stack: contextlib.AsyncExitStack, settings: Settings, db: Database, metrics: Metrics, supervisor: Supervisor
) -> Node:
    """The realtime side: the group committer, the rooms, the fan-out and presence, each task under
    `supervisor`. The committer drains on exit, within `shutdown_timeout_s`."""
    assert settings.node_id is not None
    secret = auth.resolve_secret(settings.jwt_secret, settings.data_dir)
    committer = Committer(
        db.pool,
        shards=settings.commit_shards,
        max_batch_ops=settings.commit_max_batch_ops,
        max_queue_ops=settings.commit_max_queue_ops,
        max_wait_ms=settings.commit_max_wait_ms,
        timeout_s=settings.commit_timeout_s,
        unavailable_after_s=settings.commit_unavailable_after_s,
        metrics=metrics,
        node_id=settings.node_id,
        hints=True,
    )
    rooms = RoomRegistry(db.pool, committer, settings, metrics)
    committer.on_committed = rooms.on_committed
    committer.start(supervisor)
    checker = None
    if settings.validate_in_worker:
        checker = UpdateChecker(
            settings.validation_workers, settings.validation_timeout_s, settings.validation_memory_bytes,
            inline_max_bytes=settings.validation_inline_bytes,
        )
        await checker.start()
        stack.push_async_callback(checker.stop)
    # Closed in reverse: the janitor stops, the committer drains, then every room is stored.
    stack.push_async_callback(rooms.stop)
    stack.push_async_callback(bounded, "rooms.flush_all", rooms.flush_all, settings.shutdown_timeout_s)
    stack.push_async_callback(committer.stop, settings.shutdown_timeout_s)
    start_background(stack, supervisor, "rooms.janitor", rooms.janitor)
    listener = fanout.Fanout(
        db.app_url, settings.node_id, rooms, metrics, settings.fanout_check_interval_s, settings.fanout_probe_interval_s
    )
    coordination = Coordination(db.pool, settings.node_id, rooms, settings)
    listener.events = coordination.events
    stack.push_async_callback(coordination.stop)
    start_background(stack, supervisor, "tasks.sweep", coordination.sweep_forever)
    liveness = AgentLiveness(db.pool, coordination.events.connected_agents, settings)
    start_background(stack, supervisor, "agents.heartbeat", liveness.run)
    webhooks = WebhookDelivery(db.pool, settings, metrics)
    start_background(stack, supervisor, "webhooks.deliver", webhooks.run)
    # Presence closes after its tasks stop (the stack runs in reverse); Redis stays optional.
    members = presence.create_presence(settings, settings.node_id, metrics)
    stack.push_async_callback(members.close)
    for name, factory in members.background():
        start_background(stack, supervisor, name, factory)
    node = Node(
        settings, settings.node_id, db.pool, rooms, committer, secret, metrics, checker, listener, members, coordination,
        supervisor,
    )  # fmt: skip
    # Revocations are read before any token is checked; the fan-out reads them again at every
    # (re)connect of its LISTEN connection and feeds it those it hears of.
    await node.reload()
    listener.revocations = node
    start_background(stack, supervisor, "fanout.listen", listener.run)
    return node


def _lifespan(state: AppState) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings = state.settings
        async with contextlib.AsyncExitStack() as stack:
            try:
                state.database = await open_database(stack, settings)
            except EXPECTED_ERRORS as exc:
                state.startup_error = exc
                log.error("server.startup_failed", error=explain(exc))
                raise
            db = state.database
            # Later resources (the LISTEN connection, rooms, presence) enter `stack` here, after
            # the pool, so they are closed before it.
            state.node = await start_node(stack, settings, db, state.metrics, state.supervisor)
            state.metrics.migrations_applied_at_start.set(db.migrations_applied_at_start)
            state.metrics.db_up.set(1)
            maintenance = functools.partial(
                maintain_partitions, db.admin_url, settings.maintenance_interval_s, state.metrics
            )
            start_background(stack, state.supervisor, "db.maintenance", maintenance)
            log.info(
                "server.ready",
                host=settings.host,
                port=settings.port,
                embedded=db.embedded,
                schema_version=db.schema_version,
                migrations_applied_at_start=db.migrations_applied_at_start,
            )
            welcome.announce(welcome.for_server(settings, state.node.jwt_secret, db.embedded))
            yield
            log.info("server.stopping")
        log.info("server.stopped")

    return lifespan


class _QuietExpectedStartupErrors:
    """Uvicorn logs a failed startup's message, which Starlette fills with the traceback.

    For an expected failure the lifespan already logged one clear line, so the traceback is
    dropped; unexpected failures keep it.
    """

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.state.startup_error is not None:
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def create_app(settings: Settings) -> Starlette:
    settings = with_node_id(settings)
    assert settings.node_id is not None
    metrics = Metrics(redis_configured=bool(settings.redis_url))
    metrics.node.info({"node_id": settings.node_id, "embedded": str(not settings.database_url).lower()})
    state = AppState(settings=settings, node_id=settings.node_id, metrics=metrics, supervisor=Supervisor(metrics))
    api = http_api.create_api(lambda: state.node)
    app = Starlette(
        routes=[
            Route("/healthz", health.healthz, methods=["GET"]),
            Mount(http_api.PREFIX, app=http_api.mountable(api, settings)),
            Route("/metrics", health.metrics, methods=["GET"]),
            WebSocketRoute("/ws", agent.websocket_endpoint),
            WebSocketRoute("/yjs/{workspace_id}/{doc_id}", yws.endpoint),
        ],
        middleware=[
            Middleware(_QuietExpectedStartupErrors, state=state),
            Middleware(HttpMetrics, metrics=metrics),
        ],
        lifespan=_lifespan(state),
    )
    app.state.tandem = state
    return app


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.tandem = state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Once listening, an embedded server records where in its data folder (server/listen.py)."""
        await super().startup(sockets)
        db = self.tandem.database
        if self.started and db is not None and db.embedded and sockets:
            port = sockets[0].getsockname()[1]
            listen.record(self.tandem.settings.data_dir, self.tandem.settings.host, port)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """Stop accepting, then let every client connection settle what it received and close
        with `server_shutdown` (1012) before uvicorn closes what is left; all within
        `shutdown_timeout_s` (docs/operations.md, "Shutdown")."""
        listen.forget(self.tandem.settings.data_dir)  # no longer a place for quickstart to point at
        for server in self.servers:
            server.close()
        started = time.monotonic()
        timeout_s = self.tandem.settings.shutdown_timeout_s
        if self.tandem.node is not None:
            await connection.close_all(self.tandem.node, timeout_s)
        self.config.timeout_graceful_shutdown = max(1, int(timeout_s - (time.monotonic() - started)))
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        # Uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process would die
        # of the signal. For Tandem a requested stop that shut down cleanly is a success: exit 0.
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


# Objects allocated between two young-generation collections. Every update allocates many
# short-lived objects (frames, messages, futures); at CPython's default (700) the node ran ~60
# collections a second and a full one every ~2 s over everything the process holds, ~15% of its
# time in w100-doc100 (docs/performance.md, "The node's garbage collector"). Garbage in cycles is rare
# here, so a larger young generation costs little memory.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Collect less often, and never again look at what importing the server allocated.

    `gc.freeze` moves every object alive now (modules, classes, functions: ~70,000) to a
    generation the collector skips, so a full collection scans only what serving allocates.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and close everything.

    The listen socket is bound first, before the database or any output: a taken port fails at
    once. Raises `StartupError` (one-line message) for that and when the lifespan failed for an
    expected reason.
    """
    try:
        sock = listen.bind(settings)
    except listen.PortError as exc:
        raise StartupError(str(exc)) from exc
    try:
        _serve(with_node_id(settings), sock)
    finally:
        sock.close()
        listen.forget(settings.data_dir)


def _serve(settings: Settings, sock: socket.socket) -> None:
    bind_ids(node_id=settings.node_id)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # our handler (server.core.logs) formats uvicorn's records too
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        server_header=False,
        # Frames above the hard limit are refused by the transport (1009) before Tandem reads
        # them; between max_frame_bytes and this, Tandem answers frame_too_large.
        ws_max_size=settings.frame_hard_limit_bytes,
        ws_per_message_deflate=settings.ws_compression,
        # The handshake's line limit (long tokens get 4401) and invalid UTF-8 (one typed close).
        **transport.configure(settings),  # type: ignore[arg-type]
    )
    server = _Server(config, app.state.tandem)
    state: AppState = app.state.tandem
    tune_gc()
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        # Uvicorn exits with STARTUP_FAILURE when the lifespan failed (the socket is already bound).
        if state.startup_error is not None:
            raise StartupError(explain(state.startup_error)) from state.startup_error
        raise StartupError(f"the server did not start (exit {exc.code}); see the log above") from exc
    if not server.started:
        raise StartupError("the server did not start; see the log above")
