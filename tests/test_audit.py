"""The audit trail: what the trigger records, and who may touch it.

Against the seed these fail: its trigger inserted explicit NULLs for id and changed_at (NOTES
13: every audited write failed), cast '' to inet (NOTES 14), read app.current_user (NOTES 16),
copied document content on every update (NOTES 22), and audit_log was writable by the app
(NOTES 5).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from tests.schema_helpers import (
    AUDITED_TABLES,
    TENANT_A,
    Populated,
    TenantRows,
    populated_database,
    tenant,
)


@pytest.fixture(scope="module")
async def audit_db(postgres) -> AsyncIterator[Populated]:
    async with populated_database(postgres, (TENANT_A,)) as pop:
        yield pop


@pytest.fixture
async def app(audit_db: Populated) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(audit_db.app_url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class Lifecycle:
    """Insert (returning the audited record id), update and delete of one row of a table."""

    insert: str
    update: str
    delete: str
    updated: set[str]  # columns the update changes
    key: str = "id"  # the column whose value is the audit record id


def _lifecycle(table: str, rows: TenantRows, marker: str) -> tuple[Lifecycle, list[object]]:
    """Statements for one fresh row of `table`; `marker` identifies it. Args: $1 tenant, $2 marker, $3 parent."""
    specs = {
        "tasks": (
            Lifecycle(
                "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', $2, 'a') RETURNING id",
                "UPDATE tasks SET status = 'assigned', assigned_to = 'b' WHERE title = $1",
                "DELETE FROM tasks WHERE title = $1",
                {"status", "assigned_to"},
            ),
            None,
        ),
        "task_delegations": (
            Lifecycle(
                "INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id, reason)"
                " VALUES ($1, $3, 'a', 'b', $2) RETURNING id",
                "UPDATE task_delegations SET to_agent_id = 'c' WHERE reason = $1",
                "DELETE FROM task_delegations WHERE reason = $1",
                {"to_agent_id"},
            ),
            rows.task_id,
        ),
        "workflows": (
            Lifecycle(
                "INSERT INTO workflows (tenant_id, name, created_by) VALUES ($1, $2, 'a') RETURNING id",
                "UPDATE workflows SET is_active = false, version = 2 WHERE name = $1",
                "DELETE FROM workflows WHERE name = $1",
                {"is_active", "version"},
            ),
            None,
        ),
        "workspaces": (
            Lifecycle(
                "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, $2, 'a') RETURNING id",
                "UPDATE workspaces SET visibility = 'team' WHERE name = $1",
                "DELETE FROM workspaces WHERE name = $1",
                {"visibility"},
            ),
            None,
        ),
        "workspace_members": (
            Lifecycle(
                "INSERT INTO workspace_members (tenant_id, workspace_id, agent_id) VALUES ($1, $3, $2)"
                " RETURNING workspace_id",
                "UPDATE workspace_members SET role = 'admin' WHERE agent_id = $1",
                "DELETE FROM workspace_members WHERE agent_id = $1",
                {"role"},
                key="workspace_id",
            ),
            rows.workspace_id,
        ),
        "shared_documents": (
            Lifecycle(
                "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by) VALUES ($1, $3, $2, 'a')"
                " RETURNING id",
                "UPDATE shared_documents SET content_type = 'markdown', language = 'en' WHERE title = $1",
                "DELETE FROM shared_documents WHERE title = $1",
                {"content_type", "language"},
            ),
            rows.workspace_id,
        ),
    }
    spec, parent = specs[table]
    return spec, [TENANT_A, marker] + ([parent] if parent else [])


async def _audit_rows(conn: asyncpg.Connection, table: str, record_id: uuid.UUID) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE table_name = $1 AND record_id = $2 AND changed_by <> 'builder-' || tenant_id",
        table,
        record_id,
    )
    by_action = {r["action"]: r for r in rows}
    assert len(by_action) == len(rows), "one row per action expected"
    return by_action


@pytest.mark.parametrize("table", AUDITED_TABLES)
async def test_insert_update_delete_write_audit_rows_with_actor_ip_and_changed_fields(app, audit_db, table) -> None:
    marker = f"m-{uuid.uuid4().hex[:10]}"
    spec, args = _lifecycle(table, audit_db.rows[TENANT_A], marker)
    async with tenant(app, TENANT_A, user_id="alice", client_ip="203.0.113.7", user_agent="pytest/1", rollback=True):
        record_id = await app.fetchval(spec.insert, *args)
        assert await app.execute(spec.update, marker) == "UPDATE 1"
        assert await app.execute(spec.delete, marker) == "DELETE 1"
        rows = await _audit_rows(app, table, record_id)
    assert set(rows) == {"INSERT", "UPDATE", "DELETE"}
    for action, row in rows.items():
        assert row["id"] is not None and row["changed_at"] is not None  # NOTES 13: defaults applied
        assert row["tenant_id"] == TENANT_A
        assert row["changed_by"] == "alice"  # NOTES 16: app.user_id
        assert str(row["ip_address"]) == "203.0.113.7"
        assert row["user_agent"] == "pytest/1"
    ins, upd, dele = rows["INSERT"], rows["UPDATE"], rows["DELETE"]
    assert ins["old_data"] is None and ins["new_data"] is not None and ins["changed_fields"] is None
    assert str(ins["new_data"]).count(marker) == 1
    # updated_at changes only across transactions (CURRENT_TIMESTAMP is the transaction's start).
    assert set(upd["changed_fields"]) - {"updated_at"} == spec.updated
    assert upd["old_data"] is not None and upd["new_data"] is not None
    assert dele["old_data"] is not None and dele["new_data"] is None and dele["changed_fields"] is None


async def test_agent_registrations_are_audited_and_heartbeats_are_not(app) -> None:
    # Migration 0023: the heartbeat stamps last_seen_at every few seconds; only other changes are audited.
    agent_id = f"agent-{uuid.uuid4().hex[:10]}"
    async with tenant(app, TENANT_A, user_id=agent_id, rollback=True):
        record_id = await app.fetchval(
            "INSERT INTO agents (tenant_id, agent_id, name) VALUES ($1, $2, 'A') RETURNING id", TENANT_A, agent_id
        )
        await app.execute("UPDATE agents SET last_seen_at = now() + interval '1 s' WHERE agent_id = $1", agent_id)
        assert set(await _audit_rows(app, "agents", record_id)) == {"INSERT"}
        await app.execute("UPDATE agents SET status = 'maintenance' WHERE agent_id = $1", agent_id)
        rows = await _audit_rows(app, "agents", record_id)
    assert set(rows) == {"INSERT", "UPDATE"}
    assert set(rows["UPDATE"]["changed_fields"]) - {"updated_at", "last_seen_at"} == {"status"}


@pytest.mark.parametrize("how", ["empty", "unset"])
async def test_audited_writes_work_when_actor_and_client_settings_are_empty_or_unset(app, how) -> None:
    # NOTES 14: after any transaction-local set_config a custom setting reads '' (not NULL);
    # inet('') failed every later audited write.
    settings = {"user_id": "", "client_ip": "", "user_agent": ""} if how == "empty" else {}
    if how == "unset":
        # A fresh connection has never seen these settings: current_setting(..., true) is NULL.
        assert await app.fetchval("SELECT current_setting('app.client_ip', true)") is None
    async with tenant(app, TENANT_A, rollback=True, **settings):
        record_id = await app.fetchval(
            "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', 'Quiet', 'a') RETURNING id",
            TENANT_A,
        )
        await app.execute("UPDATE tasks SET title = 'Louder' WHERE id = $1", record_id)
        rows = await _audit_rows(app, "tasks", record_id)
    assert set(rows) == {"INSERT", "UPDATE"}
    for row in rows.values():
        assert row["changed_by"] == "system"
        assert row["ip_address"] is None
        assert row["user_agent"] is None


async def test_settings_left_empty_by_an_earlier_transaction_do_not_break_audit(app) -> None:
    async with tenant(app, TENANT_A, user_id="alice", client_ip="192.0.2.1"):
        pass  # committed: the settings now read '' on this connection
    assert await app.fetchval("SELECT current_setting('app.client_ip', true)") == ""
    async with tenant(app, TENANT_A, rollback=True):
        record_id = await app.fetchval(
            "INSERT INTO workflows (tenant_id, name, created_by) VALUES ($1, 'After', 'a') RETURNING id", TENANT_A
        )
        rows = await _audit_rows(app, "workflows", record_id)
    assert rows["INSERT"]["changed_by"] == "system" and rows["INSERT"]["ip_address"] is None


async def test_document_content_never_lands_in_audit_log(app, audit_db) -> None:
    # NOTES 22: audit the metadata, not the content.
    secret = f"TOP-SECRET-{uuid.uuid4().hex}"
    workspace = audit_db.rows[TENANT_A].workspace_id
    async with tenant(app, TENANT_A, user_id="alice", rollback=True):
        doc = await app.fetchval(
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, content, created_by)"
            " VALUES ($1, $2, 'Plans', $3, 'a') RETURNING id",
            TENANT_A,
            workspace,
            secret,
        )
        await app.execute(
            "UPDATE shared_documents SET title = 'Plans v2', content = $2 || '!' WHERE id = $1", doc, secret
        )
        await app.execute("DELETE FROM shared_documents WHERE id = $1", doc)
        rows = await _audit_rows(app, "shared_documents", doc)
        leaked = await app.fetchval(
            "SELECT count(*) FROM audit_log"
            " WHERE position($1 in coalesce(old_data::text, '') || coalesce(new_data::text, '')) > 0",
            secret,
        )
    assert set(rows) == {"INSERT", "UPDATE", "DELETE"}
    assert leaked == 0
    for row in rows.values():
        for data in (row["old_data"], row["new_data"]):
            assert data is None or "content" not in data
    # That the content changed is still on record.
    assert {"title", "content"} <= set(rows["UPDATE"]["changed_fields"])


async def test_hot_path_document_updates_write_no_audit_row(app, audit_db) -> None:
    # NOTES 22: every CRDT write bumps head_seq (and may store content, version, updated_by);
    # auditing those would double the write load.
    workspace = audit_db.rows[TENANT_A].workspace_id
    async with tenant(app, TENANT_A, user_id="alice", rollback=True):
        doc = await app.fetchval(
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by) VALUES ($1, $2, 'Hot', 'a')"
            " RETURNING id",
            TENANT_A,
            workspace,
        )
        count = "SELECT count(*) FROM audit_log WHERE record_id = $1"
        assert await app.fetchval(count, doc) == 1
        for _ in range(3):
            await app.execute("UPDATE shared_documents SET head_seq = head_seq + 1 WHERE id = $1", doc)
        await app.execute(
            "UPDATE shared_documents SET head_seq = head_seq + 2, content = 'text', version = version + 1,"
            " updated_by = 'bob', updated_at = now() WHERE id = $1",
            doc,
        )
        assert await app.fetchval(count, doc) == 1
        # Metadata changes are audited.
        await app.execute("UPDATE shared_documents SET is_locked = true, locked_by = 'bob', locked_at = now(),"
                          " lock_expires_at = now() + interval '1 minute' WHERE id = $1", doc)
        await app.execute("UPDATE shared_documents SET deleted_at = now() WHERE id = $1", doc)
        assert await app.fetchval(count, doc) == 3
        assert await app.fetchval("SELECT head_seq FROM shared_documents WHERE id = $1", doc) == 5


async def test_cascaded_deletes_are_audited(app, audit_db) -> None:
    async with tenant(app, TENANT_A, user_id="alice", rollback=True):
        ws = await app.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'Doomed', 'a') RETURNING id", TENANT_A
        )
        await app.execute(
            "INSERT INTO workspace_members (tenant_id, workspace_id, agent_id) VALUES ($1, $2, 'm')", TENANT_A, ws
        )
        doc = await app.fetchval(
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by)"
            " VALUES ($1, $2, 'D', 'a') RETURNING id",
            TENANT_A,
            ws,
        )
        await app.execute("DELETE FROM workspaces WHERE id = $1", ws)
        deleted = {
            (r["table_name"], r["record_id"])
            for r in await app.fetch(
                "SELECT table_name, record_id FROM audit_log WHERE action = 'DELETE' AND changed_by = 'alice'"
            )
        }
    assert deleted == {("workspaces", ws), ("workspace_members", ws), ("shared_documents", doc)}


async def test_app_role_cannot_insert_update_or_delete_audit_rows(app) -> None:
    # NOTES 5: SELECT only for the app; only the trigger writes.
    async with tenant(app, TENANT_A, rollback=True):
        assert await app.fetchval("SELECT count(*) FROM audit_log") > 0
    for sql in (
        "INSERT INTO audit_log (tenant_id, table_name, record_id, action, changed_by)"
        " VALUES (current_tenant_id(), 'tasks', current_tenant_id(), 'DELETE', 'forged')",
        "UPDATE audit_log SET changed_by = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "TRUNCATE audit_log_default",
    ):
        async with tenant(app, TENANT_A, rollback=True):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(sql)


async def test_owner_role_can_only_insert_audit_rows(audit_db) -> None:
    # Even the owner (RLS forced) has no UPDATE or DELETE policy on audit_log.
    admin = await asyncpg.connect(audit_db.admin_url)
    try:
        async with admin.transaction():
            await admin.execute("SET LOCAL ROLE tandem_owner")
            await admin.execute("SELECT set_config('app.current_tenant', $1, true)", str(TENANT_A))
            assert await admin.fetchval("SELECT count(*) FROM audit_log") > 0
            assert await admin.execute("UPDATE audit_log SET changed_by = 'x'") == "UPDATE 0"
            assert await admin.execute("DELETE FROM audit_log") == "DELETE 0"
            await admin.execute("RESET ROLE")
            assert await admin.fetchval("SELECT count(*) FROM audit_log WHERE changed_by = 'x'") == 0
    finally:
        await admin.close()


async def test_activity_stamp_updates_write_no_audit_row(app, audit_db) -> None:
    # Like NOTES 22: an agent coming back bumps last_activity_at / last_seen_at; not audited.
    rows = audit_db.rows[TENANT_A]
    async with tenant(app, TENANT_A, user_id="alice", rollback=True):
        count = "SELECT count(*) FROM audit_log WHERE changed_by = 'alice'"
        await app.execute(
            "UPDATE workspaces SET last_activity_at = now() + interval '1 s' WHERE id = $1", rows.workspace_id
        )
        await app.execute(
            "UPDATE workspace_members SET last_seen_at = now() + interval '1 s' WHERE workspace_id = $1",
            rows.workspace_id,
        )
        assert await app.fetchval(count) == 0
        await app.execute("UPDATE workspaces SET state = '{\"mode\": \"review\"}' WHERE id = $1", rows.workspace_id)
        await app.execute(
            "UPDATE workspace_members SET member_state = '{\"cursor\": 3}' WHERE workspace_id = $1",
            rows.workspace_id,
        )
        assert await app.fetchval(count) == 2


# Columns whose changes alone are not audited; every other column must be compared.
QUIET_COLUMNS = {
    "shared_documents": {"head_seq", "content", "version", "updated_at", "updated_by"},
    "workspaces": {"last_activity_at", "updated_at"},
    "workspace_members": {"last_seen_at"},
}


@pytest.mark.parametrize("table", sorted(QUIET_COLUMNS))
async def test_update_audit_trigger_compares_every_column_but_the_quiet_ones(app, audit_db, table) -> None:
    # Guards the WHEN clauses: a column added to the table later must be added to its trigger.
    admin = await asyncpg.connect(audit_db.admin_url)
    try:
        columns = {
            r["attname"]
            for r in await admin.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                table,
            )
        }
        definitions = [
            r["def"]
            for r in await admin.fetch(
                "SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger"
                " WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgname LIKE 'audit_%'",
                table,
            )
        ]
    finally:
        await admin.close()
    update_triggers = [d for d in definitions if " UPDATE " in d]
    assert len(update_triggers) == 1, definitions
    compared = set(re.findall(r"old\.(\w+)", update_triggers[0]))
    assert compared == set(re.findall(r"new\.(\w+)", update_triggers[0]))
    assert compared == columns - QUIET_COLUMNS[table]
