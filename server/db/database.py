"""Where the database is and how the server connects to it.

Two connections exist: the admin URL (`DATABASE_URL` or the embedded cluster's superuser), used
only to create roles, migrate and maintain partitions; and the application role's pool, which
every request uses. The app role owns nothing and is not superuser, so forced row-level
security applies to everything it does.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from server.core.settings import Settings
from server.db import migrate, store


def app_url_from(admin_url: str, role: str, password: str | None) -> str:
    """The admin URL with the application role's credentials in place of the admin's."""
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = quote(role) + (":" + quote(password) if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}", parts.path, parts.query, parts.fragment))


def app_url(settings: Settings, admin_url: str) -> str:
    return settings.app_database_url or app_url_from(admin_url, settings.app_role, settings.app_password)


async def prepare(settings: Settings, admin_url: str) -> list[migrate.Migration]:
    """Create the roles, apply pending migrations and the partitions due; returns what was applied."""
    conn = await asyncpg.connect(admin_url)
    try:
        await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
        applied = await migrate.up(conn, settings.migrations_dir, settings.owner_role)
        await maintain(conn)
        return applied
    finally:
        await conn.close()


async def maintain(conn: asyncpg.Connection) -> None:
    """Create this month's and next month's audit partitions (idempotent; safe on every node)."""
    await conn.execute(store.Q["maintain_partitions"])


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class AppConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection of the application role, given back to the pool without asyncpg's
    reset statement (`RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`, one more
    round trip per transaction). Nothing the server runs on a pooled connection outlives its
    transaction: the tenant context is `set_config(..., true)`, advisory locks are
    transaction-scoped, LISTEN runs on the fan-out's own connection, no cursor is held open.
    The one session setting, the committer's `statement_timeout`, is reset before its
    connection goes back (server/documents/commit_shard.py). asyncpg still rolls back an open
    transaction at release."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    url: str,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str | None = None,
    *,
    connect_timeout_s: float = 60.0,
    command_timeout_s: float | None = None,
) -> asyncpg.Pool:
    """The application role's pool; `application_name` (e.g. "tandem node-1") names its
    connections in pg_stat_activity, so an operator sees which node holds which.
    `connect_timeout_s` bounds opening a connection, `command_timeout_s` (None: unbounded)
    each query that passes no timeout of its own."""
    settings = {"application_name": application_name} if application_name else None
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, server_settings=settings,
        timeout=connect_timeout_s, command_timeout=command_timeout_s, connection_class=AppConnection,
    )


async def close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close `pool`, waiting at most `timeout_s` for its connections to be released; past that
    they are terminated (a connection something still holds would otherwise be waited for forever)."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        pool.terminate()
