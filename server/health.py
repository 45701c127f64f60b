"""`GET /healthz` and `GET /metrics`: is this node serving, is its database answering, and can
its write path commit.

The database probe is one `SELECT 1` through the application pool, bounded by
`settings.health_timeout_s`, so a hung database makes /healthz answer 503 instead of hanging.
The write path (the committer's shards) and the supervised tasks are reported as they are now;
a shard that cannot commit makes the node unhealthy too (docs/operations.md, "When the database
is away"). Redis (presence only) is reported but never makes the node unhealthy: without it
presence degrades and documents keep working.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.core import metrics as metrics_module
from server.core.logs import get_logger
from server.db import store

if TYPE_CHECKING:
    from server.app import AppState

log = get_logger("tandem.health")


async def probe_database(pool: asyncpg.Pool | None, timeout_s: float) -> bool:
    """True when `SELECT 1` through the pool answers within `timeout_s`; never raises."""
    if pool is None:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            async with pool.acquire() as conn:
                await store.ping(conn)
        return True
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("health.db_down", error=f"{type(exc).__name__}: {exc}")
        return False


async def healthz(request: Request) -> JSONResponse:
    state: AppState = request.app.state.tandem
    db = state.database
    up = await probe_database(db.pool if db else None, state.settings.health_timeout_s)
    state.metrics.db_up.set(1 if up else 0)
    node = state.node
    configured = state.settings.redis_url is not None
    redis = await node.presence.health() if node else {"configured": configured, "up": False if configured else None}
    # Each committer shard: can it commit, its connection, what waits, when it last committed or failed.
    write_path = node.committer.health() if node else {"ok": False, "shards": []}
    healthy = up and write_path["ok"]
    body = {
        "status": "ok" if healthy else "unavailable",
        "node_id": state.node_id,
        # The fan-out's LISTEN connection: while it is down this node still serves, and its
        # rooms catch up from the log when it is back.
        "listen": {"up": node.fanout.connected if node else False, "reconnects": node.fanout.reconnects if node else 0},
        "database": {
            "up": up,
            "embedded": db.embedded if db else None,
            "schema_version": db.schema_version if db else None,
            "migrations_applied_at_start": db.migrations_applied_at_start if db else None,
        },
        "write_path": write_path,
        # Every long-running task: running now, and how often it was restarted after a crash.
        "tasks": state.supervisor.view(),
        # Presence's store: `up` is null without REDIS_URL (presence is in process then).
        "redis": redis,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.tandem
    # Refresh the database gauge at scrape time, so it is current even without health checks.
    up = await probe_database(state.database.pool if state.database else None, state.settings.health_timeout_s)
    state.metrics.db_up.set(1 if up else 0)
    if state.node is not None:
        await state.node.presence.health()  # refreshes tandem_redis_up
    return Response(state.metrics.render(), media_type=metrics_module.CONTENT_TYPE)
