"""Tenant isolation as the application role, over every table and every view.

One database per module holds two tenants' rows; each test works inside a transaction it rolls
back, so the tests cannot disturb each other. Against the seed schema these fail: the permissive
soft-delete policy showed every tenant's tasks (NOTES 1), task_delegations had no tenant and no
RLS (NOTES 2), the views ran as their owner (NOTES 3), partitions were readable (NOTES 4),
and single-column foreign keys let a child point at another tenant's parent (NOTES 8).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from tests.schema_helpers import (
    APP_PRIVILEGES,
    TABLES,
    TENANT_A,
    TENANT_B,
    UPDATE_SET,
    VIEWS,
    TenantRows,
    insert_sql,
    populated_database,
    tenant,
)


@dataclass
class TwoTenants:
    admin_url: str
    app_url: str
    a: TenantRows
    b: TenantRows


@pytest.fixture(scope="module")
async def two_tenants(postgres) -> AsyncIterator[TwoTenants]:
    async with populated_database(postgres, (TENANT_A, TENANT_B)) as pop:
        yield TwoTenants(pop.admin_url, pop.app_url, pop.rows[TENANT_A], pop.rows[TENANT_B])


@pytest.fixture
async def app(two_tenants: TwoTenants) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(two_tenants.app_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _tenants_of(conn: asyncpg.Connection, relation: str) -> set[uuid.UUID]:
    return {r["tenant_id"] for r in await conn.fetch(f"SELECT DISTINCT tenant_id FROM {relation}")}


@pytest.mark.parametrize("table", TABLES)
async def test_tenant_sees_only_its_own_rows(app, table) -> None:
    for me in (TENANT_A, TENANT_B):
        async with tenant(app, me, rollback=True):
            assert await _tenants_of(app, table) == {me}


@pytest.mark.parametrize("table", TABLES)
async def test_without_a_tenant_nothing_is_visible(app, table) -> None:
    async with tenant(app, None, rollback=True):
        assert await app.fetchval(f"SELECT count(*) FROM {table}") == 0
    # An empty setting (what a custom setting reads after any transaction-local set_config).
    async with tenant(app, "", rollback=True):  # type: ignore[arg-type]
        assert await app.fetchval(f"SELECT count(*) FROM {table}") == 0


@pytest.mark.parametrize("table", TABLES)
async def test_tenant_cannot_insert_rows_for_another_tenant(app, two_tenants, table) -> None:
    sql, args = insert_sql(table, two_tenants.b)  # a row of B, referencing B's parents
    async with tenant(app, TENANT_A, rollback=True):
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
            await app.execute(sql, *args)
    expected = "row-level security" if "INSERT" in APP_PRIVILEGES[table] else "permission denied"
    assert expected in str(err.value)
    # The same row for its own tenant is accepted where the app may insert at all.
    if "INSERT" in APP_PRIVILEGES[table]:
        sql, args = insert_sql(table, two_tenants.a)
        async with tenant(app, TENANT_A, rollback=True):
            await app.execute(sql, *args)


@pytest.mark.parametrize("table", TABLES)
async def test_tenant_cannot_update_another_tenants_rows(app, table) -> None:
    if "UPDATE" not in APP_PRIVILEGES[table]:
        async with tenant(app, TENANT_A, rollback=True):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app.execute(f"UPDATE {table} SET {UPDATE_SET[table]} WHERE tenant_id = $1", TENANT_B)
        return
    async with tenant(app, TENANT_A, rollback=True):
        assert await app.execute(f"UPDATE {table} SET {UPDATE_SET[table]} WHERE tenant_id = $1", TENANT_B) == "UPDATE 0"
        assert await app.execute(f"UPDATE {table} SET {UPDATE_SET[table]}") != "UPDATE 0"  # its own rows only
        # B's rows are untouched (same transaction, B's view of them).
        await app.execute("SELECT set_config('app.current_tenant', $1, true)", str(TENANT_B))
        assert await app.fetchval(f"SELECT count(*) FROM {table} WHERE {UPDATE_SET[table]}") == 0
    # Nor can A hand its own rows over to B (WITH CHECK on every write policy).
    async with tenant(app, TENANT_A, rollback=True):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app.execute(f"UPDATE {table} SET tenant_id = $1", TENANT_B)


@pytest.mark.parametrize("table", TABLES)
async def test_tenant_cannot_delete_another_tenants_rows(app, table) -> None:
    if "DELETE" not in APP_PRIVILEGES[table]:
        async with tenant(app, TENANT_A, rollback=True):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app.execute(f"DELETE FROM {table} WHERE tenant_id = $1", TENANT_B)
        return
    async with tenant(app, TENANT_B, rollback=True):
        before_b = await app.fetchval(f"SELECT count(*) FROM {table}")
    async with tenant(app, TENANT_A, rollback=True):
        assert await app.execute(f"DELETE FROM {table} WHERE tenant_id = $1", TENANT_B) == "DELETE 0"
        if table == "workflows":  # executions reference workflows without ON DELETE CASCADE
            await app.execute("DELETE FROM workflow_executions")
        assert await app.execute(f"DELETE FROM {table}") != "DELETE 0"  # its own rows go
        await app.execute("SELECT set_config('app.current_tenant', $1, true)", str(TENANT_B))
        assert before_b > 0
        assert await app.fetchval(f"SELECT count(*) FROM {table}") == before_b


@pytest.mark.parametrize("view", VIEWS)
async def test_views_show_only_own_tenant_rows(app, view) -> None:
    # NOTES 3: security_invoker views apply the caller's RLS.
    for me in (TENANT_A, TENANT_B):
        async with tenant(app, me, rollback=True):
            assert await _tenants_of(app, view) == {me}
    async with tenant(app, None, rollback=True):
        assert await app.fetchval(f"SELECT count(*) FROM {view}") == 0
    # Forced RLS alone would also filter an owner-run view; security_invoker keeps the caller's
    # own privileges and policies (e.g. the app-only soft-delete policy) in force.
    options = await app.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", view)
    assert "security_invoker=true" in options


# (child table, its insert for tenant B pointing at tenant A's parent, the parent it names)
CROSS_TENANT_CHILDREN = {
    "tasks.parent_task_id": (
        "INSERT INTO tasks (tenant_id, type, title, created_by, parent_task_id) VALUES ($1, 't', 'x', 'b', $2)",
        "task_id",
    ),
    "tasks.execution_id": (  # 0025: a step's task belongs to an execution of its own tenant
        (
            "INSERT INTO tasks (tenant_id, type, title, created_by, execution_id, step_id, attempt)"
            " VALUES ($1, 't', 'x', 'b', $2, 's', 1)"
        ),
        "execution_id",
    ),
    "workflow_executions.workspace_id": (  # 0025: an execution runs in a workspace of its own tenant
        (
            "INSERT INTO workflow_executions (tenant_id, workflow_id, triggered_by, workspace_id)"
            " SELECT $1, id, 'b', $2 FROM workflows LIMIT 1"
        ),
        "workspace_id",
    ),
    "task_delegations.task_id": (
        "INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id) VALUES ($1, $2, 'b', 'b')",
        "task_id",
    ),
    "workflow_executions.workflow_id": (
        "INSERT INTO workflow_executions (tenant_id, workflow_id, triggered_by) VALUES ($1, $2, 'b')",
        "workflow_id",
    ),
    "workflow_versions.workflow_id": (
        "INSERT INTO workflow_versions (tenant_id, workflow_id, version, type, steps, created_by)"
        " VALUES ($1, $2, 99, 'sequential', '[]', 'b')",
        "workflow_id",
    ),
    "workflows.workspace_id": (
        "INSERT INTO workflows (tenant_id, workspace_id, name, created_by) VALUES ($1, $2, 'intruder', 'b')",
        "workspace_id",
    ),
    "workspace_members.workspace_id": (
        "INSERT INTO workspace_members (tenant_id, workspace_id, agent_id) VALUES ($1, $2, 'intruder')",
        "workspace_id",
    ),
    "shared_documents.workspace_id": (
        "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by) VALUES ($1, $2, 'x', 'b')",
        "workspace_id",
    ),
    "document_operations.document_id": (
        "INSERT INTO document_operations (tenant_id, document_id, agent_id, operation_type, update, sequence_number)"
        " VALUES ($1, $2, 'b', 'insert', '\\x00'::bytea, 99)",
        "document_id",
    ),
    "document_operations.parent_operation_id": (
        "INSERT INTO document_operations"
        " (tenant_id, document_id, agent_id, operation_type, update, sequence_number, parent_operation_id)"
        " SELECT $1, id, 'b', 'insert', '\\x00'::bytea, 99, $2 FROM shared_documents LIMIT 1",
        "operation_id",
    ),
    "document_snapshots.document_id": (
        "INSERT INTO document_snapshots (tenant_id, document_id, sequence_number, state)"
        " VALUES ($1, $2, 99, '\\x00'::bytea)",
        "document_id",
    ),
}


@pytest.mark.parametrize("fk", sorted(CROSS_TENANT_CHILDREN))
async def test_child_row_cannot_reference_another_tenants_parent(app, two_tenants, fk) -> None:
    # NOTES 8: foreign keys ignore RLS; only the composite (parent_id, tenant_id) key stops this.
    sql, parent_field = CROSS_TENANT_CHILDREN[fk]
    async with tenant(app, TENANT_B, rollback=True):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await app.execute(sql, TENANT_B, getattr(two_tenants.a, parent_field))
    # The same statement naming B's own parent is fine.
    async with tenant(app, TENANT_B, rollback=True):
        await app.execute(sql, TENANT_B, getattr(two_tenants.b, parent_field))


async def test_child_row_cannot_be_repointed_at_another_tenants_parent(app, two_tenants) -> None:
    async with tenant(app, TENANT_B, rollback=True):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await app.execute(
                "UPDATE shared_documents SET workspace_id = $1 WHERE id = $2",
                two_tenants.a.workspace_id,
                two_tenants.b.document_id,
            )


async def test_audit_partitions_are_not_readable_or_writable_directly(app, two_tenants) -> None:
    # NOTES 4: RLS on the parent does not cover a partition read by name.
    admin = await asyncpg.connect(two_tenants.admin_url)
    try:
        partitions = [
            r["name"]
            for r in await admin.fetch(
                "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = 'audit_log'::regclass"
            )
        ]
        # The default partition and this and next month's (created at start by maintenance).
        assert len(partitions) >= 3 and "audit_log_default" in partitions
        assert await admin.fetchval("SELECT count(*) FROM audit_log") > 0
    finally:
        await admin.close()
    for partition in partitions:
        async with tenant(app, TENANT_A, rollback=True):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.fetch(f"SELECT * FROM {partition}")
        async with tenant(app, TENANT_A, rollback=True):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(
                    f"INSERT INTO {partition} (tenant_id, table_name, record_id, action, changed_by, changed_at)"
                    " VALUES ($1, 'tasks', $1, 'INSERT', 'x', now())",
                    TENANT_A,
                )


async def test_soft_deleted_tasks_are_hidden_and_other_tenants_tasks_never_shown(app, two_tenants) -> None:
    # NOTES 1: a permissive soft-delete policy OR-ed every tenant's live tasks into B's view.
    async with tenant(app, TENANT_B, rollback=True):
        ids = {r["id"] for r in await app.fetch("SELECT id FROM tasks")}
        assert ids == {two_tenants.b.task_id, two_tenants.b.subtask_id}
        # B cannot soft-delete A's task either.
        assert await app.fetchval("SELECT soft_delete_task($1)", two_tenants.a.task_id) is False
        assert await app.fetchval("SELECT soft_delete_task($1)", two_tenants.b.subtask_id) is True
        ids = {r["id"] for r in await app.fetch("SELECT id FROM tasks")}
        assert ids == {two_tenants.b.task_id}
        # Setting deleted_at directly would make the row invisible: the policies refuse it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app.execute("UPDATE tasks SET deleted_at = now() WHERE id = $1", two_tenants.b.task_id)
    async with tenant(app, TENANT_A, rollback=True):
        assert await app.fetchval("SELECT deleted_at FROM tasks WHERE id = $1", two_tenants.a.task_id) is None


async def test_app_role_is_not_superuser_bypasses_no_rls_and_owns_nothing(app, two_tenants) -> None:
    # NOTES 9: the server never connects as the owner.
    role = await app.fetchrow(
        "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    )
    assert role["rolname"] == "tandem_app"
    assert not (role["rolsuper"] or role["rolbypassrls"] or role["rolcreaterole"] or role["rolcreatedb"])
    owned = await app.fetchval(
        """
        SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
             + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
             + (SELECT count(*) FROM pg_type WHERE typowner = r.oid)
             + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
          FROM pg_roles r WHERE r.rolname = current_user
        """
    )
    assert owned == 0
    # Nor is it a member of the owner role (which would let it SET ROLE and take ownership).
    assert await app.fetchval("SELECT pg_has_role(current_user, 'tandem_owner', 'MEMBER')") is False
