"""Every printing `tandem` command stops at once and quietly when its reader goes away.

Each command runs as a real process whose stdout is a pipe; the test reads the first line and
closes its end, as `tandem ... | head -1` does. The document's history, text and blame are each
longer than a pipe buffer (64 KiB), so the command is still writing when the pipe closes. It must
exit promptly (0, or 141 as a process killed by SIGPIPE), with no traceback and no
"Exception ignored" on stderr, and leave no connection behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest
from pycrdt import Doc, Text

from crdt.document import CONTENT, Document
from server.db import database, store
from server.tools import admin
from server.workspaces import directory as workspaces
from tests.conftest import TENANT_A
from tests.serverproc import REPO, TANDEM, server_env

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

A = str(TENANT_A)
EXIT_TIMEOUT_S = 60.0  # generous for a loaded machine; the failure this guards against is forever
PIPE_BUFFER_BYTES = 64 * 1024
N_OPS = 1200
LINE = "{:05d} " + "x" * 72 + "\n"  # one line of text per operation: 80 characters


@pytest.fixture
def env(db: TestDatabase) -> dict[str, str]:
    # Buffered stdout, as in an operator's shell (PYTHONUNBUFFERED changes how writes fail).
    return server_env(DATABASE_URL=db.admin_url, PYTHONUNBUFFERED=None)



async def long_document(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    """(workspace id, document id) of a document of `N_OPS` operations, each appending a line."""
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        workspace = await workspaces.create_workspace(conn, TENANT_A, "olga", "Pipes")
        doc = await workspaces.create_document(conn, "olga", workspace.workspace_id, "Long", "text")
    client = Doc(client_id=4242)
    client[CONTENT] = text = Text()
    captured: list[bytes] = []
    client.observe(lambda event: captured.append(event.update))
    server = Document()
    ops = []
    for i in range(N_OPS):
        text += LINE.format(i)
        applied = server.apply(captured[-1])
        ops.append(store.NewOperation("olga", applied.op_type.value, applied.clock_text(), captured[-1]))
    for start in range(0, N_OPS, 200):
        async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
            await store.append_operations(conn, doc.doc_id, ops[start : start + 200])
    async with store.tenant_transaction(pool, TENANT_A) as conn:
        await store.update_content(conn, doc.doc_id, str(text), None)
    assert len(str(text)) > PIPE_BUFFER_BYTES
    return workspace.workspace_id, doc.doc_id


def first_line_then_close(args: list[str], env: dict[str, str]) -> tuple[bytes, int, str, float]:
    """Run `tandem *args`, read one line of its stdout, close the pipe; (line, exit status,
    stderr, seconds from closing to exit). Fails if the process does not exit in time."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([TANDEM, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        closed = time.monotonic()
        try:
            status = proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"tandem {' '.join(args)} still running {EXIT_TIMEOUT_S}s after its stdout closed")
        waited = time.monotonic() - closed
        stderr.seek(0)
        return line, status, stderr.read().decode(errors="replace"), waited


def assert_quiet_stop(args: list[str], env: dict[str, str]) -> bytes:
    line, status, stderr, _waited = first_line_then_close(args, env)
    assert status in (0, 141), f"tandem {' '.join(args)}: exit {status}\nstderr:\n{stderr}"
    assert line.endswith(b"\n"), line
    for noise in ("Traceback", "Exception ignored", "BrokenPipe", "tandem: error"):
        assert noise not in stderr, f"tandem {' '.join(args)}:\n{stderr}"
    return line


async def test_document_commands_stop_quietly_on_a_closed_pipe(pool: asyncpg.Pool, env: dict[str, str]) -> None:
    _workspace, doc_id = await long_document(pool)
    doc = str(doc_id)
    assert assert_quiet_stop(["history", doc, "--tenant", A], env).split() == [b"seq", b"time", b"type", b"bytes", b"agent"]
    assert b'"seq": 1' in assert_quiet_stop(["history", doc, "--tenant", A, "--json"], env)
    assert assert_quiet_stop(["replay", doc, "--tenant", A], env) == LINE.format(0).encode()
    assert_quiet_stop(["replay", doc, "--tenant", A, "--format", "update"], env)  # binary, with newlines in the text
    assert assert_quiet_stop(["blame", doc, "--tenant", A], env).rstrip().endswith(LINE.format(0).rstrip().encode())
    assert b'"agent_id": "olga"' in assert_quiet_stop(["blame", doc, "--tenant", A, "--json"], env)
    assert assert_quiet_stop(["replay", doc, "--tenant", A, "--verify"], env).startswith(f"document {doc}".encode())


def shell(script: str, env: dict[str, str]) -> tuple[str, str]:
    """(stdout, stderr) of a bash script, run in its own process group so a hung pipeline is
    killed whole; fails if it does not finish in time."""
    proc = subprocess.Popen(["bash", "-c", script], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        return proc.communicate(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{script!r} still running after {EXIT_TIMEOUT_S}s")


async def test_history_into_head_exits_promptly(pool: asyncpg.Pool, env: dict[str, str]) -> None:
    # The shell pipeline as an operator types it; bash reports each side's exit status.
    _workspace, doc_id = await long_document(pool)
    stdout, stderr = shell(f'"{TANDEM}" history {doc_id} --tenant {A} | head -5; echo "status ${{PIPESTATUS[*]}}" >&2', env)
    assert len(stdout.splitlines()) == 5
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.splitlines()[-1] in ("status 0 0", "status 141 0"), stderr


async def test_operator_commands_stop_quietly_on_a_closed_pipe(pool: asyncpg.Pool, env: dict[str, str]) -> None:
    workspace, _doc = await long_document(pool)
    ws = str(workspace)
    assert_quiet_stop(["migrate", "up"], env)
    assert assert_quiet_stop(["migrate", "status"], env).rstrip().endswith(b"applied")
    with_secret = {**env, "TANDEM_JWT_SECRET": "s" * 32}  # token issue never makes a secret up
    assert assert_quiet_stop(["token", "issue", "--tenant", A, "--agent", "olga"], with_secret).count(b".") == 2
    uuid.UUID(assert_quiet_stop(["workspace", "create", "--tenant", A, "--owner", "olga", "Other"], env).decode().strip())
    assert assert_quiet_stop(["member", "add", "--tenant", A, ws, "bob", "--role", "viewer"], env) == b"bob viewer\n"
    uuid.UUID(assert_quiet_stop(["document", "create", "--tenant", A, ws, "Notes"], env).decode().strip())


async def test_closing_the_commands_pool_does_not_wait_for_a_held_connection(db: TestDatabase) -> None:
    # What `tandem history` did when printing failed: a connection still held, the pool closing.
    pool = await database.create_pool(db.app_url, min_size=1, max_size=1,
                                      connect_timeout_s=admin.CONNECT_TIMEOUT_S, command_timeout_s=admin.COMMAND_TIMEOUT_S)
    held = await pool.acquire()
    await asyncio.wait_for(database.close_pool(pool, 0.5), 10)  # pool.close() alone waits for `held`
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
        await held.fetchval("SELECT 1")  # terminated with the pool
