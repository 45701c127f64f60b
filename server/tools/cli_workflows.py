"""`tandem workflow list|show`: the workflow definitions of a tenant (docs/protocol.md section 12.8),
read as the application role in the tenant's transaction, like the other operator commands
(server/tools/cli_ops.py). Defining stays with agents over the protocol, where roles apply.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import asyncpg
import typer

from server.core.errors import TandemError
from server.db import store
from server.tools.admin import ACTOR, AdminError
from server.tools.cli_ops import (
    DEFAULT_LIMIT,
    AsJson,
    Limit,
    WorkspaceId,
    echo_json,
    note_truncated,
    print_fields,
)
from server.tools.cli_shared import DataDir, Tenant, out, run_admin, settings_from
from server.workspaces import workflows

WorkflowId = Annotated[
    uuid.UUID,
    typer.Argument(
        metavar="WORKFLOW", help="Workflow id (a UUID).", show_default=False
    ),
]
Version = Annotated[
    int | None,
    typer.Option(
        "--version", min=1, metavar="N", help="This version (default: the latest)."
    ),
]
All = Annotated[bool, typer.Option("--all", help="Inactive workflows too.")]


def workflow_list(
    tenant: Tenant, workspace: WorkspaceId, include_inactive: All = False, limit: Limit = DEFAULT_LIMIT,
    as_json: AsJson = False, data_dir: DataDir = None,
) -> None:  # fmt: skip
    """List WORKSPACE's workflows by name (active ones unless --all): id, latest version, type, active, name."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
            return await workflows.list_workflows(
                conn, workspace, include_inactive, limit
            )

    found, truncated = run_admin(settings, action)
    for w in found:
        if as_json:
            echo_json(w)
        else:
            state = "active" if w["active"] else "inactive"
            out(
                f"{w['workflow_id']}  v{w['version']:<4}  {w['type']:<13}  {state:<8}  {w['name']}"
            )
    note_truncated(truncated, limit)


def workflow_show(
    tenant: Tenant,
    workflow: WorkflowId,
    version: Version = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Print one version of a workflow of the tenant (--json: with its steps and config)."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        try:
            async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
                return await workflows.get(conn, None, workflow, version)
        except TandemError:
            which = f"version {version} of workflow" if version else "workflow"
            raise AdminError(
                f"{which} {workflow} not found in tenant {tenant}"
            ) from None

    shown = run_admin(settings, action)
    if as_json:
        echo_json(shown)
        return
    steps = shown.pop("steps")
    shown.pop("config")
    print_fields({**shown, "steps": len(steps)})
    for step in steps:
        who = (
            f"agent {step['agent']}"
            if "agent" in step
            else f"capability {step['capability']}"
        )
        after = f" after {', '.join(step['depends_on'])}" if step["depends_on"] else ""
        out(f"  {step['id']}: {step['task']['title']} ({who}){after}")
