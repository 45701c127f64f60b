"""Who stops the embedded cluster (server/db/embedded.py): the last process using it. A command
that started it and ends while another command is attached leaves it running for that one,
which stops it when it ends; a command attached to a server's cluster never stops it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import uuid
from pathlib import Path

import asyncpg

from server.db.embedded import EmbeddedPostgres
from tests.serverproc import postgres_pids, server_env
from tests.test_cli import ok, tandem


async def answers(pg: EmbeddedPostgres) -> bool:
    conn = await asyncpg.connect(pg.admin_url, timeout=10)
    try:
        return await conn.fetchval("SELECT true")
    finally:
        await conn.close()


async def test_the_starter_leaves_the_cluster_to_a_command_attached_meanwhile(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    short = EmbeddedPostgres(data_dir, share=True)
    long = EmbeddedPostgres(data_dir, share=True)

    await short.__aenter__()
    assert not short.attached
    await long.__aenter__()
    assert long.attached
    await short.__aexit__(None, None, None)  # the short command ends first

    assert postgres_pids(data_dir), "the starter stopped the cluster under the attached command"
    assert await answers(long)
    await long.__aexit__(None, None, None)
    assert postgres_pids(data_dir) == [], "the last one to leave stops it"


async def test_a_command_between_the_starter_and_an_attached_one(tmp_path: Path) -> None:
    """The starter (this test) holds the cluster while a `tandem backup` runs and another user
    attaches; the starter leaves first, the backup left it alone, the last user stops it."""
    data_dir = tmp_path / "data"
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    starter = EmbeddedPostgres(data_dir, share=True)
    await starter.__aenter__()
    try:
        workspace = ok(tandem("workspace", "create", "--tenant", str(uuid.uuid4()), "--owner", "a", "W", env=env))
        assert workspace.strip()
        summary = json.loads(ok(tandem("backup", str(tmp_path / "b.backup"), "--json", env=env)))
        assert summary["documents"] == 0
        assert await answers(starter), "the commands left the starter's cluster running"
        attached = EmbeddedPostgres(data_dir, share=True)
        await attached.__aenter__()
    finally:
        await starter.__aexit__(None, None, None)
    assert await answers(attached)
    await attached.__aexit__(None, None, None)
    assert postgres_pids(data_dir) == []


async def test_a_command_waiting_for_an_owner_that_left_without_starting_starts_the_cluster(tmp_path: Path) -> None:
    """An owner that took the folder and ended before its cluster answered (a failed start):
    the command attached meanwhile takes the folder over and starts the cluster itself."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    owner = os.open(data_dir / "tandem.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    waiting = EmbeddedPostgres(data_dir, share=True)
    entered = asyncio.create_task(waiting.__aenter__())
    # Attached (it holds tandem.users shared) and polling for a cluster that never answers.
    await asyncio.wait_for(until_users_held(data_dir), timeout=60)
    os.close(owner)  # the owner leaves

    await asyncio.wait_for(entered, timeout=120)
    assert not waiting.attached
    assert await answers(waiting)
    await waiting.__aexit__(None, None, None)
    assert postgres_pids(data_dir) == []


async def until_users_held(data_dir: Path) -> None:
    while True:
        fd = os.open(data_dir / "tandem.users", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)
        await asyncio.sleep(0.05)
