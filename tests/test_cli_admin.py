"""The operator commands `tandem token issue`, `workspace create`, `member add`, `document create`.

Run as real processes of the installed `tandem` script against a fresh migrated database through
DATABASE_URL (and once against the embedded PostgreSQL of a data dir). Results are read back as
the superuser; each subprocess costs about a second, so one test walks a whole flow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from server.core import auth
from server.core.errors import ErrorCode
from server.db import store
from server.tools.admin import ACTOR, parse_ttl
from server.workspaces import directory as workspaces
from tests.conftest import TENANT_A, TENANT_B
from tests.serverproc import REPO, TANDEM, postgres_pids, server_env

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

COMMAND_TIMEOUT_S = 180.0
SECRET = "test-secret-" + "s" * 40
A = str(TENANT_A)
B = str(TENANT_B)


def tandem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TANDEM, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The single line the command printed on stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `tandem: error:` line of a command that failed with exit code 1."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("tandem: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a command refused as a usage error (exit code 2), before doing anything."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return result.stderr


@pytest.fixture
def env(db: TestDatabase) -> dict[str, str]:
    return server_env(DATABASE_URL=db.admin_url, TANDEM_JWT_SECRET=None)



@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data folder whose parents the `postgres` OS user can traverse (the tests may run as root)."""
    parent = Path(tempfile.mkdtemp(prefix="tandem-cli-admin-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        assert postgres_pids(parent / "data") == [], "a command left its PostgreSQL running"
        shutil.rmtree(parent, ignore_errors=True)


# --- ttl parsing (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172_800), ("90", 90), ("1.5h", 5400), (" 2H ", 7200)],
)
def test_parse_ttl_accepts_units_and_seconds(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "1w", "h", "1 h 2", "1e3", "1h30m"])
def test_parse_ttl_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


# --- token issue -----------------------------------------------------------------------------


def test_token_issue_prints_a_token_serve_accepts() -> None:
    env = server_env(TANDEM_JWT_SECRET=SECRET, TANDEM_JWT_ISSUER="tandem-test", TANDEM_JWT_AUDIENCE="agents")
    before = datetime.now(UTC).replace(microsecond=0)
    token = ok(tandem("token", "issue", "--tenant", A, "--agent", "alice", "--ttl", "2h",
                      "--scope", "read", "--scope", "write", env=env))
    after = datetime.now(UTC)

    principal = auth.verify_token(SECRET, token, issuer="tandem-test", audience="agents")
    assert isinstance(principal, auth.Principal), principal
    assert (principal.tenant_id, principal.agent_id, principal.scopes) == (TENANT_A, "alice", {"read", "write"})
    assert before + timedelta(hours=2) <= principal.expires_at <= after + timedelta(hours=2)
    # Past its two hours the same token is expired; a token without the issuer is refused.
    assert auth.verify_token(SECRET, token, after + timedelta(hours=2, minutes=1), issuer="tandem-test",
                             audience="agents") is ErrorCode.TOKEN_EXPIRED
    assert auth.verify_token(SECRET, token, issuer="someone-else", audience="agents") is ErrorCode.UNAUTHORIZED


def test_token_issue_without_secret_uses_the_data_dirs_and_default_ttl(tmp_path: Path) -> None:
    env = server_env(TANDEM_JWT_SECRET=None, TANDEM_TOKEN_TTL_S="900")
    before = datetime.now(UTC).replace(microsecond=0)
    secret = auth.load_or_create_secret(tmp_path)  # as `tandem serve` creates it on its first start
    token = ok(tandem("token", "issue", "--tenant", B, "--agent", "bob", "--data-dir", str(tmp_path), env=env))

    principal = auth.verify_token(secret, token)
    assert isinstance(principal, auth.Principal), principal
    assert (principal.tenant_id, principal.agent_id, principal.scopes) == (TENANT_B, "bob", frozenset())
    assert before + timedelta(seconds=900) <= principal.expires_at <= datetime.now(UTC) + timedelta(seconds=900)


def test_token_issue_refuses_bad_arguments() -> None:
    env = server_env(TANDEM_JWT_SECRET=SECRET)
    assert "--ttl" in usage_error(tandem("token", "issue", "--tenant", A, "--agent", "a", "--ttl", "soon", env=env))
    assert "--tenant" in usage_error(tandem("token", "issue", "--tenant", "tenant-a", "--agent", "a", env=env))
    short = server_env(TANDEM_JWT_SECRET="short")
    assert "at least 32 bytes" in one_line_error(tandem("token", "issue", "--tenant", A, "--agent", "a", env=short))


# --- workspace, member, document -------------------------------------------------------------


async def test_workspace_member_and_document_commands(db: TestDatabase, env: dict[str, str], admin: asyncpg.Connection) -> None:
    # workspace create: the id, a row of the tenant, and the owner's membership.
    workspace_id = uuid.UUID(ok(tandem("workspace", "create", "--tenant", A, "--owner", "olga", "Design", env=env)))
    row = await admin.fetchrow("SELECT tenant_id, name, owner_id, visibility::text FROM workspaces WHERE id = $1",
                                    workspace_id)
    assert dict(row) == {"tenant_id": TENANT_A, "name": "Design", "owner_id": "olga", "visibility": "private"}
    assert await members(admin, workspace_id) == {"olga": "owner"}

    shown = json.loads(ok(tandem("workspace", "create", "--tenant", A, "--owner", "olga", "Team room", "--type", "chat",
                                 "--visibility", "team", "--max-members", "5", "--json", env=env)))
    assert shown["name"] == "Team room"
    assert (shown["workspace_type"], shown["visibility"], shown["max_members"], shown["owner_id"]) == ("chat", "team", 5, "olga")
    assert await admin.fetchval("SELECT tenant_id FROM workspaces WHERE id = $1", uuid.UUID(shown["workspace_id"])) == TENANT_A

    # member add: printed, stored, and a second add changes the role.
    ws = str(workspace_id)
    assert ok(tandem("member", "add", "--tenant", A, ws, "bob", "--role", "viewer", env=env)) == "bob viewer"
    shown = json.loads(ok(tandem("member", "add", "--tenant", A, ws, "bob", "--role", "admin", "--json", env=env)))
    assert (shown["workspace_id"], shown["agent_id"], shown["role"]) == (ws, "bob", "admin")
    assert await members(admin, workspace_id) == {"olga": "owner", "bob": "admin"}

    # document create: by default the owner creates it; --agent names another writer.
    doc_id = uuid.UUID(ok(tandem("document", "create", "--tenant", A, ws, "Notes", env=env)))
    doc = await admin.fetchrow(
        "SELECT workspace_id, tenant_id, title, content_type, created_by FROM shared_documents WHERE id = $1", doc_id
    )
    assert dict(doc) == {"workspace_id": workspace_id, "tenant_id": TENANT_A, "title": "Notes",
                         "content_type": "text", "created_by": "olga"}
    shown = json.loads(ok(tandem("document", "create", "--tenant", A, ws, "main.py", "--content-type", "code",
                                 "--language", "python", "--agent", "bob", "--json", env=env)))
    assert {k: shown[k] for k in ("workspace_id", "title", "content_type", "language", "created_by")} == {
        "workspace_id": ws, "title": "main.py", "content_type": "code", "language": "python", "created_by": "bob"
    }
    assert await admin.fetchval("SELECT created_by FROM shared_documents WHERE id = $1",
                                     uuid.UUID(shown["doc_id"])) == "bob"

    # The audit trail names the command line as the actor, not the agents.
    actors = await admin.fetch("SELECT DISTINCT changed_by FROM audit_log WHERE tenant_id = $1", TENANT_A)
    assert {r["changed_by"] for r in actors} == {ACTOR}

    # A non-member cannot author a document, as over the wire.
    error = one_line_error(tandem("document", "create", "--tenant", A, ws, "Spam", "--agent", "mallory", env=env))
    assert "'mallory' is not a member" in error
    assert await admin.fetchval("SELECT count(*) FROM shared_documents WHERE workspace_id = $1", workspace_id) == 2


async def test_another_tenants_workspace_is_not_found(
    env: dict[str, str], pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        workspace = await workspaces.create_workspace(conn, TENANT_A, "olga", "Secret plans")
    ws = str(workspace.workspace_id)

    error = one_line_error(tandem("member", "add", "--tenant", B, ws, "eve", "--role", "owner", env=env))
    assert error == f"tandem: error: workspace {ws} not found in tenant {B}"
    error = one_line_error(tandem("document", "create", "--tenant", B, ws, "Leak", "--agent", "olga", env=env))
    assert error == f"tandem: error: workspace {ws} not found in tenant {B}"

    assert await members(admin, workspace.workspace_id) == {"olga": "owner"}
    assert await admin.fetchval("SELECT count(*) FROM shared_documents WHERE workspace_id = $1", workspace.workspace_id) == 0


def test_bad_arguments_are_usage_errors(env: dict[str, str]) -> None:
    ws = str(uuid.uuid4())
    assert "--role" in usage_error(tandem("member", "add", "--tenant", A, ws, "bob", "--role", "boss", env=env))
    assert "WORKSPACE" in usage_error(tandem("member", "add", "--tenant", A, "not-a-uuid", "bob", "--role", "member", env=env))
    assert "NAME" in usage_error(tandem("workspace", "create", "--tenant", A, "--owner", "olga", "   ", env=env))
    assert "--max-members" in usage_error(
        tandem("workspace", "create", "--tenant", A, "--owner", "olga", "X", "--max-members", "1001", env=env)
    )


def test_workspace_and_document_through_embedded_postgres(embedded_data_dir: Path) -> None:
    env = server_env(TANDEM_DATA_DIR=str(embedded_data_dir))
    workspace_id = ok(tandem("workspace", "create", "--tenant", A, "--owner", "olga", "Local", env=env))
    assert postgres_pids(embedded_data_dir) == []
    shown = json.loads(ok(tandem("document", "create", "--tenant", A, workspace_id, "Readme", "--json", env=env)))
    assert (shown["workspace_id"], shown["created_by"]) == (workspace_id, "olga")


# --- helpers ---------------------------------------------------------------------------------


async def members(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> dict[str, str]:
    rows = await conn.fetch("SELECT agent_id, role::text FROM workspace_members WHERE workspace_id = $1", workspace_id)
    return {r["agent_id"]: r["role"] for r in rows}
