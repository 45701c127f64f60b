"""A newcomer's first minute, as real processes: `tandem serve` on the embedded default says in its
log (JSON lines when not a terminal) where to connect and with which token, and `tandem quickstart`
beside it makes a demo document whose printed SDK program and Yjs editor coordinates edit it
together. Also `tandem quickstart` with DATABASE_URL, and run twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.core import auth
from server.welcome import DEV_TENANT
from tests import wsclient
from tests.conftest import TestDatabase
from tests.e2e.editors import Editors
from tests.serverproc import REPO, TANDEM, ServerProcess, server_env, servers_for

SDK_TIMEOUT_S = 60


def welcome_line(server: ServerProcess) -> dict[str, Any]:
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    found = [line for line in lines if line.get("event") == "server.welcome"]
    assert len(found) == 1, server.log_tail()
    return found[0]


def quickstart(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [TANDEM, "quickstart", "--json", *args],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


async def run_python(source: str, tmp: Path, name: str) -> asyncio.subprocess.Process:
    path = tmp / name
    path.write_text(source)
    return await asyncio.create_subprocess_exec(
        sys.executable, str(path), env={**server_env(), "PYTHONPATH": str(REPO / "clients")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str], Path]]:
    """One `tandem serve` on an embedded data folder (JSON log lines: its output is a file)."""
    for servers in servers_for(tmp_path_factory.mktemp("quickstart")):
        data_dir = servers.data_dir()
        env = server_env(TANDEM_DATA_DIR=str(data_dir), TANDEM_JWT_SECRET=None)
        server = servers.start(env=env, ready_timeout_s=240)
        yield server, {**env, "TANDEM_PORT": str(server.port)}, data_dir


async def test_the_start_log_says_where_to_connect_with_a_dev_token_and_its_expiry(
    embedded: tuple[ServerProcess, dict[str, str], Path], tmp_path: Path
) -> None:
    server, _env, data_dir = embedded
    line = welcome_line(server)

    base = f"ws://127.0.0.1:{server.port}"
    assert line["urls"] == {"ws": f"{base}/ws", "yjs": f"{base}/yjs/{{workspace_id}}/{{doc_id}}"}
    principal = auth.check_token((data_dir / "jwt_secret").read_text().strip(), line["token"])
    assert isinstance(principal, auth.Principal)
    assert (principal.tenant_id, principal.agent_id) == (DEV_TENANT, "dev")
    assert datetime.fromisoformat(line["expires_at"]) == principal.expires_at
    assert line["next"] == "tandem quickstart"
    assert "auth.dev_token" not in server.log_text()

    # The three SDK lines, as printed, connect, make a workspace and write into a document.
    sdk = line["sdk"]
    assert len(sdk) == 3
    body = textwrap.indent("\n".join([*sdk, "print(str(doc.text), flush=True)", "await client.close()"]), "    ")
    proc = await run_python(
        f"import asyncio\nimport tandem_client\n\nasync def main():\n{body}\n\nasyncio.run(main())\n",
        tmp_path,
        "start.py",
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), SDK_TIMEOUT_S)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode() == "Hello\n\n"


async def test_quickstart_beside_the_server_joins_an_sdk_agent_and_a_yjs_editor_on_one_document(
    embedded: tuple[ServerProcess, dict[str, str], Path], editors: Editors, tmp_path: Path
) -> None:
    server, env, data_dir = embedded
    page = tmp_path / "demo.html"
    first = quickstart(env, "--html", str(page))

    workspace_id, doc_id = uuid.UUID(first["workspace_id"]), uuid.UUID(first["doc_id"])
    base = f"ws://127.0.0.1:{server.port}"
    assert first["urls"] == {"ws": f"{base}/ws", "yjs": f"{base}/yjs/{workspace_id}", "yjs_room": str(doc_id)}
    assert first["tenant_id"] == str(DEV_TENANT) and first["agent_id"] == "demo-agent"
    principal = auth.check_token((data_dir / "jwt_secret").read_text().strip(), first["token"])
    assert isinstance(principal, auth.Principal)
    assert datetime.fromisoformat(first["expires_at"]) == principal.expires_at
    assert page.read_text() == first["html"]
    for needle in (first["urls"]["yjs"], str(doc_id), first["token"], "WebsocketProvider"):
        assert needle in first["html"]

    # A stock Yjs editor with the printed serverUrl, room and token; then the printed SDK program.
    editor = await editors.start_at(first["urls"]["yjs"], first["urls"]["yjs_room"], first["token"])
    sdk = await run_python(first["sdk"], tmp_path, "demo.py")
    assert sdk.stdout is not None
    waiting = await asyncio.wait_for(sdk.stdout.readline(), SDK_TIMEOUT_S)
    assert waiting.startswith(b"waiting for another client to finish a line"), waiting
    await editor.wait_for(lambda e: "Hello from the Python SDK\n" in e.text)
    # Typed a key at a time, as in the page: an unfinished line does not end the program.
    await editor.type("Hello from the bro")
    watcher = await editors.start_at(first["urls"]["yjs"], first["urls"]["yjs_room"], first["token"])
    await watcher.wait_for(lambda e: e.text.endswith("Hello from the bro"))
    await editor.type("wser\n")
    stdout, stderr = await asyncio.wait_for(sdk.communicate(), SDK_TIMEOUT_S)
    assert sdk.returncode == 0, stderr.decode()
    assert stdout.decode().endswith("Hello from the Python SDK\nHello from the browser\n\n"), stdout.decode()

    second = quickstart(env)
    assert (second["workspace_id"], second["doc_id"]) == (first["workspace_id"], first["doc_id"])
    assert first["created"] == {"workspace": True, "document": True}
    assert second["created"] == {"workspace": False, "document": False}
    assert server.running


def test_quickstart_with_database_url_reuses_its_demo(db: TestDatabase) -> None:
    env = server_env(DATABASE_URL=db.admin_url, TANDEM_JWT_SECRET=wsclient.SECRET, TANDEM_PORT="8123")
    tenant = str(uuid.uuid4())
    first = quickstart(env, "--tenant", tenant, "--agent", "ada")
    second = quickstart(env, "--tenant", tenant, "--agent", "ada")
    other = quickstart(env, "--tenant", tenant, "--agent", "bob")

    assert first["created"] == {"workspace": True, "document": True}
    assert (second["workspace_id"], second["doc_id"]) == (first["workspace_id"], first["doc_id"])
    assert second["created"] == {"workspace": False, "document": False}
    assert other["workspace_id"] != first["workspace_id"], "another agent's demo is its own"
    assert first["urls"]["ws"] == "ws://127.0.0.1:8123/ws"
    assert isinstance(auth.check_token(wsclient.SECRET, first["token"]), auth.Principal)
