"""`tandem serve` as a real process: the README quick start, an external DATABASE_URL, /metrics,
and stopping on SIGTERM. Servers run via tests/serverproc.py on free loopback ports.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from server.core.settings import load_settings
from server.db.embedded import EmbeddedPostgres
from tests.serverproc import (
    REPO,
    ServerProcess,
    Servers,
    postgres_pids,
    server_env,
    servers_for,
)

if TYPE_CHECKING:
    from tests.conftest import Postgres, TestDatabase

STOP_TIMEOUT_S = 30.0


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


def quickstart_serve_command() -> str:
    """The first line of the README's first ```sh block: install and serve."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert block, "README.md has no ```sh block"
    first = block.group(1).splitlines()[0].strip()
    assert first.endswith("tandem serve"), first
    return first


def migration_versions() -> list[str]:
    return sorted(p.name.split("_", 1)[0] for p in load_settings().migrations_dir.glob("[0-9]*.sql"))


def stop_cleanly(server: ServerProcess) -> None:
    assert server.stop(timeout_s=STOP_TIMEOUT_S) == 0, server.log_tail()


async def test_readme_quickstart_embeds_postgres_and_keeps_data_across_restarts(servers: Servers) -> None:
    command = quickstart_serve_command()
    data_dir = servers.data_dir()
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    # Installing the package is part of the command: allow for it in the first readiness wait.
    first = servers.start(command, env=env, ready_timeout_s=240)

    health = first.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["database"]["up"] is True
    assert health["database"]["embedded"] is True
    assert health["database"]["migrations_applied_at_start"] == len(migration_versions())
    assert health["database"]["schema_version"] == migration_versions()[-1]
    assert "PostgreSQL is embedded" in first.log_text()
    assert postgres_pids(data_dir), "the embedded PostgreSQL runs in the data folder"

    conn = await asyncpg.connect(EmbeddedPostgres(data_dir).admin_url)
    try:
        await conn.execute("CREATE TABLE quickstart_marker (note text)")
        await conn.execute("INSERT INTO quickstart_marker VALUES ('written by the first run')")
    finally:
        await conn.close()

    stop_cleanly(first)
    assert postgres_pids(data_dir) == [], "stopping the server stops its PostgreSQL"

    second = servers.start(command, env=env, ready_timeout_s=240)
    health = second.get("/healthz").json()
    assert health["database"]["up"] is True
    assert health["database"]["migrations_applied_at_start"] == 0
    assert health["database"]["schema_version"] == migration_versions()[-1]
    conn = await asyncpg.connect(EmbeddedPostgres(data_dir).admin_url)
    try:
        assert await conn.fetchval("SELECT note FROM quickstart_marker") == "written by the first run"
    finally:
        await conn.close()

    stop_cleanly(second)
    assert postgres_pids(data_dir) == []


def test_second_server_on_same_data_folder_exits_with_one_line_error(servers: Servers) -> None:
    data_dir = servers.data_dir()
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    first = servers.start(env=env)

    second = servers.start(env=env, ready=False)
    code = second.wait(timeout_s=STOP_TIMEOUT_S)

    assert code == 1
    log = second.log_text()
    assert f"tandem: error: another Tandem server is using the data folder {data_dir}" in log
    assert "Traceback" not in log
    assert first.get("/healthz").status_code == 200, "the first server is unaffected"
    stop_cleanly(first)
    assert postgres_pids(data_dir) == []


def test_a_taken_port_fails_at_once_naming_it_before_anything_starts(servers: Servers) -> None:
    data_dir = servers.data_dir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = servers.start(env=server_env(TANDEM_DATA_DIR=str(data_dir)), port=port, ready=False)
        assert server.wait(timeout_s=STOP_TIMEOUT_S) == 1

    log = server.log_text()
    assert f"tandem: error: port {port} on 127.0.0.1 is in use; pass --port or TANDEM_PORT" in log
    # Nothing started and nothing claimed the port: no welcome, no embedded PostgreSQL.
    for absent in ("server.ready", "server.welcome", "Tandem is ready", "PostgreSQL is embedded", "Traceback"):
        assert absent not in log, log
    assert not (data_dir / "pgdata").exists()
    assert postgres_pids(data_dir) == []


def test_database_url_starts_no_postgres_and_migrates_it(servers: Servers, empty_db: TestDatabase) -> None:
    data_dir = servers.data_dir()
    env = server_env(DATABASE_URL=empty_db.admin_url, TANDEM_DATA_DIR=str(data_dir))
    server = servers.start(env=env)

    response = server.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["node_id"]
    assert body["database"] == {
        "up": True,
        "embedded": False,
        "schema_version": migration_versions()[-1],
        "migrations_applied_at_start": len(migration_versions()),
    }
    assert not (data_dir / "pgdata").exists()
    assert postgres_pids(data_dir) == []
    stop_cleanly(server)


async def test_healthz_answers_503_when_the_database_goes_away(
    servers: Servers, postgres: Postgres, db: TestDatabase
) -> None:
    server = servers.start(env=server_env(DATABASE_URL=db.admin_url, TANDEM_NODE_ID="node-under-test"))
    assert server.get("/healthz").json()["node_id"] == "node-under-test"

    # Dropping the database terminates the pool's connections, and new ones are refused.
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute(f"DROP DATABASE {db.name} WITH (FORCE)")
    finally:
        await admin.close()

    response = server.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["database"]["up"] is False
    assert "tandem_db_up 0.0" in server.get("/metrics").text
    stop_cleanly(server)


def test_metrics_is_prometheus_text_with_tandem_metrics(servers: Servers, db: TestDatabase) -> None:
    server = servers.start(env=server_env(DATABASE_URL=db.admin_url, TANDEM_MAINTENANCE_INTERVAL_S="0.2"))
    server.get("/healthz")
    server.get("/no-such-route")

    response = server.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "process_resident_memory_bytes",
        "tandem_node_info",
        "tandem_db_up 1.0",
        "tandem_migrations_applied_at_start 0.0",
        "tandem_http_request_duration_seconds_bucket",
    ):
        assert name in text, name
    assert 'tandem_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'tandem_http_requests_total{method="GET",route="<unmatched>",status="404"}' in text

    # The background partition maintenance runs every TANDEM_MAINTENANCE_INTERVAL_S.
    deadline = time.monotonic() + 30
    while 'tandem_db_maintenance_runs_total{outcome="ok"}' not in text and time.monotonic() < deadline:
        text = server.get("/metrics").text
    assert 'tandem_db_maintenance_runs_total{outcome="ok"}' in text
    assert 'outcome="failed"' not in text
    stop_cleanly(server)


def test_sigterm_stops_python_m_server_with_exit_0(servers: Servers, db: TestDatabase) -> None:
    server = servers.start([sys.executable, "-m", "server"], env=server_env(DATABASE_URL=db.admin_url))

    server.signal(signal.SIGTERM)

    assert server.wait(timeout_s=STOP_TIMEOUT_S) == 0
    log = server.log_text()
    assert '"event": "server.stopped"' in log
    assert "Traceback" not in log


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    # In a fresh interpreter: the test process's own collector is left alone.
    code = (
        "import gc, server.app as a; a.tune_gc(); "
        "print(gc.get_freeze_count(), *gc.get_threshold(), a.GC_YOUNG_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    frozen, young, _, _, expected = map(int, out.split())
    assert young == expected > 700  # CPython's default is 700
    assert frozen > 10_000  # the imported modules, classes and functions
