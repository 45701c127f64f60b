"""The embedded PostgreSQL keeps its files private (docs/operations.md, "One node, embedded
database"): the data folder Tandem creates lists to nobody else, and `postgres.log` (statements,
errors, connection details) is mode 0600 and owned by the user PostgreSQL runs as, also when an
earlier start left it readable.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import asyncpg

from server.db.embedded import EmbeddedPostgres


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def start_and_stop(data_dir: Path) -> None:
    async with EmbeddedPostgres(data_dir) as pg:
        conn = await asyncpg.connect(pg.admin_url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


async def test_the_data_folder_and_the_log_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = data_dir / "postgres.log"
    pg_uid = pwd.getpwnam(EmbeddedPostgres(data_dir).cluster.os_user or pwd.getpwuid(os.getuid()).pw_name).pw_uid

    await start_and_stop(data_dir)
    assert mode(data_dir) == 0o711, "others may pass through, not list"
    assert mode(data_dir / "pgdata") == 0o700
    assert (mode(log), log.stat().st_uid) == (0o600, pg_uid)
    assert log.read_text(), "PostgreSQL wrote to it"

    # A log an earlier start left readable (0644) is private again after the next start.
    log.chmod(0o644)
    await start_and_stop(data_dir)
    assert (mode(log), log.stat().st_uid) == (0o600, pg_uid)
