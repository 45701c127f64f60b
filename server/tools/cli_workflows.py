"""`tandem workflow list|show`: the workflow definitions of a tenant (docs/protocol.md section 12.8),
read as the application role in the tenant's transaction, like the other operator commands
(server/tools/cli_ops.py). Defining stays with agents over the protocol, where roles apply.
`tandem workflow start|cancel|runs`: its executions (section 12.9), started and cancelled by the
engine in the command's transaction with their events, as a workspace owner would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import asyncpg
import typer

from server.cluster.events import Events
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
from server.tools.cli_shared import DataDir, Tenant, fail, out, run_admin, settings_from
from server.workspaces import executions, workflows
from server.workspaces.workspace_events import execution_events

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


# --- executions (docs/protocol.md section 12.9) ------------------------------------------------

ExecutionId = Annotated[
    uuid.UUID,
    typer.Argument(
        metavar="EXECUTION", help="Execution id (a UUID).", show_default=False
    ),
]
Input = Annotated[
    str,
    typer.Option(
        "--input",
        metavar="JSON",
        help="The execution's input: a JSON object (default {}).",
    ),
]
ForWorkflow = Annotated[
    uuid.UUID | None,
    typer.Option(
        "--workflow", metavar="WORKFLOW", help="Only this workflow's executions."
    ),
]
Statuses = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        metavar="STATUS",
        help="Only executions in this status (repeatable).",
    ),
]


async def _published(
    conn: asyncpg.Connection, tenant: uuid.UUID, run: executions.Outcome
) -> None:
    """The run's events, NOTIFYed in its transaction: every node's sessions hear of it as of
    a change made through the protocol (the command has no sessions of its own to deliver to)."""
    notifier = Events(ACTOR)
    for event in execution_events(tenant, run, ACTOR):
        await notifier.notify(conn, event)


def _print_execution(ex: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(ex)
        return
    states = ex["step_states"]
    shown = {
        k: v
        for k, v in ex.items()
        if k not in ("step_states", "step_results", "input", "context", "output")
    }
    print_fields(shown)
    for step_id, state in states.items():
        error = f"  {state['error']}" if state.get("error") else ""
        out(f"  {step_id}: {state['status']} (attempt {state['attempt']}){error}")


def workflow_start(
    tenant: Tenant, workflow: WorkflowId, version: Version = None, input_json: Input = "{}",
    as_json: AsJson = False, data_dir: DataDir = None,
) -> None:  # fmt: skip
    """Start WORKFLOW of the tenant with --input; prints the execution.

    As the operator, with a workspace owner's rights: the ready steps' tasks are created and
    given out at once, and every node's sessions hear of it."""
    settings = settings_from(data_dir=data_dir)
    try:
        given = json.loads(input_json)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON: {exc.msg} at character {exc.pos}")
    if not isinstance(given, dict):
        fail("--input must be a JSON object")

    async def action(pool: asyncpg.Pool) -> Any:
        with _refused(f"workflow {workflow} not started"):
            async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
                found = await workflows.get(conn, None, workflow, None)
                run = await executions.start(
                    conn, ACTOR, "owner", uuid.UUID(found["workspace_id"]), workflow, version, given, {},
                    max_input_bytes=settings.max_execution_input_bytes, seen_within_s=settings.presence_ttl_s,
                )  # fmt: skip
                await _published(conn, tenant, run)
        assert run.execution is not None
        return run.execution.to_wire()

    _print_execution(run_admin(settings, action), as_json)


@contextmanager
def _refused(what: str) -> Iterator[None]:
    """A refusal of the action (a `TandemError`) as one line: WHAT: code: message."""
    try:
        yield
    except TandemError as exc:
        raise AdminError(f"{what}: {exc.code.value}: {exc.message}") from None


def workflow_cancel(
    tenant: Tenant,
    execution: ExecutionId,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Cancel EXECUTION of the tenant and its open tasks; prints the execution."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        with _refused(f"execution {execution} not cancelled"):
            async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
                found, _ = await executions.get(conn, None, execution, 1)
                assert found.workspace_id is not None
                run = await executions.control(conn, "owner", found.workspace_id, execution, "cancel", settings.presence_ttl_s)
                await _published(conn, tenant, run)
        assert run.execution is not None
        return run.execution.to_wire()

    _print_execution(run_admin(settings, action), as_json)


def workflow_runs(
    tenant: Tenant, workspace: WorkspaceId, workflow: ForWorkflow = None, status: Statuses = None,
    limit: Limit = DEFAULT_LIMIT, as_json: AsJson = False, data_dir: DataDir = None,
) -> None:  # fmt: skip
    """List WORKSPACE's executions, newest first: id, status, workflow version, started, triggered by."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
            return await executions.list_executions(
                conn, workspace, workflow, status, limit
            )

    found, truncated = run_admin(settings, action)
    for ex in found:
        if as_json:
            echo_json(ex.to_wire())
        else:
            wire = ex.to_wire()
            out(
                f"{wire['execution_id']}  {wire['status']:<9}  v{wire['workflow_version']:<4}  {wire['started_at']}  {wire['triggered_by']}"
            )
    note_truncated(truncated, limit)
