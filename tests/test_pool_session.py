"""The application pool gives connections back without asyncpg's reset statement
(server/db/database.py `AppConnection`): what a transaction sets must end with it, so a
connection coming back from the pool holds no tenant context, no lock, no LISTEN and the
default settings, after a commit, a rollback and the committer's session timeout alike.
"""

from __future__ import annotations

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.db.database import AppConnection, create_pool
from server.documents.commit_shard import Shard
from tests.conftest import TENANT_A


async def _session_state(conn: asyncpg.Connection) -> dict[str, object]:
    return dict(
        await conn.fetchrow(
            "SELECT current_tenant_id() AS tenant,"
            " coalesce(current_setting('app.current_tenant', true), '') AS tenant_setting,"
            " coalesce(current_setting('app.user_id', true), '') AS actor,"
            " coalesce(current_setting('tandem.holds_agent_slot', true), '') AS holds_agent_slot,"
            " current_setting('statement_timeout') AS statement_timeout,"
            " (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory') AS advisory,"
            " (SELECT count(*) FROM pg_listening_channels()) AS listening,"
            " (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS held_cursors,"
            " (SELECT count(*) FROM tasks) AS visible_tasks"
        )
    )


CLEAN = {
    "tenant": None,
    "tenant_setting": "",
    "actor": "",
    "holds_agent_slot": "",
    "statement_timeout": "0",
    "advisory": 0,
    "listening": 0,
    "held_cursors": 0,
    "visible_tasks": 0,
}


async def test_a_connection_back_from_the_pool_holds_no_tenant_context(
    db, admin
) -> None:
    pool = await create_pool(
        db.app_url, min_size=1, max_size=1
    )  # one connection: the same each time
    try:
        async with pool.acquire() as conn:
            assert isinstance(conn._con, AppConnection) and conn.get_reset_query() == ""
            pid = conn.get_server_pid()
            assert await _session_state(conn) == CLEAN
        async with store.tenant_transaction(pool, TENANT_A, "alice") as conn:
            await conn.execute(
                "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES (current_tenant_id(), 't', 'x', 'alice')"
            )
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
            await conn.execute(
                "SELECT set_config('tandem.holds_agent_slot', 'yes', true)"
            )
            assert (await _session_state(conn))["tenant"] == TENANT_A
        # Given back without a reset statement: the backend's last statement is the commit.
        last = await admin.fetchval(
            "SELECT query FROM pg_stat_activity WHERE pid = $1", pid
        )
        assert "RESET" not in last.upper() and "COMMIT" in last.upper(), last
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await _session_state(conn) == CLEAN
        # A transaction that fails half-way rolls back at release, context and all.
        with pytest.raises(TandemError):
            async with store.tenant_transaction(pool, TENANT_A, "alice") as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(43)")
                raise TandemError(ErrorCode.NOT_FOUND)
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await _session_state(conn) == CLEAN
    finally:
        await pool.close()


async def test_the_committer_resets_its_statement_timeout_before_giving_its_connection_back(
    db,
) -> None:
    pool = await create_pool(db.app_url, min_size=1, max_size=1)
    try:
        shard = Shard(0, 10)
        shard.conn = await pool.acquire()
        await shard.conn.execute(store.Q["set_statement_timeout"], "5000")
        pid = shard.conn.get_server_pid()
        await shard.give_back(pool, 5.0)
        assert shard.conn is None
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await _session_state(conn) == CLEAN
    finally:
        await pool.close()
