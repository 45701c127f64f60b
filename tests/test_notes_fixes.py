"""NOTES.md items not covered by the isolation, constraint, audit and partition tests.

Each test names its item; each fails against the seed's version of what it covers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.schema_helpers import (
    APP_PRIVILEGES,
    OWNER_READS_ALL,
    TABLES,
    TENANT_A,
    TENANT_B,
    VIEWS,
    build_tenant,
    tenant,
)


@pytest.fixture
async def admin_conn(db) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.admin_url)
    try:
        yield conn
    finally:
        await conn.close()


# --- NOTES 6: the audit trigger cannot be redirected ---------------------------------------------


async def test_notes6_temp_table_named_audit_log_does_not_swallow_audit_rows(app_conn, admin_conn) -> None:
    await app_conn.execute(
        "CREATE TEMP TABLE audit_log (id uuid, tenant_id uuid, table_name text, record_id uuid, action text,"
        " old_data jsonb, new_data jsonb, changed_fields text[], changed_by text, ip_address inet,"
        " user_agent text, changed_at timestamptz)"
    )
    async with tenant(app_conn, TENANT_A, user_id="mallory"):
        task = await app_conn.fetchval(
            "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', 'x', 'a') RETURNING id", TENANT_A
        )
    assert await app_conn.fetchval("SELECT count(*) FROM pg_temp.audit_log") == 0
    assert await admin_conn.fetchval("SELECT count(*) FROM public.audit_log WHERE record_id = $1", task) == 1
    fn = await admin_conn.fetchrow(
        "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'audit_trigger_function'"
    )
    assert fn["prosecdef"] and "search_path=pg_catalog, public" in fn["proconfig"]


# --- NOTES 7: current_tenant_id() cannot be hijacked ---------------------------------------------


async def test_notes7_shadowed_current_setting_cannot_hijack_current_tenant_id(app_conn, admin_conn) -> None:
    intruder = f"intruder_{uuid.uuid4().hex[:8]}"
    await admin_conn.execute(f"CREATE ROLE {intruder} NOLOGIN")
    try:
        # A role with a schema of its own puts a current_setting() there that names tenant B.
        await admin_conn.execute(f"CREATE SCHEMA {intruder} AUTHORIZATION {intruder}")
        await admin_conn.execute(f"GRANT USAGE ON SCHEMA {intruder} TO PUBLIC")
        await admin_conn.execute(f"SET ROLE {intruder}")
        await admin_conn.execute(
            f"CREATE FUNCTION {intruder}.current_setting(text, boolean) RETURNS text LANGUAGE sql"
            f" AS $$ SELECT '{TENANT_B}'::text $$"
        )
        await admin_conn.execute(f"GRANT EXECUTE ON FUNCTION {intruder}.current_setting(text, boolean) TO PUBLIC")
        # The seed's function was executable by anyone (and ran as superuser): not any more.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin_conn.fetchval("SELECT public.current_tenant_id()")
        await admin_conn.execute("RESET ROLE")

        await build_tenant(app_conn, TENANT_B)
        await app_conn.execute(f"SET search_path = {intruder}, pg_catalog, public")
        async with tenant(app_conn, TENANT_A, rollback=True):
            # The shadow is in effect for unqualified calls...
            assert await app_conn.fetchval("SELECT current_setting('app.current_tenant', true)") == str(TENANT_B)
            # ...but not inside current_tenant_id(), nor in the policies that call it.
            assert await app_conn.fetchval("SELECT current_tenant_id()") == TENANT_A
            assert await app_conn.fetchval("SELECT count(*) FROM tasks") == 0
        fn = await admin_conn.fetchrow(
            "SELECT prosecdef, provolatile, proconfig FROM pg_proc WHERE proname = 'current_tenant_id'"
        )
        assert fn["prosecdef"] is False
        # Qualified names instead of SET search_path, so the function can be inlined (NOTES 21).
        assert fn["proconfig"] is None
    finally:
        await admin_conn.execute("RESET ROLE")
        await admin_conn.execute(f"DROP SCHEMA IF EXISTS {intruder} CASCADE")
        await admin_conn.execute(f"DROP ROLE {intruder}")


# --- NOTES 9: RLS is forced on every tenant table -------------------------------------------------


async def test_notes9_owner_role_is_bound_by_policies_on_every_tenant_table(app_conn, admin_conn) -> None:
    await build_tenant(app_conn, TENANT_A)
    flags = {
        r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"])
        for r in await admin_conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
            TABLES,
        )
    }
    assert flags == {t: (True, True) for t in TABLES}
    async with admin_conn.transaction():
        await admin_conn.execute("SET LOCAL ROLE tandem_owner")
        for table in sorted(set(TABLES) - OWNER_READS_ALL):
            assert await admin_conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        await admin_conn.execute("SELECT set_config('app.current_tenant', $1, true)", str(TENANT_A))
        for table in TABLES:
            assert await admin_conn.fetchval(f"SELECT count(*) FROM {table}") > 0, table


# --- NOTES 11: every privilege of the app role is explicit ----------------------------------------


async def test_notes11_app_role_has_exactly_the_privileges_it_needs(admin_conn) -> None:
    grants: dict[str, set[str]] = {}
    for r in await admin_conn.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = 'tandem_app' AND table_schema = 'public'"
    ):
        grants.setdefault(r["table_name"], set()).add(r["privilege_type"])
    expected = {t: set(p) for t, p in APP_PRIVILEGES.items()} | {v: {"SELECT"} for v in VIEWS}
    expected["workspace_locks"] = {"SELECT", "INSERT", "UPDATE", "DELETE"}  # 0017; isolation: tests/e2e/test_coordination_bad_input.py
    assert grants == expected

    executable = {
        r["proname"]
        for r in await admin_conn.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " AND has_function_privilege('tandem_app', oid, 'EXECUTE')"
        )
    }
    assert executable == {
        "current_tenant_id", "jsonb_merge_recursive", "validate_jsonb_keys", "soft_delete_task",
        "tandem_maintain_partitions", "lock_allows_write", "sweep_task_timeouts", "tandem_append_batch",
        "tandem_uuidv7", "tenants_with_overdue_tasks", "tandem_ops_hint",  # 0022: called by tandem_append_batch
        "agent_listed_status",  # 0023
        "tenants_with_open_step_tasks",  # 0026: the failover sweep's tenant ids
        "live_token_revocations",  # 0028: a node's cache of the revocations in force, of every tenant
        "tandem_webhook_emit",  # 0030: the outbox's one writer, in the change's transaction
        "tandem_webhook_documents_changed",  # 0030: the log's trigger (a trigger function)
        "tenants_with_due_webhooks",  # 0030: the delivery loop's tenant ids
        "sweep_webhook_outbox",  # 0030: retention, a count back
        "claim_agent_slot",  # 0031: the engine's pick of a free agent, under that agent's lock
    }
    schema = await admin_conn.fetchrow(
        "SELECT has_schema_privilege('tandem_app', 'public', 'USAGE') AS usage,"
        " has_schema_privilege('tandem_app', 'public', 'CREATE') AS create"
    )
    assert schema["usage"] and not schema["create"]
    assert not await admin_conn.fetchval("SELECT has_table_privilege('tandem_app', 'schema_migrations', 'SELECT')")


# --- NOTES 12: per-document sequence numbers ------------------------------------------------------


async def test_notes12_duplicate_sequence_number_in_a_document_is_rejected(app_conn) -> None:
    rows = await build_tenant(app_conn, TENANT_A)
    async with tenant(app_conn, TENANT_A, rollback=True):
        seq = await app_conn.fetchval(
            "SELECT max(sequence_number) FROM document_operations WHERE document_id = $1", rows.document_id
        )
        with pytest.raises(asyncpg.UniqueViolationError) as err:
            await app_conn.execute(
                "INSERT INTO document_operations"
                " (tenant_id, document_id, agent_id, operation_type, update, sequence_number)"
                " VALUES ($1, $2, 'a', 'insert', '\\x00'::bytea, $3)",
                TENANT_A,
                rows.document_id,
                seq,
            )
    assert err.value.constraint_name == "document_operations_document_id_sequence_number_key"


async def test_notes12_no_global_sequence_and_numbers_are_required(admin_conn) -> None:
    # Operations number per document. The sequences are the locks' fencing tokens (migration 0017)
    # and the webhook events' and deliveries' ids (0030: an event id orders one endpoint's events).
    assert sorted(r["relname"] for r in await admin_conn.fetch(
        "SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace"
    )) == ["lock_fence_seq", "webhook_deliveries_id_seq", "webhook_outbox_id_seq"]  # fmt: skip
    default = await admin_conn.fetchval(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a"
        " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        " WHERE d.adrelid = 'document_operations'::regclass AND a.attname = 'sequence_number'"
    )
    assert default is None


async def test_notes12_head_counter_gives_a_polling_reader_every_operation_in_order(db) -> None:
    writers, per_writer = 4, 30
    setup = await asyncpg.connect(db.app_url)
    try:
        rows = await build_tenant(setup, TENANT_A)
        async with tenant(setup, TENANT_A):
            doc = await setup.fetchval(
                "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by) VALUES ($1, $2, 'seq', 'a')"
                " RETURNING id",
                TENANT_A,
                rows.workspace_id,
            )
    finally:
        await setup.close()
    total = writers * per_writer
    done = asyncio.Event()

    async def write(n: int) -> None:
        conn = await asyncpg.connect(db.app_url)
        try:
            for i in range(per_writer):
                async with tenant(conn, TENANT_A, user_id=f"w{n}"):
                    head = await conn.fetchval(
                        "UPDATE shared_documents SET head_seq = head_seq + 1 WHERE id = $1 RETURNING head_seq", doc
                    )
                    await conn.execute(
                        "INSERT INTO document_operations"
                        " (tenant_id, document_id, agent_id, operation_type, update, sequence_number)"
                        " VALUES ($1, $2, $3, 'insert', $4, $5)",
                        TENANT_A, doc, f"w{n}", bytes([n, i]), head,
                    )
        finally:
            await conn.close()

    async def read() -> list[int]:
        conn = await asyncpg.connect(db.app_url)
        seen: list[int] = []
        try:
            async with asyncio.timeout(60):
                while len(seen) < total:
                    async with tenant(conn, TENANT_A):
                        batch = [
                            r["sequence_number"]
                            for r in await conn.fetch(
                                "SELECT sequence_number FROM document_operations"
                                " WHERE document_id = $1 AND sequence_number > $2 ORDER BY sequence_number",
                                doc,
                                seen[-1] if seen else 0,
                            )
                        ]
                    seen += batch
                    if not batch:
                        if done.is_set() and len(seen) < total:
                            break
                        await asyncio.sleep(0.005)
        finally:
            await conn.close()
        return seen

    reader = asyncio.create_task(read())
    await asyncio.gather(*(write(n) for n in range(writers)))
    done.set()
    seen = await reader
    assert seen == list(range(1, total + 1))


# --- NOTES 16: the actor comes from app.user_id ---------------------------------------------------


async def test_notes16_audit_actor_comes_from_app_user_id_set_for_the_session(app_conn) -> None:
    await app_conn.execute("SET app.user_id = 'carol'")  # app.current_user would be a syntax error
    async with tenant(app_conn, TENANT_A, rollback=True):
        task = await app_conn.fetchval(
            "INSERT INTO tasks (tenant_id, type, title, created_by) VALUES ($1, 't', 'x', 'a') RETURNING id", TENANT_A
        )
        assert await app_conn.fetchval("SELECT changed_by FROM audit_log WHERE record_id = $1", task) == "carol"


# --- NOTES 18: what is (not) partitioned ----------------------------------------------------------


async def test_notes18_tasks_is_a_plain_table_with_storage_settings_and_audit_key_includes_changed_at(
    admin_conn,
) -> None:
    tasks = await admin_conn.fetchrow("SELECT relkind::text, reloptions FROM pg_class WHERE relname = 'tasks'")
    assert tasks["relkind"] == "r"
    assert {"fillfactor=80", "autovacuum_vacuum_scale_factor=0.05", "autovacuum_vacuum_cost_limit=1000"} <= set(
        tasks["reloptions"]
    )
    audit = await admin_conn.fetchrow("SELECT relkind::text, reloptions FROM pg_class WHERE relname = 'audit_log'")
    assert audit["relkind"] == "p" and audit["reloptions"] is None
    pk = await admin_conn.fetchval(
        "SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
        " WHERE c.conname = 'audit_log_pkey'"
    )
    assert pk == ["id", "changed_at"]
    # Tables referencing tasks keep working foreign keys.
    referencing = {
        r["conrelid"]
        for r in await admin_conn.fetch(
            "SELECT conrelid::regclass::text AS conrelid FROM pg_constraint WHERE confrelid = 'tasks'::regclass"
        )
    }
    assert referencing == {"tasks", "task_delegations"}


# --- NOTES 21: current_tenant_id() is STABLE, so RLS queries use the tenant indexes ---------------


async def test_notes21_rls_query_uses_a_tenant_index(app_conn, admin_conn) -> None:
    assert await admin_conn.fetchval("SELECT provolatile::text FROM pg_proc WHERE proname = 'current_tenant_id'") == "s"
    await admin_conn.execute("SET session_replication_role = replica")  # bulk load without audit
    await admin_conn.execute(
        "INSERT INTO tasks (tenant_id, type, title, created_by, status)"
        " SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g % 50 + 256), 12, '0'))::uuid, 't', 'task ' || g, 'a',"
        "        'in_progress'"
        "   FROM generate_series(1, 20000) g"
    )
    await admin_conn.execute(
        "INSERT INTO tasks (tenant_id, type, title, created_by) SELECT $1, 't', 'mine ' || g, 'a'"
        " FROM generate_series(1, 200) g",
        TENANT_A,
    )
    await admin_conn.execute("ANALYZE tasks")
    async with tenant(app_conn, TENANT_A, rollback=True):
        plan = json.loads(await app_conn.fetchval("EXPLAIN (FORMAT JSON) SELECT id, title FROM tasks"))
        assert await app_conn.fetchval("SELECT count(*) FROM tasks") == 200
    nodes = _plan_nodes(plan[0]["Plan"])
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
    scans = {n.get("Index Name") for n in nodes if "Index" in n["Node Type"]}
    assert scans & {"idx_tasks_assignee", "tasks_id_tenant_id_key"}, nodes


def _plan_nodes(node: dict) -> list[dict]:
    out = [node]
    for child in node.get("Plans", []):
        out += _plan_nodes(child)
    return out


# --- document snapshots: latest at or before seq N from one index ---------------------------------


async def test_latest_snapshot_at_or_before_a_sequence_number_is_an_index_lookup(app_conn, admin_conn) -> None:
    rows = await build_tenant(app_conn, TENANT_A)
    await admin_conn.execute(
        "INSERT INTO document_snapshots (tenant_id, document_id, sequence_number, state)"
        " SELECT $1, $2, g * 10, '\\x00'::bytea FROM generate_series(1, 2000) g",
        TENANT_A,
        rows.document_id,
    )
    await admin_conn.execute("ANALYZE document_snapshots")
    query = (
        "SELECT sequence_number FROM document_snapshots WHERE document_id = $1 AND sequence_number <= $2"
        " ORDER BY sequence_number DESC LIMIT 1"
    )
    async with tenant(app_conn, TENANT_A, rollback=True):
        assert await app_conn.fetchval(query, rows.document_id, 12345) == 12340
        plan = json.loads(await app_conn.fetchval("EXPLAIN (FORMAT JSON) " + query, rows.document_id, 12345))
    nodes = _plan_nodes(plan[0]["Plan"])
    assert any(n.get("Index Name") == "document_snapshots_document_id_sequence_number_key" for n in nodes), nodes
    assert not any(n["Node Type"] in ("Seq Scan", "Sort") for n in nodes), nodes
