"""`tandem backup` and `tandem restore` on the embedded database (docs/operations.md, "Backup and
restore"): a backup taken while a server runs restores into a fresh data folder where `tandem
serve` (connecting as the application role) gives the same documents, history and members; the
restored tables keep their owner, grants and forced row-level security. Restore refuses a folder
that holds Tandem data (unless --force) or that a server uses, and a file that is no backup;
with DATABASE_URL set both commands refuse, pointing to the docs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from server.db.embedded import EmbeddedPostgres
from tests import wsclient
from tests.serverproc import Servers, postgres_pids, server_env, servers_for
from tests.test_cli import ok, one_line_error, tandem

TABLES = """
    SELECT c.relname, c.relowner::regrole::text AS owner, c.relrowsecurity, c.relforcerowsecurity,
           coalesce(c.relacl::text, '') AS acl,
           (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
      FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
     ORDER BY c.relname
"""


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


def env_for(data_dir: Path) -> dict[str, str]:
    return server_env(TANDEM_DATA_DIR=str(data_dir), TANDEM_JWT_SECRET=wsclient.SECRET)


async def write_text(port: int, tenant: uuid.UUID, workspace: str, doc_id: str, words: list[str]) -> str:
    url = f"ws://127.0.0.1:{port}/ws"
    async with wsclient.Agent(url, wsclient.token(tenant, "alice")) as alice:
        await alice.request("workspace.join", workspace_id=workspace)
        doc = await alice.open(doc_id)
        for word in words:
            await doc.edit(lambda text, word=word: text.insert(len(str(text)), word))
        return str(doc.text)


async def read_text(port: int, tenant: uuid.UUID, workspace: str, doc_id: str) -> str:
    url = f"ws://127.0.0.1:{port}/ws"
    async with wsclient.Agent(url, wsclient.token(tenant, "bob")) as bob:
        await bob.request("workspace.join", workspace_id=workspace)
        return str((await bob.open(doc_id)).text)


async def tables(data_dir: Path) -> list[dict[str, object]]:
    conn = await asyncpg.connect(EmbeddedPostgres(data_dir).admin_url)
    try:
        return [dict(r) for r in await conn.fetch(TABLES)]
    finally:
        await conn.close()


def test_a_backup_taken_beside_a_server_restores_into_a_fresh_folder(servers: Servers, tmp_path: Path) -> None:
    source = servers.data_dir("source")
    env = env_for(source)
    server = servers.start(env=env, ready_timeout_s=240)
    tenant = uuid.uuid4()
    t = str(tenant)
    workspace = ok(tandem("workspace", "create", "--tenant", t, "--owner", "alice", "Notes", env=env)).strip()
    ok(tandem("member", "add", "--tenant", t, workspace, "bob", "--role", "viewer", env=env))
    doc_id = json.loads(ok(tandem("document", "create", "--tenant", t, workspace, "Plan", "--json", env=env)))["doc_id"]
    written = asyncio.run(write_text(server.port, tenant, workspace, doc_id, ["one ", "two ", "three"]))
    assert written == "one two three"

    archive = tmp_path / "tandem.backup"
    summary = json.loads(ok(tandem("backup", str(archive), "--json", env=env)))
    assert (summary["documents"], summary["operations"]) == (1, 3)
    assert archive.stat().st_mode & 0o077 == 0, "the backup holds every tenant's data: private"
    assert server.get("/healthz").status_code == 200, "the server kept running through the backup"

    def facts(e: dict[str, str]) -> tuple[str, list[dict[str, object]], list[dict[str, object]]]:
        text = ok(tandem("replay", doc_id, "--tenant", t, "--format", "text", env=e))
        history = [
            json.loads(line) for line in ok(tandem("history", doc_id, "--tenant", t, "--json", env=e)).splitlines()
        ]
        members = [
            json.loads(line)
            for line in ok(tandem("member", "list", "--tenant", t, workspace, "--json", env=e)).splitlines()
        ]
        return text, history, members

    before = facts(env)
    assert before[0] == "one two three" and len(before[1]) == 3
    source_tables = asyncio.run(tables(source))

    target = servers.data_dir("target")
    target_env = env_for(target)
    restored = json.loads(ok(tandem("restore", str(archive), "--json", env=target_env)))
    assert (restored["documents"], restored["operations"], restored["schema_version"]) == (
        1,
        3,
        summary["schema_version"],
    )
    assert postgres_pids(target) == [], "restore stopped the cluster it started"

    second = servers.start(env=target_env, ready_timeout_s=240)
    assert facts(target_env) == before
    assert asyncio.run(tables(target)) == source_tables, "owners, grants and row-level security as in the source"
    assert any(row["relforcerowsecurity"] for row in source_tables)
    # The restored server, connecting as the application role, serves the document to a member.
    assert asyncio.run(read_text(second.port, tenant, workspace, doc_id)) == "one two three"


def test_restore_refusals_and_force(servers: Servers, tmp_path: Path) -> None:
    folder = servers.data_dir("folder")
    env = env_for(folder)
    t = str(uuid.uuid4())
    workspace = ok(tandem("workspace", "create", "--tenant", t, "--owner", "alice", "Kept", env=env)).strip()
    archive = tmp_path / "kept.backup"
    ok(tandem("backup", str(archive), env=env))  # no server: the command starts and stops the cluster
    assert postgres_pids(folder) == []
    ok(tandem("workspace", "create", "--tenant", t, "--owner", "alice", "After", env=env))

    error = one_line_error(tandem("restore", str(archive), env=env))
    assert "already holds a Tandem database" in error and "--force" in error
    assert len(ok(tandem("workspace", "list", "--tenant", t, env=env)).splitlines()) == 2, "nothing changed"

    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello\n")
    fresh = servers.data_dir("fresh")
    error = one_line_error(tandem("restore", str(not_a_backup), env=env_for(fresh)))
    assert "is not a backup made by tandem backup" in error
    assert not fresh.exists(), "nothing was created for a file that is no backup"
    assert "no backup file" in one_line_error(tandem("restore", str(tmp_path / "missing"), env=env_for(fresh)))
    assert "holds no embedded database" in one_line_error(tandem("backup", str(tmp_path / "x"), env=env_for(fresh)))

    busy = servers.data_dir("busy")
    servers.start(env=env_for(busy), ready_timeout_s=240)
    error = one_line_error(tandem("restore", str(archive), "--force", env=env_for(busy)))
    assert f"is using the data folder {busy}" in error and "stop it" in error

    ok(tandem("restore", str(archive), "--force", env=env))
    listed = ok(tandem("workspace", "list", "--tenant", t, env=env)).splitlines()
    assert [line.split()[0] for line in listed] == [workspace], "the data is the backup's again"


def test_with_database_url_both_commands_point_to_the_docs(tmp_path: Path) -> None:
    env = server_env(DATABASE_URL="postgresql://tandem@127.0.0.1:1/tandem")
    for args in (("backup", str(tmp_path / "b")), ("restore", str(tmp_path / "b"))):
        error = one_line_error(tandem(*args, env=env))
        assert "DATABASE_URL" in error and "docs/operations.md" in error and "pg_dump -Fc" in error
    assert list(tmp_path.iterdir()) == []
