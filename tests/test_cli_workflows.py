"""`tandem workflow list|show` (server/tools/cli_workflows.py): real `tandem` processes against this
test's migrated database; workflows are defined with the server's own function, as an admin of
the workspace would over the protocol."""

from __future__ import annotations

import asyncpg

from server.core.settings import Settings
from server.db import store
from server.wire import protocol_agents as pa
from server.workspaces import agents
from server.workspaces import directory as workspaces
from server.workspaces import workflows
from tests.conftest import TENANT_A, TENANT_B
from tests.test_cli_admin import one_line_error, tandem
from tests.test_cli_ops import env, json_lines, lines  # noqa: F401 - env is a fixture

STEPS = [
    {"id": "draft", "task": {"title": "Draft"}, "agent": "writer"},
    {
        "id": "review",
        "task": {"title": "Review"},
        "capability": "review",
        "depends_on": ["draft"],
    },
]


async def test_workflow_list_and_show(env: dict[str, str], pool: asyncpg.Pool) -> None:  # noqa: F811
    settings = Settings()
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        ws = await workspaces.create_workspace(conn, TENANT_A, "olga", "Pipelines")
        reviewer = pa.AgentRegister(name="Reviewer", capabilities=["review"])
        await agents.register(conn, "reviewer", reviewer, settings.presence_ttl_s)
        review = await workflows.define(
            conn,
            "olga",
            "owner",
            ws.workspace_id,
            "review",
            {"type": "parallel", "steps": STEPS},
            None,
            settings,
        )
        await workflows.define(
            conn,
            "olga",
            "owner",
            ws.workspace_id,
            "review",
            {"type": "sequential", "steps": STEPS[:1]},
            "v2",
            settings,
        )
        old = await workflows.define(
            conn,
            "olga",
            "owner",
            ws.workspace_id,
            "old",
            {"type": "sequential", "steps": STEPS[:1]},
            None,
            settings,
        )
        await workflows.deactivate(conn, "owner", ws.workspace_id, old["workflow_id"])
    workspace = str(ws.workspace_id)

    listed = lines(
        tandem("workflow", "list", "--tenant", str(TENANT_A), workspace, env=env)
    )
    assert len(listed) == 1 and listed[0].split() == [
        review["workflow_id"],
        "v2",
        "sequential",
        "active",
        "review",
    ]
    every = json_lines(
        tandem(
            "workflow",
            "list",
            "--tenant",
            str(TENANT_A),
            workspace,
            "--all",
            "--json",
            env=env,
        )
    )
    assert [(w["name"], w["version"], w["active"]) for w in every] == [
        ("old", 1, False),
        ("review", 2, True),
    ]

    first = json_lines(
        tandem(
            "workflow",
            "show",
            "--tenant",
            str(TENANT_A),
            review["workflow_id"],
            "--version",
            "1",
            "--json",
            env=env,
        )
    )
    assert [
        (w["version"], w["latest_version"], w["type"], [s["id"] for s in w["steps"]])
        for w in first
    ] == [(1, 2, "parallel", ["draft", "review"])]
    shown = lines(
        tandem(
            "workflow",
            "show",
            "--tenant",
            str(TENANT_A),
            review["workflow_id"],
            env=env,
        )
    )
    assert "version:        2" in shown and "  draft: Draft (agent writer)" in shown

    # Another tenant's workflow, or a version that does not exist: one error line, exit 1.
    for tenant, extra in ((TENANT_B, ()), (TENANT_A, ("--version", "3"))):
        error = one_line_error(
            tandem(
                "workflow",
                "show",
                "--tenant",
                str(tenant),
                review["workflow_id"],
                *extra,
                env=env,
            )
        )
        assert "not found in tenant" in error


async def test_workflow_start_runs_and_cancel(env: dict[str, str], pool: asyncpg.Pool, admin: asyncpg.Connection) -> None:  # noqa: F811
    settings = Settings()
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        ws = await workspaces.create_workspace(conn, TENANT_A, "olga", "Runs")
        reviewer = pa.AgentRegister(name="Reviewer", capabilities=["review"])
        await agents.register(conn, "reviewer", reviewer, settings.presence_ttl_s)
        flow = await workflows.define(
            conn, "olga", "owner", ws.workspace_id, "review", {"type": "parallel", "steps": STEPS}, None, settings
        )
    tenant, flow_id = str(TENANT_A), flow["workflow_id"]

    [started] = json_lines(
        tandem("workflow", "start", "--tenant", tenant, flow_id, "--input", '{"topic": "cats"}', "--json", env=env)
    )
    assert (started["status"], started["input"], started["triggered_by"]) == ("running", {"topic": "cats"}, "tandem-cli")
    assert started["step_states"]["draft"]["status"] == "running"
    assert await admin.fetchval("SELECT assigned_to FROM tasks WHERE execution_id = $1", started["execution_id"]) == "writer"

    listed = lines(tandem("workflow", "runs", "--tenant", tenant, str(ws.workspace_id), env=env))
    assert len(listed) == 1 and listed[0].split()[:3] == [started["execution_id"], "running", "v1"]

    [cancelled] = json_lines(tandem("workflow", "cancel", "--tenant", tenant, started["execution_id"], "--json", env=env))
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    assert await admin.fetchval("SELECT status::text FROM tasks WHERE execution_id = $1", started["execution_id"]) == "cancelled"
    shown = lines(tandem("workflow", "runs", "--tenant", tenant, str(ws.workspace_id), "--status", "running", env=env))
    assert shown == []

    # Refusals: one error line, exit 1, nothing stored.
    again = one_line_error(tandem("workflow", "cancel", "--tenant", tenant, started["execution_id"], env=env))
    assert "invalid_transition" in again
    for args in (
        (flow_id, "--input", "[1]"),
        (flow_id, "--input", "{oops"),
        ("00000000-0000-4000-8000-000000000000",),
    ):
        one_line_error(tandem("workflow", "start", "--tenant", tenant, *args, env=env))
    other = one_line_error(tandem("workflow", "start", "--tenant", str(TENANT_B), flow_id, env=env))
    assert "not_found" in other
    assert await admin.fetchval("SELECT count(*) FROM workflow_executions WHERE workflow_id = $1", flow_id) == 1
