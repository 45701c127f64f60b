"""Reaching the database server: `DATABASE_URL` as is, else the embedded PostgreSQL of the data
folder (`database_server`), and the failures a user can cause and fix on the way, each told in
one line (`explain`). Used by the server's lifespan and by the `tandem` commands alike, without
the web stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from server.core.logs import get_logger
from server.core.settings import Settings
from server.db.embedded import EmbeddedPostgres
from server.db.migrate import MigrationError
from server.db.pgcluster import ClusterError

log = get_logger("tandem.app")

# Failures a user can cause and fix (a busy data folder, an edited migration, an unreachable or
# refusing database): reported as one line, never as a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ClusterError,
    MigrationError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class StartupError(RuntimeError):
    """The server could not start for an expected reason; the message is one line."""


def explain(exc: BaseException) -> str:
    """One line describing an expected failure."""
    if isinstance(exc, (ClusterError, MigrationError)):
        text = str(exc)
    elif isinstance(exc, TimeoutError):
        text = f"timed out: {exc}" if str(exc) else "timed out"
    elif isinstance(exc, asyncpg.PostgresError):
        text = f"database refused: {type(exc).__name__}: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


@contextlib.asynccontextmanager
async def database_server(settings: Settings, *, share: bool = False) -> AsyncIterator[tuple[str, bool]]:
    """Yield `(admin_url, embedded)`: `DATABASE_URL` as is, else the embedded PostgreSQL.

    The embedded cluster runs in `<data_dir>/pgdata`. The server (`share=False`) starts it and
    stops it after the block, and raises `ClusterError` when another process holds the data
    folder. A command (`share=True`) uses the cluster of the server running on the folder, and
    starts (and afterwards stops) one only when none runs.
    """
    if settings.database_url:
        yield settings.database_url, False
        return
    async with EmbeddedPostgres(settings.data_dir, share=share) as pg:
        if pg.attached:
            log.debug("db.embedded.attached", data_dir=str(pg.data_dir))
            yield pg.admin_url, True
            return
        log.info(
            "db.embedded",
            data_dir=str(pg.data_dir),
            message=f"PostgreSQL is embedded; its data is in {pg.data_dir / 'pgdata'} "
            "(set DATABASE_URL to use your own server)",
        )
        try:
            yield pg.admin_url, True
        finally:
            log.info("db.embedded.stopping", data_dir=str(pg.data_dir))
