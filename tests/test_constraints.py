"""Every CHECK constraint family rejects bad data, under the seed's constraint names.

Each case inserts one otherwise valid row with a single bad value; the base rows themselves are
inserted too, so a case fails only because of its bad value.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from tests.schema_helpers import TENANT_A, TenantRows, populated_database


@dataclass
class Database:
    admin_url: str
    rows: TenantRows


@pytest.fixture(scope="module")
async def constraints_db(postgres) -> AsyncIterator[Database]:
    async with populated_database(postgres, (TENANT_A,)) as pop:
        yield Database(pop.admin_url, pop.rows[TENANT_A])


@pytest.fixture
async def admin_tx(constraints_db: Database) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection inside a transaction that is rolled back."""
    conn = await asyncpg.connect(constraints_db.admin_url)
    tx = conn.transaction()
    await tx.start()
    try:
        yield conn
    finally:
        await tx.rollback()
        await conn.close()


def _base(table: str, rows: TenantRows) -> dict[str, str]:
    """SQL expressions of a valid row of `table`."""
    t = f"'{rows.tenant_id}'::uuid"

    def q(value: uuid.UUID) -> str:
        return f"'{value}'::uuid"

    return {
        "tasks": {"tenant_id": t, "type": "'t'", "title": "'A task'", "created_by": "'a'"},
        "task_delegations": {
            "tenant_id": t, "task_id": q(rows.task_id), "from_agent_id": "'a'", "to_agent_id": "'b'",
        },
        "workflows": {"tenant_id": t, "name": "'Flow'", "created_by": "'a'"},
        "workflow_executions": {"tenant_id": t, "workflow_id": q(rows.workflow_id), "triggered_by": "'a'"},
        "workspaces": {"tenant_id": t, "name": "'Space'", "owner_id": "'a'"},
        "workspace_members": {
            "tenant_id": t, "workspace_id": q(rows.workspace_id), "agent_id": "gen_random_uuid()::text",
        },
        "shared_documents": {
            "tenant_id": t, "workspace_id": q(rows.workspace_id), "title": "'Doc'", "created_by": "'a'",
        },
        "document_operations": {
            "tenant_id": t, "document_id": q(rows.document_id), "agent_id": "'a'", "operation_type": "'insert'",
            "update": "'\\x00'::bytea", "sequence_number": "1000",
        },
        "document_snapshots": {
            "tenant_id": t, "document_id": q(rows.document_id), "sequence_number": "1000", "state": "'\\x00'::bytea",
        },
        "audit_log": {
            "tenant_id": t, "table_name": "'tasks'", "record_id": q(rows.task_id), "action": "'INSERT'",
            "changed_by": "'a'",
        },
        "conflict_resolutions": {
            "tenant_id": t, "resource_type": "'document'", "resource_id": q(rows.document_id), "conflict_type": "'c'",
        },
    }[table]


async def _insert(conn: asyncpg.Connection, table: str, rows: TenantRows, overrides: dict[str, str]) -> None:
    values = {**_base(table, rows), **overrides}
    await conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(values.values())})")


# (table, bad values, constraint expected to reject them)
CHECKS: list[tuple[str, dict[str, str], str]] = [
    # empty or blank titles and names
    ("tasks", {"title": "''"}, "title_not_empty"),
    ("tasks", {"title": "'   '"}, "title_not_empty"),
    ("tasks", {"title": "E' \\t\\n'"}, "title_not_empty"),
    ("workflows", {"name": "''"}, "name_not_empty"),
    ("workflows", {"name": "'  '"}, "name_not_empty"),
    ("workspaces", {"name": "''"}, "workspace_name_not_empty"),
    ("workspaces", {"name": "' '"}, "workspace_name_not_empty"),
    ("shared_documents", {"title": "''"}, "doc_title_not_empty"),
    ("shared_documents", {"title": "'   '"}, "doc_title_not_empty"),
    # JSONB columns of the wrong kind
    ("tasks", {"parameters": "'[]'"}, "parameters_is_object"),
    ("tasks", {"parameters": "'\"text\"'"}, "parameters_is_object"),
    ("tasks", {"result": "'[1]'"}, "result_is_object"),
    ("task_delegations", {"metadata": "'[]'"}, "metadata_is_object"),
    ("workflows", {"agents": "'[]'"}, "valid_agents_jsonb"),
    ("workflows", {"steps": "'{}'"}, "valid_steps_jsonb"),
    ("workflows", {"config": "'1'"}, "valid_config_jsonb"),
    ("workflow_executions", {"input": "'[]'"}, "valid_input"),
    ("workflow_executions", {"context": "'null'"}, "valid_context"),
    ("workflow_executions", {"step_results": "'[]'"}, "valid_step_results"),
    ("workspaces", {"state": "'[]'"}, "valid_state"),
    ("workspaces", {"config": "'true'"}, "valid_config"),
    ("workspace_members", {"permissions": "'{}'"}, "valid_permissions"),
    ("workspace_members", {"member_state": "'[]'"}, "valid_member_state"),
    ("shared_documents", {"metadata": "'[]'"}, "valid_metadata"),
    ("document_operations", {"operation_data": "'[]'"}, "valid_operation_data"),
    ("document_operations", {"vector_clock": "'[1]'"}, "valid_vector_clock"),
    ("conflict_resolutions", {"details": "'[]'"}, "valid_details"),
    # retry bounds, timeout, member and version limits
    ("tasks", {"max_retries": "11"}, "valid_max_retries"),
    ("tasks", {"max_retries": "-1", "retry_count": "NULL"}, "valid_max_retries"),
    ("tasks", {"max_retries": "3", "retry_count": "4"}, "retry_count_valid"),
    ("tasks", {"retry_count": "-1"}, "retry_count_valid"),
    ("tasks", {"timeout_seconds": "0"}, "valid_timeout"),
    ("workspaces", {"max_members": "0"}, "valid_max_members"),
    ("workspaces", {"max_members": "1001"}, "valid_max_members"),
    ("workflows", {"version": "0"}, "version_positive"),
    ("shared_documents", {"version": "0"}, "doc_version_positive"),
    ("shared_documents", {"head_seq": "-1"}, "head_seq_not_negative"),
    # enumerated text values
    ("shared_documents", {"content_type": "'pdf'"}, "shared_documents_content_type_check"),
    ("document_operations", {"operation_type": "'rename'"}, "document_operations_operation_type_check"),
    ("audit_log", {"action": "'TRUNCATE'"}, "audit_log_action_check"),
    # lock fields all set or all clear
    ("shared_documents", {"is_locked": "true"}, "lock_consistency"),
    ("shared_documents", {"is_locked": "true", "locked_by": "'a'", "locked_at": "now()"}, "lock_consistency"),
    ("shared_documents", {"locked_by": "'a'"}, "lock_consistency"),
    # sequence numbers
    ("document_operations", {"sequence_number": "0"}, "sequence_number_positive"),
    ("document_snapshots", {"sequence_number": "-1"}, "snapshot_sequence_not_negative"),
]


@pytest.mark.parametrize(
    ("table", "bad", "constraint"), CHECKS, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(CHECKS)]
)
async def test_check_constraint_rejects_bad_value(admin_tx, constraints_db, table, bad, constraint) -> None:
    await _insert(admin_tx, table, constraints_db.rows, {})  # the base row is valid
    with pytest.raises(asyncpg.CheckViolationError) as err:
        async with admin_tx.transaction():  # a savepoint, rolled back by the error
            await _insert(admin_tx, table, constraints_db.rows, bad)
    assert err.value.constraint_name == constraint


# (table, column, invalid label) for every enum-typed column
ENUMS = [
    ("tasks", "status", "bogus"),
    ("tasks", "priority", "urgent"),
    ("task_delegations", "delegation_type", "random"),
    ("workflows", "type", "chaotic"),
    ("workflow_executions", "status", "exploded"),
    ("workspaces", "visibility", "secret"),
    ("workspace_members", "role", "god"),
]


@pytest.mark.parametrize(("table", "column", "label"), ENUMS, ids=[f"{t}.{c}" for t, c, _ in ENUMS])
async def test_enum_column_rejects_unknown_label(admin_tx, constraints_db, table, column, label) -> None:
    with pytest.raises(asyncpg.InvalidTextRepresentationError, match="invalid input value for enum"):
        await _insert(admin_tx, table, constraints_db.rows, {column: f"'{label}'"})


@pytest.mark.parametrize(
    ("table", "good"),
    [
        (
            "shared_documents",
            {"is_locked": "true", "locked_by": "'a'", "locked_at": "now()", "lock_expires_at": "now()"},
        ),
        ("shared_documents", {"content_type": "'markdown'"}),
        ("tasks", {"max_retries": "10", "retry_count": "10", "timeout_seconds": "1"}),
        ("tasks", {"max_retries": "0", "retry_count": "0"}),
        ("workspaces", {"max_members": "1000"}),
        ("workflow_executions", {"status": "'paused'"}),
        ("document_operations", {"operation_type": "'format'", "vector_clock": "'{\"a\": 3}'"}),
        ("document_snapshots", {"sequence_number": "0"}),
    ],
)
async def test_boundary_values_are_accepted(admin_tx, constraints_db, table, good) -> None:
    await _insert(admin_tx, table, constraints_db.rows, good)


async def test_operation_update_bytes_are_required(admin_tx, constraints_db) -> None:
    with pytest.raises(asyncpg.NotNullViolationError):
        await _insert(admin_tx, "document_operations", constraints_db.rows, {"update": "NULL"})
