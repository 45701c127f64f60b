"""`tandem migrate up | down [N] | down --all | status` run as real processes.

Against a fresh database through DATABASE_URL, and once without it (the embedded PostgreSQL,
which must be stopped again when the command ends). Expected failures exit 1 with one line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from server.core.settings import load_settings
from server.db.pgcluster import free_port
from tests.serverproc import REPO, TANDEM, postgres_pids, server_env

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

COMMAND_TIMEOUT_S = 180.0


def tandem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TANDEM, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `tandem: error:` line of a failed command (and no traceback)."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tandem: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def files(directory: Path | None = None) -> list[tuple[str, str]]:
    """(version, name) of each migration file, in order."""
    directory = directory or load_settings().migrations_dir
    return [tuple(p.stem.split("_", 1)) for p in sorted(directory.glob("[0-9]*.sql"))]  # type: ignore[misc]


def states(status_output: str) -> dict[str, tuple[str, str]]:
    """`migrate status` lines `version  name  state` as {version: (name, state)}."""
    parsed = {}
    for line in status_output.splitlines():
        version, name, state = line.split()
        parsed[version] = (name, state)
    return parsed


def lines_starting(output: str, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in output.splitlines() if line.startswith(prefix)]


async def applied_versions(admin_url: str) -> list[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data folder whose parents the `postgres` OS user can traverse (the tests may run as root)."""
    parent = Path(tempfile.mkdtemp(prefix="tandem-cli-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        assert postgres_pids(parent / "data") == [], "a migrate command left its PostgreSQL running"
        shutil.rmtree(parent, ignore_errors=True)


async def test_status_up_down_and_down_all_through_database_url(empty_db: TestDatabase) -> None:
    env = server_env(DATABASE_URL=empty_db.admin_url)
    expected = files()
    versions = [v for v, _ in expected]

    assert states(ok(tandem("migrate", "status", env=env))) == {v: (n, "pending") for v, n in expected}

    out = ok(tandem("migrate", "up", env=env))
    assert lines_starting(out, "applied ") == [f"{v} {n}" for v, n in expected]
    assert states(ok(tandem("migrate", "status", env=env))) == {v: (n, "applied") for v, n in expected}
    assert await applied_versions(empty_db.admin_url) == versions
    assert ok(tandem("migrate", "up", env=env)).strip() == "nothing to apply"

    out = ok(tandem("migrate", "down", "1", env=env))
    assert lines_starting(out, "rolled back ") == [" ".join(expected[-1])]
    after_one = states(ok(tandem("migrate", "status", env=env)))
    assert after_one[versions[-1]][1] == "pending"
    assert {after_one[v][1] for v in versions[:-1]} == {"applied"}

    out = ok(tandem("migrate", "down", "--all", "--yes", env=env))
    assert lines_starting(out, "rolled back ") == [f"{v} {n}" for v, n in reversed(expected[:-1])]
    assert states(ok(tandem("migrate", "status", env=env))) == {v: (n, "pending") for v, n in expected}
    assert await applied_versions(empty_db.admin_url) == []
    assert ok(tandem("migrate", "down", "--all", "--yes", env=env)).strip() == "nothing to roll back"


async def test_down_with_both_count_and_all_is_refused(empty_db: TestDatabase) -> None:
    env = server_env(DATABASE_URL=empty_db.admin_url)
    assert one_line_error(tandem("migrate", "down", "2", "--all", env=env)) == (
        "tandem: error: give N or --all, not both"
    )


async def test_edited_applied_migration_is_refused(empty_db: TestDatabase, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(load_settings().migrations_dir, migrations)
    env = server_env(DATABASE_URL=empty_db.admin_url, TANDEM_MIGRATIONS_DIR=str(migrations))
    ok(tandem("migrate", "up", env=env))
    version, name = files(migrations)[0]
    edited = migrations / f"{version}_{name}.sql"
    edited.write_text(edited.read_text() + "\n-- edited after it was applied\n")

    error = one_line_error(tandem("migrate", "up", env=env))

    assert f"{version}_{name}.sql was edited after it was applied" in error
    assert states(ok(tandem("migrate", "status", env=env)))[version] == (name, "edited")
    assert "was edited after it was applied" in one_line_error(tandem("migrate", "down", "--all", "--yes", env=env))
    assert await applied_versions(empty_db.admin_url) == [v for v, _ in files(migrations)]


async def test_two_concurrent_migrate_up_apply_each_file_once(empty_db: TestDatabase) -> None:
    env = server_env(DATABASE_URL=empty_db.admin_url)
    procs = [
        subprocess.Popen(
            [TANDEM, "migrate", "up"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        results.append((proc.returncode, out, err))

    for code, out, err in results:
        assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    applied = [line for _, out, _ in results for line in lines_starting(out, "applied ")]
    assert sorted(applied) == [f"{v} {n}" for v, n in files()], "each file applied by exactly one process"
    assert await applied_versions(empty_db.admin_url) == [v for v, _ in files()]


def test_migrate_without_database_url_runs_embedded_postgres_only_meanwhile(embedded_data_dir: Path) -> None:
    env = server_env(TANDEM_DATA_DIR=str(embedded_data_dir))
    expected = files()

    out = ok(tandem("migrate", "up", env=env))
    assert lines_starting(out, "applied ") == [f"{v} {n}" for v, n in expected]
    assert (embedded_data_dir / "pgdata" / "PG_VERSION").exists()
    assert postgres_pids(embedded_data_dir) == []

    assert states(ok(tandem("migrate", "status", "--data-dir", str(embedded_data_dir), env=server_env()))) == {
        v: (n, "applied") for v, n in expected
    }
    assert postgres_pids(embedded_data_dir) == []


def test_unreachable_database_url_is_one_line_error() -> None:
    env = server_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/tandem")
    error = one_line_error(tandem("migrate", "status", env=env))
    assert "Connect call failed" in error or "refused" in error.lower(), error


def test_the_operator_commands_do_not_load_the_web_stack() -> None:
    """`tandem token issue` and the other admin commands need the database, not Starlette,
    uvicorn or the rooms: only `tandem serve` imports the app."""
    code = "import sys, server.tools.cli; print(sorted(m for m in ('starlette', 'uvicorn', 'server.app', 'server.documents.rooms') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout
