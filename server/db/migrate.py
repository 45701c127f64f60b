"""Apply and roll back `migrations/*.sql`, and create the roles they grant to.

Files use dbmate's format (`-- migrate:up` / `-- migrate:down`, version = leading digits), so
dbmate itself can run them too. We keep a small runner instead of shelling out to dbmate
because we need three things it lacks: a checksum per applied file (an edited migration is
refused), running each file as the owner role, and an advisory lock so that nodes starting
together apply each file once. Each file runs in its own transaction unless its up marker says
`transaction:false`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

LOCK_KEY = 7_406_332_118  # pg_advisory_lock key: "tandem migrations"
_FILE = re.compile(r"^(\d+)_([a-z0-9_]+)\.sql$")
# The schema all migrations produce, beside them for review (server/tools/schema_dump.py): not one.
SCHEMA_FILE = "schema.sql"
_UP = re.compile(r"^--\s*migrate:up(?P<opts>[^\n]*)$", re.MULTILINE)
_DOWN = re.compile(r"^--\s*migrate:down(?P<opts>[^\n]*)$", re.MULTILINE)


class MigrationError(RuntimeError):
    """A migration cannot run: edited after being applied, missing, or malformed."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    up: str = field(repr=False)
    down: str = field(repr=False)
    checksum: str = field(repr=False)
    transaction: bool = True

    @classmethod
    def parse(cls, path: Path) -> "Migration":
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: name must be NNNN_verb_noun.sql")
        text = path.read_text()
        up, down = _UP.search(text), _DOWN.search(text)
        if not up or not down or down.start() < up.end():
            raise MigrationError(f"{path.name}: needs '-- migrate:up' then '-- migrate:down'")
        return cls(
            version=match.group(1),
            name=match.group(2),
            up=text[up.end() : down.start()].strip(),
            down=text[down.end() :].strip(),
            checksum=hashlib.sha256(text.encode()).hexdigest(),
            transaction="transaction:false" not in up.group("opts"),
        )


@dataclass(frozen=True)
class Status:
    version: str
    name: str
    state: str  # applied | pending | edited | missing


def load(directory: Path) -> list[Migration]:
    paths = sorted(p for p in Path(directory).glob("*.sql") if p.name != SCHEMA_FILE)
    migrations = [Migration.parse(p) for p in paths]
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version")
    return migrations


async def ensure_roles(conn: asyncpg.Connection, owner_role: str, app_role: str, app_password: str | None) -> None:
    """Create the owner and application roles (cluster-wide), this database's schema grants, and
    who may connect to it (the app role; PUBLIC may not).

    The owner role owns every object and cannot log in; the app role logs in, owns nothing and
    is not superuser, so forced row-level security applies to it.
    """
    await conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY + 1})")
    try:
        for role, login in ((owner_role, False), (app_role, True)):
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                login_sql = "LOGIN" if login else "NOLOGIN"
                try:
                    await conn.execute(
                        f"CREATE ROLE {_ident(role)} {login_sql} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                    )
                except asyncpg.DuplicateObjectError:
                    pass  # created meanwhile from another database of the same cluster
        if app_password:
            sql = await conn.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", app_role, app_password)
            await conn.execute(sql)
        is_super = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not is_super:
            await conn.execute(f"GRANT {_ident(owner_role)} TO current_user")
        await conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {_ident(owner_role)}")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {_ident(app_role)}")
        # Nothing in public is anyone's by default: every privilege is granted by a migration.
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        # LISTEN needs nothing but CONNECT, and the NOTIFY channel carries every tenant's small
        # updates and events: only the app role (and the owner, superusers) may connect
        # (docs/operations.md, "Threat model").
        database = await conn.fetchval("SELECT quote_ident(current_database())")
        await conn.execute(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
        await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {_ident(app_role)}")
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY + 1})")


def _ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise MigrationError(f"role name {name!r} must be a plain lowercase identifier")
    return name


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version text PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        REVOKE ALL ON schema_migrations FROM PUBLIC;
        """
    )


async def _applied(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return {r["version"]: r for r in rows}


def _check_unedited(migrations: list[Migration], applied: dict[str, asyncpg.Record]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        m = by_version.get(version)
        if m is None:
            raise MigrationError(f"applied migration {version}_{row['name']} has no file any more")
        if m.checksum != row["checksum"]:
            raise MigrationError(
                f"applied migration {m.version}_{m.name}.sql was edited after it was applied; "
                "write a new migration instead"
            )


async def _run(conn: asyncpg.Connection, m: Migration, sql: str, owner_role: str, record: str) -> None:
    async def body() -> None:
        await conn.execute(f"SET ROLE {_ident(owner_role)}")
        try:
            if sql:
                await conn.execute(sql)
        finally:
            await conn.execute("RESET ROLE")
        if record == "insert":
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum,
            )
        else:
            await conn.execute("DELETE FROM schema_migrations WHERE version = $1", m.version)

    if m.transaction:
        async with conn.transaction():
            await body()
    else:
        await body()


class _Locked:
    """Session-level advisory lock: two runners at once apply each file once."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        await self.conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
        await _ensure_table(self.conn)

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})")


async def up(conn: asyncpg.Connection, directory: Path, owner_role: str) -> list[Migration]:
    """Apply every pending migration in order; returns those applied by this call."""
    migrations = load(directory)
    done: list[Migration] = []
    async with _Locked(conn):
        applied = await _applied(conn)
        _check_unedited(migrations, applied)
        for m in migrations:
            if m.version not in applied:
                await _run(conn, m, m.up, owner_role, "insert")
                done.append(m)
    return done


async def down(conn: asyncpg.Connection, directory: Path, owner_role: str, steps: int | None = 1) -> list[Migration]:
    """Roll back the last `steps` applied migrations (None: all), newest first."""
    migrations = load(directory)
    done: list[Migration] = []
    async with _Locked(conn):
        applied = await _applied(conn)
        _check_unedited(migrations, applied)
        targets = [m for m in reversed(migrations) if m.version in applied]
        for m in targets if steps is None else targets[:steps]:
            await _run(conn, m, m.down, owner_role, "delete")
            done.append(m)
    return done


async def current_version(conn: asyncpg.Connection) -> str | None:
    """The newest migration applied (None: none)."""
    version: str | None = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return version


async def status(conn: asyncpg.Connection, directory: Path) -> list[Status]:
    migrations = load(directory)
    await _ensure_table(conn)
    applied = await _applied(conn)
    result = []
    for m in migrations:
        row = applied.pop(m.version, None)
        state = "pending" if row is None else ("applied" if row["checksum"] == m.checksum else "edited")
        result.append(Status(m.version, m.name, state))
    result += [Status(v, r["name"], "missing") for v, r in applied.items()]
    return sorted(result, key=lambda s: s.version)
