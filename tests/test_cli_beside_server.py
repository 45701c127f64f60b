"""`tandem` commands while `tandem serve` runs on the same embedded data folder: they use the
server's PostgreSQL (no second cluster, no boot) and its token secret, and leave it running.
`token issue` without a secret to find fails, saying where it looked.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.core import auth
from tests.serverproc import TANDEM, Servers, postgres_pids, server_env, servers_for
from tests.test_cli import ok, one_line_error, states, tandem


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


def test_commands_use_the_running_servers_postgres(servers: Servers) -> None:
    data_dir = servers.data_dir()
    server = servers.start(env=server_env(TANDEM_DATA_DIR=str(data_dir)), ready_timeout_s=240)
    postmasters = postgres_pids(data_dir)
    assert postmasters, "the server embeds PostgreSQL"
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    tenant = str(uuid.uuid4())

    timings: dict[str, float] = {}

    def run(*args: str) -> str:
        started = time.monotonic()
        result = tandem(*args, env=env)
        timings[args[0] + " " + args[1]] = time.monotonic() - started
        assert "PostgreSQL is embedded" not in result.stderr, "the command started its own PostgreSQL"
        return ok(result)

    assert {state for _name, state in states(run("migrate", "status")).values()} == {"applied"}
    workspace = run("workspace", "create", "--tenant", tenant, "--owner", "alice", "Notes").strip()
    document = json.loads(run("document", "create", "--tenant", tenant, workspace, "Plan", "--json"))
    assert document["title"] == "Plan"
    assert run("history", document["doc_id"], "--tenant", tenant, "--json") is not None
    print("seconds per command beside a running server:", timings)

    assert set(postgres_pids(data_dir)) == set(postmasters), "the commands stopped or restarted its PostgreSQL"
    assert server.get("/healthz").status_code == 200
    assert server.stop(timeout_s=30) == 0, server.log_tail()
    assert postgres_pids(data_dir) == []


def test_a_second_server_is_still_refused_while_commands_are_not(servers: Servers) -> None:
    data_dir = servers.data_dir()
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    first = servers.start(env=env, ready_timeout_s=240)
    ok(tandem("migrate", "status", env=env))

    second = servers.start(env=env, ready=False)
    assert second.wait(timeout_s=30) == 1
    assert f"another Tandem server is using the data folder {data_dir}" in second.log_text()
    assert first.get("/healthz").status_code == 200


def test_token_issue_from_another_folder_fails_naming_where_it_looked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [TANDEM, "token", "issue", "--tenant", str(uuid.uuid4()), "--agent", "alice"],
        env=server_env(TANDEM_JWT_SECRET=None), cwd=elsewhere, capture_output=True, text=True, timeout=60, check=False,
    )

    error = one_line_error(result)
    assert "TANDEM_JWT_SECRET is unset" in error
    assert str(elsewhere / ".tandem" / "jwt_secret") in error
    assert result.stdout == ""
    assert list(elsewhere.iterdir()) == [], "no secret (nor data folder) was made up"


def test_token_issue_uses_the_secret_of_the_running_server(servers: Servers) -> None:
    data_dir = servers.data_dir()
    env = server_env(TANDEM_DATA_DIR=str(data_dir), TANDEM_JWT_SECRET=None)
    servers.start(env=env, ready_timeout_s=240)
    token = ok(tandem("token", "issue", "--tenant", str(uuid.uuid4()), "--agent", "alice", env=env)).strip()

    secret = (data_dir / "jwt_secret").read_text().strip()
    assert isinstance(auth.verify_token(secret, token), auth.Principal)


def test_status_beside_a_running_embedded_server_reads_its_database(servers: Servers) -> None:
    data_dir = servers.data_dir()
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    server = servers.start(env=env, ready_timeout_s=240)
    postmasters = postgres_pids(data_dir)

    result = tandem("status", "--json", env=env)
    status = json.loads(ok(result))

    assert status["database"] == "reachable", status
    assert status["schema_version"] is not None and status["pending_migrations"] == []
    assert len(status["nodes"]) >= 1, "the running server's pool is connected"
    assert "PostgreSQL is embedded" not in result.stderr, "status started its own PostgreSQL"
    assert set(postgres_pids(data_dir)) == set(postmasters)
    assert server.get("/healthz").status_code == 200


def test_quickstart_names_the_port_the_running_server_listens_on(servers: Servers) -> None:
    data_dir = servers.data_dir()
    server = servers.start(env=server_env(TANDEM_DATA_DIR=str(data_dir)), ready_timeout_s=240)
    record = data_dir / "server.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text()) == {"host": "127.0.0.1", "port": server.port, "pid": server.server_pid}

    # No --port nor TANDEM_PORT: the URLs are the running server's, not the default 8000.
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    shown = json.loads(ok(tandem("quickstart", "--json", env=env)))
    assert shown["urls"]["ws"] == f"ws://127.0.0.1:{server.port}/ws"
    assert shown["urls"]["yjs"].startswith(f"ws://127.0.0.1:{server.port}/yjs/")
    # A port that is given wins, from the flag or the environment.
    assert json.loads(ok(tandem("quickstart", "--json", "--port", "9001", env=env)))["urls"]["ws"].endswith(":9001/ws")
    port_env = {**env, "TANDEM_PORT": "9002"}
    assert json.loads(ok(tandem("quickstart", "--json", env=port_env)))["urls"]["ws"].endswith(":9002/ws")

    assert server.stop(timeout_s=30) == 0, server.log_tail()
    assert not record.exists(), "a stopped server leaves no record behind"
