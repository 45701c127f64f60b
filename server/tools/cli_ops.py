"""The operator's everyday commands: `workspace list|show|delete`, `document list|show|delete`,
`member list|remove`, `agent list`, `token revoke` and `status` (bodies in server/tools/ops.py,
and server/workspaces/revocations.py for revocations).

Each prints a few plain columns, or with `--json` one JSON object per line (lists) or one object;
deletes are soft (`deleted_at`). server/tools/cli.py registers these functions on its groups.
Output goes through `cli_shared.out`, so a closed stdout stops a list quietly.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any

import asyncpg
import typer

from server.db import store
from server.tools import ops
from server.tools.admin import ACTOR, check_agent_id
from server.tools.cli_shared import (
    DataDir,
    Tenant,
    expected_failures,
    fail,
    out,
    run_admin,
    settings_from,
)
from server.workspaces import revocations
from server.workspaces.directory import rfc3339
from server.workspaces.members import member_to_wire

# Help texts avoid square brackets: rich markup would eat them.
WorkspaceId = Annotated[uuid.UUID, typer.Argument(metavar="WORKSPACE", help="Workspace id (a UUID).", show_default=False)]
DocumentId = Annotated[uuid.UUID, typer.Argument(metavar="DOCUMENT", help="Document id (a UUID).", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON: one object, or one object per line for lists.")]
Limit = Annotated[
    int, typer.Option("--limit", min=1, max=100_000, metavar="N", help="Print at most N rows (a note on stderr when cut).")
]
DEFAULT_LIMIT = 1000


def echo_json(obj: dict[str, Any]) -> None:
    out(json.dumps(obj, ensure_ascii=False))


def note_truncated(truncated: bool, limit: int) -> None:
    if truncated:
        typer.echo(f"tandem: note: more than {limit} rows; raise --limit to see them", err=True)


# --- workspace -------------------------------------------------------------------------------


def workspace_list(tenant: Tenant, limit: Limit = DEFAULT_LIMIT, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List the tenant's live workspaces, oldest first: id, visibility, members, documents, owner, name."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> tuple[list[ops.WorkspaceSummary], bool]:
        return await ops.list_workspaces(pool, tenant, limit)

    found, truncated = run_admin(settings, action)
    for s in found:
        if as_json:
            echo_json(s.to_json())
        else:
            w = s.workspace
            out(f"{w.workspace_id}  {w.visibility:<7}  {s.member_count:>4}  {s.document_count:>5}  {w.owner_id}  {w.name}")
    note_truncated(truncated, limit)


def workspace_show(tenant: Tenant, workspace: WorkspaceId, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Print one live workspace of the tenant, a field per line."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> ops.WorkspaceSummary:
        return await ops.show_workspace(pool, tenant, workspace)

    shown = run_admin(settings, action).to_json()
    if as_json:
        echo_json(shown)
    else:
        print_fields(shown)


def workspace_delete(tenant: Tenant, workspace: WorkspaceId, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Soft-delete a workspace: it leaves every list and join at once; its rows and logs stay."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.delete_workspace(pool, tenant, workspace)

    deleted, deleted_at = run_admin(settings, action)
    if as_json:
        echo_json({**deleted.to_wire(), "deleted_at": rfc3339(deleted_at)})
    else:
        out(f"deleted workspace {deleted.workspace_id}")


# --- document --------------------------------------------------------------------------------


def document_list(
    tenant: Tenant, workspace: WorkspaceId, limit: Limit = DEFAULT_LIMIT, as_json: AsJson = False, data_dir: DataDir = None
) -> None:
    """List WORKSPACE's live documents, oldest first: id, content type, operations, title."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.list_documents(pool, tenant, workspace, limit)

    found, truncated = run_admin(settings, action)
    for d in found:
        if as_json:
            echo_json(ops.document_json(d))
        else:
            out(f"{d.doc_id}  {d.content_type:<8}  {d.head_seq:>8}  {d.title}")
    note_truncated(truncated, limit)


def document_show(tenant: Tenant, document: DocumentId, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Print one live document of the tenant, a field per line (head_seq: operations in its log)."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.show_document(pool, tenant, document)

    shown = ops.document_json(run_admin(settings, action))
    if as_json:
        echo_json(shown)
    else:
        print_fields(shown)


def document_delete(tenant: Tenant, document: DocumentId, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Soft-delete a document: it leaves lists and can no longer be opened; its log stays for replay."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.delete_document(pool, tenant, document)

    deleted, deleted_at = run_admin(settings, action)
    if as_json:
        echo_json({**ops.document_json(deleted), "deleted_at": rfc3339(deleted_at)})
    else:
        out(f"deleted document {deleted.doc_id}")


# --- member ----------------------------------------------------------------------------------


def member_list(
    tenant: Tenant, workspace: WorkspaceId, limit: Limit = DEFAULT_LIMIT, as_json: AsJson = False, data_dir: DataDir = None
) -> None:
    """List WORKSPACE's members in joining order: agent, role, permissions."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.list_members(pool, tenant, workspace, limit)

    found, truncated = run_admin(settings, action)
    for m in found:
        if as_json:
            echo_json({"workspace_id": str(workspace), **member_to_wire(m)})
        else:
            out(f"{m.agent_id}  {m.role}  {','.join(m.permissions)}")
    note_truncated(truncated, limit)


def agent_list(
    tenant: Tenant,
    capability: Annotated[
        str | None, typer.Option("--capability", metavar="C", help="Only agents with this capability.", show_default=False)
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List the tenant's registered agents by id: agent, status, load/limit, completed, failed, capabilities, name.

    The status is derived as a server lists it (docs/protocol.md section 12.7), against this
    command's TANDEM_PRESENCE_TTL_S: give it the servers' value when they do not use the default."""
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.list_agents(pool, tenant, settings.presence_ttl_s, capability, limit)

    found, truncated = run_admin(settings, action)
    for a in found:
        if as_json:
            echo_json(a.to_wire())
        else:
            load = f"{a.load}/{a.max_concurrent_tasks}"
            caps = ",".join(a.capabilities) or "-"
            out(f"{a.agent_id}  {a.status:<11}  {load:>7}  {a.tasks_completed:>5}  {a.tasks_failed:>5}  {caps}  {a.name}")
    note_truncated(truncated, limit)


def member_remove(
    tenant: Tenant,
    workspace: WorkspaceId,
    agent: Annotated[
        str, typer.Argument(parser=check_agent_id, metavar="AGENT", help="Agent id, 1 to 255 characters.", show_default=False)
    ],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Remove AGENT from WORKSPACE as its owner may: anyone but the owner.

    Audited as the operator; running servers tell the workspace's sessions, and the agent's own sessions leave it.
    """
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> Any:
        return await ops.remove_member(pool, tenant, workspace, agent)

    removed = run_admin(settings, action)
    if as_json:
        echo_json({"workspace_id": str(workspace), **member_to_wire(removed)})
    else:
        out(f"removed {removed.agent_id} {removed.role}")


# --- token ---------------------------------------------------------------------------------


def token_revoke(
    tenant: Tenant,
    jti: Annotated[
        uuid.UUID | None,
        typer.Option("--jti", metavar="ID", help="Revoke the token with this id (its jti claim, a UUID).", show_default=False),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent", parser=check_agent_id, metavar="AGENT", show_default=False,
            help="With --jti: whose token it is (recorded). Alone: revoke every token of AGENT issued up to now.",
        ),
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke one token (--jti) or every token of an agent issued up to now (--agent alone).

    Running servers close the sessions of the revoked tokens on both endpoints at once (token_revoked) and refuse them from then on, over HTTP too. A token issued in the same second as an agent's revocation is revoked with it. The server keeps no list of issued tokens, so any well-formed id is accepted.
    """
    if jti is None and agent is None:
        fail("give --jti ID or --agent AGENT")
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> dict[str, Any]:
        async with store.tenant_transaction(pool, tenant, ACTOR) as conn:
            if jti is not None:
                revocation, at = await revocations.revoke_token(conn, ACTOR, tenant, jti, agent)
                return {"tenant_id": str(tenant), "agent_id": revocation.agent_id, "jti": str(jti), "revoked_at": rfc3339(at)}
            assert agent is not None
            _revocation, before = await revocations.revoke_agent(conn, ACTOR, tenant, agent)
            return {"tenant_id": str(tenant), "agent_id": agent, "revoked_before": rfc3339(before)}

    revoked = run_admin(settings, action)
    if as_json:
        echo_json(revoked)
    elif jti is not None:
        out(f"revoked token {jti}")
    else:
        out(f"revoked every token of {agent} issued before {revoked['revoked_before']}")


# --- status ----------------------------------------------------------------------------------


def status_command(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Print the database's reachability and schema version, the nodes connected to it and Redis.

    Reads only; exits 1 when the database cannot be reached (after printing the status).
    """
    settings = settings_from(data_dir=data_dir)
    with expected_failures():
        status = asyncio.run(ops.status(settings))
    if as_json:
        echo_json(status.to_json())
    else:
        shown = status.to_json()
        version = shown["schema_version"] or "none"
        pending = len(shown["pending_migrations"])
        nodes = shown["nodes"]
        out(f"database: {shown['database']}")
        if status.ok:
            out(f"schema: {version}" + (f" ({pending} pending: tandem migrate up)" if pending else " (up to date)"))
            out(f"nodes: {len(nodes)} connected" + "".join(f"\n  {n['node_id']} since {n['connected_at']}" for n in nodes))
        out(f"rooms and sessions: {ops.NOT_TRACKED}")
        out(f"redis: {shown['redis']}")
    if not status.ok:
        raise typer.Exit(1)


def print_fields(obj: dict[str, Any]) -> None:
    width = max(len(k) for k in obj)
    for key, value in obj.items():
        out(f"{key + ':':<{width + 1}} {'' if value is None else value}")
