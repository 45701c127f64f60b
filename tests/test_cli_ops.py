"""The operator's everyday commands: `workspace list|show|delete`, `document list|show|delete`,
`member list|remove`, `agent list`, `status`, the confirmation of `migrate down --all` and flag help.

Real `tandem` processes against this test's migrated database through DATABASE_URL, as in
tests/test_cli_admin.py; data is set up through the application role the way the server does,
and what the server would list afterwards is read with the server's own functions.
"""

from __future__ import annotations

import re
import asyncio
import json
import subprocess
from typing import TYPE_CHECKING

import asyncpg
import pytest

from server.cluster import hints
from server.db import migrate, store
from server.tools.admin import ACTOR
from server.wire import protocol_agents as pa
from server.wire import protocol_coordination as pc
from server.workspaces import agents, tasks
from server.workspaces import directory as workspaces
from tests.conftest import TENANT_A, TENANT_B
from tests.serverproc import REPO, TANDEM, server_env
from tests.test_cli_admin import one_line_error, tandem

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

A = str(TENANT_A)
B = str(TENANT_B)


@pytest.fixture
def env(db: TestDatabase) -> dict[str, str]:
    return server_env(DATABASE_URL=db.admin_url, TANDEM_JWT_SECRET=None, REDIS_URL=None)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout.splitlines()


def without_terminal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tandem` with stdin not a terminal (nobody there to answer a question)."""
    return subprocess.run([TANDEM, *args], check=False, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=180)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in lines(result)]


async def test_workspace_list_show_and_soft_delete(env: dict[str, str], pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        design = await workspaces.create_workspace(conn, TENANT_A, "olga", "Design")
        await workspaces.add_member(conn, design.workspace_id, "bob", "viewer")
        await workspaces.create_document(conn, "olga", design.workspace_id, "Notes")
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:  # later: listed second
        team = await workspaces.create_workspace(conn, TENANT_A, "olga", "Team room", visibility="team")
    async with store.tenant_transaction(pool, TENANT_B, "eve") as conn:
        other = await workspaces.create_workspace(conn, TENANT_B, "eve", "Elsewhere")

    listed = lines(tandem("workspace", "list", "--tenant", A, env=env))
    assert [line.split()[0] for line in listed] == [str(design.workspace_id), str(team.workspace_id)]
    assert listed[0].split() == [str(design.workspace_id), "private", "2", "1", "olga", "Design"]
    shown = json_lines(tandem("workspace", "list", "--tenant", A, "--json", env=env))
    assert [(w["name"], w["member_count"], w["document_count"], w["visibility"]) for w in shown] == [
        ("Design", 2, 1, "private"), ("Team room", 1, 0, "team")
    ]
    assert len(lines(tandem("workspace", "list", "--tenant", A, "--limit", "1", env=env))) == 1

    text = lines(tandem("workspace", "show", "--tenant", A, str(design.workspace_id), env=env))
    assert "name:           Design" in text and "member_count:   2" in text
    [one] = json_lines(tandem("workspace", "show", "--tenant", A, str(design.workspace_id), "--json", env=env))
    assert one == {**design.to_wire(), "state_version": 1, "member_count": 2, "document_count": 1}

    # Another tenant's workspace is not found, neither shown nor deleted.
    error = one_line_error(tandem("workspace", "delete", "--tenant", A, str(other.workspace_id), env=env))
    assert error == f"tandem: error: workspace {other.workspace_id} not found in tenant {A}"

    assert lines(tandem("workspace", "delete", "--tenant", A, str(team.workspace_id), env=env)) == [
        f"deleted workspace {team.workspace_id}"
    ]
    [gone] = json_lines(tandem("workspace", "delete", "--tenant", A, str(design.workspace_id), "--json", env=env))
    assert gone["workspace_id"] == str(design.workspace_id) and gone["deleted_at"].endswith("Z")

    # Soft: the rows stay, marked; the server's lists and joins no longer see them.
    marked = await admin.fetchval("SELECT count(*) FROM workspaces WHERE tenant_id = $1 AND deleted_at IS NOT NULL", TENANT_A)
    assert marked == 2
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        assert await workspaces.list_workspaces(conn, "olga", 10) == ([], False)
        assert await workspaces.membership(conn, "olga", design.workspace_id) is None
    assert lines(tandem("workspace", "list", "--tenant", A, env=env)) == []
    error = one_line_error(tandem("workspace", "show", "--tenant", A, str(design.workspace_id), env=env))
    assert "not found" in error
    actors = await admin.fetch("SELECT DISTINCT changed_by FROM audit_log WHERE record_id = $1 AND action = 'UPDATE'",
                               design.workspace_id)
    assert [r["changed_by"] for r in actors] == [ACTOR]


async def test_document_list_show_and_soft_delete(env: dict[str, str], pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        ws = await workspaces.create_workspace(conn, TENANT_A, "olga", "Docs")
        notes = await workspaces.create_document(conn, "olga", ws.workspace_id, "Meeting notes")
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:  # later: listed second
        code = await workspaces.create_document(conn, "olga", ws.workspace_id, "main.py", "code", "python")
    w = str(ws.workspace_id)

    listed = lines(tandem("document", "list", "--tenant", A, w, env=env))
    assert [line.split(maxsplit=3) for line in listed] == [
        [str(notes.doc_id), "text", "0", "Meeting notes"], [str(code.doc_id), "code", "0", "main.py"]
    ]
    shown = json_lines(tandem("document", "list", "--tenant", A, w, "--json", env=env))
    assert shown == [{**notes.to_wire(), "head_seq": 0}, {**code.to_wire(), "head_seq": 0}]
    error = one_line_error(tandem("document", "list", "--tenant", B, w, env=env))
    assert error == f"tandem: error: workspace {w} not found in tenant {B}"

    text = lines(tandem("document", "show", "--tenant", A, str(code.doc_id), env=env))
    assert "language:     python" in text and "head_seq:     0" in text
    [one] = json_lines(tandem("document", "show", "--tenant", A, str(code.doc_id), "--json", env=env))
    assert one == {**code.to_wire(), "head_seq": 0}
    error = one_line_error(tandem("document", "show", "--tenant", B, str(code.doc_id), env=env))
    assert error == f"tandem: error: document {code.doc_id} not found in tenant {B}"

    assert lines(tandem("document", "delete", "--tenant", A, str(notes.doc_id), env=env)) == [f"deleted document {notes.doc_id}"]
    [gone] = json_lines(tandem("document", "delete", "--tenant", A, str(code.doc_id), "--json", env=env))
    assert gone["doc_id"] == str(code.doc_id) and gone["deleted_at"].endswith("Z")
    assert "not found" in one_line_error(tandem("document", "delete", "--tenant", A, str(code.doc_id), env=env))

    # Soft: the rows stay; the server neither lists nor opens them.
    assert await admin.fetchval("SELECT count(*) FROM shared_documents WHERE workspace_id = $1 AND deleted_at IS NOT NULL",
                                ws.workspace_id) == 2
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        assert await workspaces.list_documents(conn, ws.workspace_id, 10) == ([], False)
        assert await workspaces.get_document(conn, notes.doc_id) is None
    assert lines(tandem("document", "list", "--tenant", A, w, env=env)) == []


async def test_member_list_and_remove(env: dict[str, str], pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        ws = await workspaces.create_workspace(conn, TENANT_A, "olga", "Crew")
        await workspaces.add_member(conn, ws.workspace_id, "bob", "admin")
        await workspaces.add_member(conn, ws.workspace_id, "vic", "viewer")
    w = str(ws.workspace_id)

    # All joined in one transaction, at one time: then ordered by agent id.
    assert lines(tandem("member", "list", "--tenant", A, w, env=env)) == [
        "bob  admin  read,write", "olga  owner  read,write", "vic  viewer  read,write"
    ]
    shown = json_lines(tandem("member", "list", "--tenant", A, w, "--json", env=env))
    assert [(m["workspace_id"], m["agent_id"], m["role"], m["permissions"]) for m in shown] == [
        (w, "bob", "admin", ["read", "write"]), (w, "olga", "owner", ["read", "write"]), (w, "vic", "viewer", ["read", "write"])
    ]

    # Running servers hear of a removal: its member.changed event is NOTIFYed with the change.
    heard: list[str] = []
    await admin.add_listener("tandem", lambda *args: heard.append(args[3]))
    assert lines(tandem("member", "remove", "--tenant", A, w, "vic", env=env)) == ["removed vic viewer"]
    [removed] = json_lines(tandem("member", "remove", "--tenant", A, w, "bob", "--json", env=env))
    assert (removed["agent_id"], removed["role"]) == ("bob", "admin")
    async with asyncio.timeout(10):
        while len(heard) < 2:
            await asyncio.sleep(0.05)
    events = [hints.decode(payload, "another-node") for payload in heard]
    assert [(e.workspace_id, e.agents, e.message["change"], e.message["member"]["agent_id"]) for e in events] == [
        (ws.workspace_id, frozenset({"vic"}), "removed", "vic"), (ws.workspace_id, frozenset({"bob"}), "removed", "bob")
    ]

    # The rules of members.py: never the owner; a non-member is not found.
    assert one_line_error(tandem("member", "remove", "--tenant", A, w, "olga", env=env)) == (
        f"tandem: error: agent 'olga' owns workspace {w}: an owner is never removed"
    )
    assert one_line_error(tandem("member", "remove", "--tenant", A, w, "bob", env=env)) == (
        f"tandem: error: agent 'bob' is not a member of workspace {w}"
    )
    assert "not found" in one_line_error(tandem("member", "list", "--tenant", B, w, env=env))
    assert lines(tandem("member", "list", "--tenant", A, w, env=env)) == ["olga  owner  read,write"]
    actors = await admin.fetch("SELECT DISTINCT changed_by FROM audit_log WHERE table_name = 'workspace_members' "
                               "AND action = 'DELETE'")
    assert [r["changed_by"] for r in actors] == [ACTOR]


async def test_agent_list_prints_status_load_and_counters(env: dict[str, str], pool: asyncpg.Pool) -> None:
    ttl_s = 15.0  # the default TANDEM_PRESENCE_TTL_S, which the command uses too
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        register = pa.AgentRegister(name="Writer", kind="llm", capabilities=["write", "review"], max_concurrent_tasks=2)
        await agents.register(conn, "writer", register, ttl_s)
        await agents.register(conn, "olga", pa.AgentRegister(name="Olga"), ttl_s)
        await agents.set_status(conn, "olga", "maintenance", ttl_s)
        ws = await workspaces.create_workspace(conn, TENANT_A, "olga", "Crew")
        await tasks.create_task(conn, "olga", "owner", pc.TaskCreate(workspace_id=ws.workspace_id, title="Draft", assign_to="writer"))

    assert lines(tandem("agent", "list", "--tenant", A, env=env)) == [
        "olga  maintenance      0/1      0      0  -  Olga",
        "writer  active           1/2      0      0  write,review  Writer",
    ]
    [writer] = json_lines(tandem("agent", "list", "--tenant", A, "--capability", "review", "--json", env=env))
    assert (writer["agent_id"], writer["status"], writer["load"], writer["free_slots"]) == ("writer", "active", 1, 1)
    assert (writer["capabilities"], writer["tasks_completed"], writer["consecutive_failures"]) == (["write", "review"], 0, 0)
    assert lines(tandem("agent", "list", "--tenant", A, "--capability", "deploy", env=env)) == []
    assert lines(tandem("agent", "list", "--tenant", B, env=env)) == []  # another tenant's registry is empty


async def test_status_reports_schema_and_connected_nodes(db: TestDatabase, env: dict[str, str]) -> None:
    newest = migrate.load(REPO / "migrations")[-1].version
    text = lines(tandem("status", env=env))
    assert text == [
        "database: reachable",
        f"schema: {newest} (up to date)",
        "nodes: 0 connected",
        "rooms and sessions: not tracked in the database (each node's /metrics reports its own)",
        "redis: not configured",
    ]

    # A node is seen by its LISTEN connection (server/cluster/fanout.py names it so).
    listen = await asyncpg.connect(db.app_url, server_settings={"application_name": "tandem node-7 listen"})
    try:
        [shown] = json_lines(tandem("status", "--json", env=env))
    finally:
        await listen.close()
    assert [n["node_id"] for n in shown["nodes"]] == ["node-7"]
    assert (shown["database"], shown["schema_version"], shown["pending_migrations"], shown["redis"]) == (
        "reachable", newest, [], "not configured"
    )


def test_status_of_an_unreachable_database_says_so() -> None:
    env = server_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", REDIS_URL="redis://127.0.0.1:1/0")
    result = tandem("status", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0].startswith("database: unreachable: ")
    assert result.stdout.splitlines()[-1].startswith("redis: unreachable: ")
    assert "Traceback" not in result.stderr


async def test_migrate_down_all_asks_unless_yes(env: dict[str, str], admin: asyncpg.Connection) -> None:
    applied = await admin.fetchval("SELECT count(*) FROM schema_migrations")
    refused = without_terminal("migrate", "down", "--all", env=env)
    assert one_line_error(refused) == (
        "tandem: error: migrate down --all drops every table and all data; add --yes to confirm (stdin is not a terminal)"
    )
    assert await admin.fetchval("SELECT count(*) FROM schema_migrations") == applied

    rolled_back = lines(tandem("migrate", "down", "--all", "--yes", env=env))
    assert len(rolled_back) == applied
    assert await admin.fetchval("SELECT count(*) FROM schema_migrations") == 0


@pytest.mark.parametrize("command", [["workspace", "list"], ["migrate", "down"], ["member"], ["agent", "list"], ["serve"], ["quickstart"], ["backup"], []])
def test_help_names_values_not_types(command: list[str]) -> None:
    result = tandem(*command, "--help", env=server_env())
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout
    options = [line for line in result.stdout.splitlines() if "--" in line]
    assert not [line for line in options if re.search(r"<(bool|str|int|float|path)>", line)], result.stdout
