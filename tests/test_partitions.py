"""Monthly audit partitions (NOTES 15): created ahead by tandem_maintain_partitions(), which the
server runs at start and on a schedule; rows that landed in DEFAULT move into their month.

The seed only had 2024 partitions and no DEFAULT: every audited write dated today failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from server.db import migrate
from tests.schema_helpers import TENANT_A, tenant


def _month_name(day: dt.date) -> str:
    return f"audit_log_{day.year:04d}_{day.month:02d}"


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


async def _utc_today(conn: asyncpg.Connection) -> dt.date:
    return await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")


async def _partitions(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_log'::regclass"
    )
    return {r["relname"]: r["bound"] for r in rows}


async def test_audited_insert_dated_today_succeeds_and_lands_in_this_months_partition(db) -> None:
    app = await asyncpg.connect(db.app_url)
    admin = await asyncpg.connect(db.admin_url)
    try:
        await app.execute("SELECT tandem_maintain_partitions()")  # as at server start
        async with tenant(app, TENANT_A, user_id="alice"):
            task = await app.fetchval(
                "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', 'Today', 'a') RETURNING id",
                TENANT_A,
            )
        row = await admin.fetchrow(
            "SELECT tableoid::regclass::text AS part, (changed_at AT TIME ZONE 'UTC')::date AS day"
            " FROM audit_log WHERE record_id = $1",
            task,
        )
        assert row["part"] == _month_name(row["day"])
    finally:
        await app.close()
        await admin.close()


async def test_maintenance_creates_this_and_next_months_partitions_and_is_idempotent(empty_db, postgres) -> None:
    settings = postgres.settings
    admin = await asyncpg.connect(empty_db.admin_url)
    app = await asyncpg.connect(empty_db.app_url)
    try:
        await admin.execute("SET TimeZone = 'UTC'")  # how partition bounds are printed below
        await migrate.up(admin, settings.migrations_dir, settings.owner_role)  # no maintenance yet
        assert set(await _partitions(admin)) == {"audit_log_default"}
        assert await app.fetchval("SELECT tandem_maintain_partitions()") == 2
        today = await _utc_today(admin)
        nxt = _next_month(today)
        parts = await _partitions(admin)
        assert set(parts) == {"audit_log_default", _month_name(today), _month_name(nxt)}
        first = today.replace(day=1)
        assert parts[_month_name(today)] == (
            f"FOR VALUES FROM ('{first} 00:00:00+00') TO ('{nxt} 00:00:00+00')"
        ), "monthly bounds in UTC"
        assert parts["audit_log_default"] == "DEFAULT"
        # Again: nothing to do, nothing changes.
        assert await app.fetchval("SELECT tandem_maintain_partitions()") == 0
        assert await admin.fetchval("SELECT tandem_maintain_partitions()") == 0
        assert await _partitions(admin) == parts
        # Created by the owner, with no privilege for the app (NOTES 4), indexes inherited.
        for name in parts:
            owner, app_can_read = await admin.fetchrow(
                "SELECT pg_get_userbyid(relowner), has_table_privilege('tandem_app', oid, 'SELECT')"
                " FROM pg_class WHERE relname = $1",
                name,
            )
            assert owner == "tandem_owner" and app_can_read is False
            indexes = await admin.fetchval("SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass", name)
            assert indexes == 5  # primary key + the four audit indexes
    finally:
        await app.close()
        await admin.close()


async def test_rows_waiting_in_default_move_into_their_months_partition_when_it_is_created(db) -> None:
    admin = await asyncpg.connect(db.admin_url)
    try:
        # Rows for a month with no partition yet sit in DEFAULT.
        for day in ("2031-03-01 00:00:00+00", "2031-03-31 23:59:59+00", "2031-04-01 00:00:00+00"):
            await admin.execute(
                "INSERT INTO audit_log (tenant_id, table_name, record_id, action, changed_by, changed_at)"
                " VALUES ($1, 'tasks', $1, 'INSERT', 'x', $2::timestamptz)",
                TENANT_A,
                dt.datetime.fromisoformat(day),
            )
        assert await admin.fetchval("SELECT count(*) FROM ONLY audit_log_default") == 3
        assert await admin.fetchval("SELECT tandem_ensure_audit_partition('2031-03-17')") is True
        assert await admin.fetchval("SELECT count(*) FROM audit_log_2031_03") == 2
        assert await admin.fetchval("SELECT count(*) FROM ONLY audit_log_default") == 1  # April stays
        assert await admin.fetchval("SELECT count(*) FROM audit_log") == 3 + await admin.fetchval(
            "SELECT count(*) FROM audit_log WHERE changed_at < '2031-01-01'"
        )
        assert await admin.fetchval("SELECT tandem_ensure_audit_partition('2031-03-01')") is False
    finally:
        await admin.close()


async def test_maintenance_recreates_a_missing_current_month_moving_its_rows_out_of_default(db) -> None:
    admin = await asyncpg.connect(db.admin_url)
    app = await asyncpg.connect(db.app_url)
    try:
        this_month = _month_name(await _utc_today(admin))
        await admin.execute(f"DROP TABLE {this_month}")  # as if the server had been down all month
        async with tenant(app, TENANT_A, user_id="alice"):
            for i in range(3):
                await app.execute(
                    "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', $2, 'a')",
                    TENANT_A,
                    f"t{i}",
                )
        assert await admin.fetchval("SELECT count(*) FROM ONLY audit_log_default") == 3
        assert await app.fetchval("SELECT tandem_maintain_partitions()") == 1
        assert await admin.fetchval("SELECT count(*) FROM ONLY audit_log_default") == 0
        assert await admin.fetchval(f"SELECT count(*) FROM {this_month}") == 3
        async with tenant(app, TENANT_A, rollback=True):
            assert await app.fetchval("SELECT count(*) FROM audit_log WHERE changed_by = 'alice'") == 3
    finally:
        await app.close()
        await admin.close()


async def test_concurrent_maintenance_calls_both_succeed_and_create_each_partition_once(db) -> None:
    admin = await asyncpg.connect(db.admin_url)
    first = await asyncpg.connect(db.app_url)
    second = await asyncpg.connect(db.app_url)
    try:
        today = await _utc_today(admin)
        for day in (today, _next_month(today)):
            await admin.execute(f"DROP TABLE {_month_name(day)}")
        second_pid = await second.fetchval("SELECT pg_backend_pid()")

        tx = first.transaction()
        await tx.start()
        assert await first.fetchval("SELECT tandem_maintain_partitions()") == 2  # not committed yet
        racing = asyncio.create_task(second.fetchval("SELECT tandem_maintain_partitions()"))
        # Wait until the second call is blocked behind the first (on the advisory lock).
        async with asyncio.timeout(30):
            while not await admin.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)", second_pid
            ):
                assert not racing.done(), racing
                await asyncio.sleep(0.01)
        await tx.commit()
        async with asyncio.timeout(30):
            assert await racing == 0
        assert len(await _partitions(admin)) == 3

        # And a burst of callers at once, from scratch.
        await admin.execute(f"DROP TABLE {_month_name(today)}")
        conns = [first, second]
        results = await asyncio.gather(*(c.fetchval("SELECT tandem_maintain_partitions()") for c in conns))
        assert sorted(results) == [0, 1]
        assert len(await _partitions(admin)) == 3
    finally:
        for conn in (admin, first, second):
            await conn.close()


async def test_app_cannot_create_partitions_for_arbitrary_months(app_conn) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_conn.fetchval("SELECT tandem_ensure_audit_partition('2040-01-01')")
