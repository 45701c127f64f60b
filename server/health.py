"""`GET /healthz` and `GET /metrics`: is this node serving, and is its database answering.

The database probe is one `SELECT 1` through the application pool, bounded by
`settings.health_timeout_s`, so a hung database makes /healthz answer 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server import metrics as metrics_module
from server.logs import get_logger

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
                await conn.fetchval("SELECT 1")
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
    body = {
        "status": "ok" if up else "unavailable",
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
    }
    return JSONResponse(body, status_code=200 if up else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.tandem
    # Refresh the database gauge at scrape time, so it is current even without health checks.
    up = await probe_database(state.database.pool if state.database else None, state.settings.health_timeout_s)
    state.metrics.db_up.set(1 if up else 0)
    return Response(state.metrics.render(), media_type=metrics_module.CONTENT_TYPE)
