"""Every migration has an exact inverse (NOTES 20): up -> down -> up leaves the same schema.

The seed's rollback was one lump (every drop with CASCADE), most files had no down at all, and
the storage/comment and seed-data migrations left their changes behind on rollback.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import asyncpg

from server.db import migrate
from tests.schema_helpers import create_database, drop_database, schema_dump

SEED_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")


async def _major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


async def _leftovers(conn: asyncpg.Connection) -> list[str]:
    """Objects of ours still in the database, apart from the runner's schema_migrations."""
    return [
        r["what"]
        for r in await conn.fetch(
            """
            SELECT 'relation ' || relname AS what FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relname NOT LIKE 'schema_migrations%'
            UNION ALL
            SELECT 'type ' || typname FROM pg_type
             WHERE typnamespace = 'public'::regnamespace AND typname NOT IN ('schema_migrations', '_schema_migrations')
            UNION ALL
            SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
            UNION ALL
            SELECT 'policy ' || polname FROM pg_policy
            UNION ALL
            SELECT 'statistics ' || stxname FROM pg_statistic_ext WHERE stxnamespace = 'public'::regnamespace
            UNION ALL
            SELECT 'default acl' FROM pg_default_acl
            UNION ALL
            SELECT 'comment on ' || objoid::regclass::text FROM pg_description d
             JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
             WHERE c.relnamespace = 'public'::regnamespace
            """
        )
    ]


async def test_each_down_exactly_inverts_its_up_and_up_again_rebuilds_the_same_schema(
    empty_db, postgres, tmp_path
) -> None:
    # NOTES 20: one exact inverse per up, applied one at a time in reverse order.
    settings = postgres.settings
    migrations = migrate.load(settings.migrations_dir)
    conn = await asyncpg.connect(empty_db.admin_url)
    try:
        major = await _major(conn)
        await migrate.status(conn, settings.migrations_dir)  # creates schema_migrations only
        dumps = [schema_dump(empty_db.admin_url, major)]
        for i, m in enumerate(migrations, start=1):
            # One file at a time: `up` applies everything pending, so give it a growing prefix.
            applied = await migrate.up(conn, _prefix_dir(settings, i, tmp_path), settings.owner_role)
            assert [a.version for a in applied] == [m.version]
            dumps.append(schema_dump(empty_db.admin_url, major))
            if m.name != "seed_dev_data":  # rows only, and only in *_dev / *_test databases
                assert dumps[-1] != dumps[-2], f"{m.version}_{m.name} changed nothing"

        for i, m in enumerate(reversed(migrations)):
            rolled = await migrate.down(conn, settings.migrations_dir, settings.owner_role, steps=1)
            assert [r.version for r in rolled] == [m.version]
            after = schema_dump(empty_db.admin_url, major)
            expected = dumps[len(migrations) - 1 - i]
            assert after == expected, f"down of {m.version}_{m.name} is not the inverse of its up: " + _diff(
                expected, after
            )

        assert await _leftovers(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0

        applied = await migrate.up(conn, settings.migrations_dir, settings.owner_role)
        assert len(applied) == len(migrations)
        again = schema_dump(empty_db.admin_url, major)
        assert again == dumps[-1], _diff(dumps[-1], again)
    finally:
        await conn.close()


def _prefix_dir(settings, upto: int, tmp_path: Path) -> Path:
    """A folder holding the first `upto` migration files, so `migrate.up` applies one more each time."""
    folder = tmp_path / f"prefix_{upto:04d}"
    folder.mkdir()
    for path in sorted(Path(settings.migrations_dir).glob("*.sql"))[:upto]:
        shutil.copy(path, folder / path.name)
    return folder


def _diff(expected: list[str], actual: list[str]) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(expected, actual, "expected", "actual", lineterm="", n=1))


def test_every_migration_has_an_up_and_an_explicit_down_without_cascade_or_if_exists(postgres) -> None:
    # NOTES 20: the seed's rollback dropped everything WITH CASCADE and IF EXISTS, hiding mistakes.
    for m in migrate.load(postgres.settings.migrations_dir):
        assert m.up, m.name
        assert m.down, f"{m.version}_{m.name} has no down"
        assert m.transaction, f"{m.version}_{m.name} should run in a transaction"
        code = re.sub(r"--[^\n]*", "", m.down).upper()
        assert "CASCADE" not in code, m.name
        assert "IF EXISTS" not in code, m.name


async def test_app_role_owns_nothing_after_migrations_and_migrations_ran_as_owner(db) -> None:
    conn = await asyncpg.connect(db.admin_url)
    try:
        owners = await conn.fetch(
            """
            SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relname NOT LIKE 'schema_migrations%'
            UNION
            SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
            UNION
            SELECT DISTINCT pg_get_userbyid(typowner) FROM pg_type
             WHERE typnamespace = 'public'::regnamespace AND typname NOT LIKE '%schema_migrations'
            """
        )
        assert {r["owner"] for r in owners} == {"tandem_owner"}
    finally:
        await conn.close()


async def test_dev_seed_rows_only_in_dev_or_test_databases_and_down_removes_exactly_them(postgres, db) -> None:
    settings = postgres.settings
    # A database named like a test database gets the seed; the suite's own databases do not.
    conn = await asyncpg.connect(db.admin_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
        assert await conn.fetchval("SELECT count(*) FROM workflows") == 0
    finally:
        await conn.close()

    name = f"tandem_seed_{uuid.uuid4().hex[:8]}_test"
    url = await create_database(postgres.admin_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
            await migrate.up(conn, settings.migrations_dir, settings.owner_role)
            counts = "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM workflows), " \
                "(SELECT count(*) FROM workspaces), (SELECT count(*) FROM workspace_members)"
            assert tuple(await conn.fetchrow(counts)) == (2, 1, 1, 2)
            # A row of the seed tenant that the seed did not write survives the seed's down.
            await conn.execute(
                "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 'own', 'Mine', 'me')", SEED_TENANT
            )
            rolled = []
            while not rolled or rolled[-1].name != "seed_dev_data":
                rolled += await migrate.down(conn, settings.migrations_dir, settings.owner_role, steps=1)
            assert tuple(await conn.fetchrow(counts)) == (1, 0, 0, 0)
            assert await conn.fetchval("SELECT title FROM tasks") == "Mine"
            await migrate.up(conn, settings.migrations_dir, settings.owner_role)
            assert tuple(await conn.fetchrow(counts)) == (3, 1, 1, 2)
        finally:
            await conn.close()
    finally:
        await drop_database(postgres.admin_url, name)
