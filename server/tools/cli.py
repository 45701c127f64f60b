"""The `tandem` command: one typer sub-app per command group.

`tandem serve` runs the server; `tandem migrate up | down [N] | down --all | status` manages the
schema and `tandem schema dump` writes it out (server/tools/schema_dump.py); `tandem token issue`,
`workspace create`, `member add` and `document create` are the operator commands (bodies in
server/tools/admin.py); `tandem replay`, `history` and `blame` read a document's log
(server/tools/cli_docs.py); `tandem quickstart` makes a demo to try both kinds of client
(server/tools/quickstart.py). Each command reads the settings once (environment plus its flags) and
passes them down. Bad arguments are usage errors (exit 2); expected failures print one line on
stderr and exit 1; a closed stdout stops a command quietly with 141; only bugs print a
traceback (server/tools/cli_shared.py). A new group is a `typer.Typer()` added with
`app.add_typer(...)` below; commands print through `cli_shared.out`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from pydantic import BaseModel, ValidationError

from server.db import migrate
from server.tools import (
    admin,
    backup,
    cli_docs,
    cli_ops,
    cli_workflows,
    quickstart,
    schema_dump,
)
from server.tools.cli_help import TandemRootGroup, use_real_metavars
from server.tools.cli_ops import AsJson, WorkspaceId
from server.tools.cli_shared import (
    DataDir,
    Tenant,
    expected_failures,
    fail,
    out,
    run_admin,
    settings_from,
    with_admin_connection,
)
from server.wire import protocol
from server.workspaces import directory as workspaces

app = typer.Typer(
    name="tandem",
    cls=TandemRootGroup,
    help="Tandem: a real-time collaborative workspace server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(
    help="Apply, roll back and list database migrations (DATABASE_URL, else the embedded PostgreSQL).",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

@app.callback()
def main() -> None:
    """Tandem: a real-time collaborative workspace server."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (env TANDEM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (env TANDEM_PORT).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the server until SIGTERM or Ctrl-C (without DATABASE_URL it embeds PostgreSQL)."""
    settings = settings_from(host=host, port=port, data_dir=data_dir)
    with expected_failures():
        from server import app as server_app  # the web stack, for this command only

        server_app.run(settings)


# --- migrate ---------------------------------------------------------------------------------


@migrate_app.command("up")
def migrate_up(data_dir: DataDir = None) -> None:
    """Create the roles and apply every pending migration."""
    settings = settings_from(data_dir=data_dir)

    async def action(conn: asyncpg.Connection) -> list[migrate.Migration]:
        await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
        return await migrate.up(conn, settings.migrations_dir, settings.owner_role)

    applied = with_admin_connection(settings, action)
    for m in applied:
        out(f"applied {m.version} {m.name}")
    if not applied:
        out("nothing to apply")


@migrate_app.command("down")
def migrate_down(
    steps: Annotated[int | None, typer.Argument(min=1, help="How many migrations to roll back (default 1).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Roll back every applied migration: drops all data.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --all.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Roll back the newest applied migrations (--all asks first unless --yes)."""
    if all_ and steps is not None:
        fail("give N or --all, not both")
    if all_ and not yes:
        confirm_drop_everything()
    settings = settings_from(data_dir=data_dir)
    count = None if all_ else (steps or 1)

    async def action(conn: asyncpg.Connection) -> list[migrate.Migration]:
        return await migrate.down(conn, settings.migrations_dir, settings.owner_role, count)

    rolled_back = with_admin_connection(settings, action)
    for m in rolled_back:
        out(f"rolled back {m.version} {m.name}")
    if not rolled_back:
        out("nothing to roll back")


def confirm_drop_everything() -> None:
    """Ask on a terminal; without one there is nobody to ask, so refuse."""
    if not sys.stdin.isatty():
        fail("migrate down --all drops every table and all data; add --yes to confirm (stdin is not a terminal)")
    if not typer.confirm("Roll back every migration, dropping every table and all data?", default=False):
        fail("not confirmed: nothing rolled back")


@migrate_app.command("status")
def migrate_status(data_dir: DataDir = None) -> None:
    """Print each migration's version, name and state (applied, pending, edited, missing)."""
    settings = settings_from(data_dir=data_dir)

    async def action(conn: asyncpg.Connection) -> list[migrate.Status]:
        return await migrate.status(conn, settings.migrations_dir)

    statuses = with_admin_connection(settings, action)
    width = max((len(s.name) for s in statuses), default=0)
    for s in statuses:
        out(f"{s.version}  {s.name:<{width}}  {s.state}")


schema_app = typer.Typer(help="The schema the migrations produce (migrations/schema.sql).", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("dump")
def schema_dump_command(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write, - for stdout (default: migrations/schema.sql).")
    ] = None,
) -> None:
    """Apply every migration on a scratch PostgreSQL (the wheel's), write its normalised schema."""
    settings = settings_from()
    with expected_failures():
        try:
            schema = asyncio.run(schema_dump.dump_schema(settings))
        except schema_dump.SchemaDumpError as exc:
            fail(str(exc))
    if output == Path("-"):
        out(schema, newline=False)
        return
    target = output or settings.migrations_dir / schema_dump.SCHEMA_FILE
    target.write_text(schema)
    out(f"wrote {target}")


# --- operator commands: token, workspace, member, document -----------------------------------

token_app = typer.Typer(
    help="Issue access tokens (no database needed) and revoke them (DATABASE_URL, else the embedded PostgreSQL).",
    no_args_is_help=True,
)
workspace_app = typer.Typer(
    help="Create, list, show and delete workspaces (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True
)
member_app = typer.Typer(
    help="Add, list and remove workspace members (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True
)
document_app = typer.Typer(
    help="Create, list, show and delete documents (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True
)
agent_app = typer.Typer(
    help="List the agent registry (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True
)
app.add_typer(token_app, name="token")
app.add_typer(workspace_app, name="workspace")
app.add_typer(member_app, name="member")
app.add_typer(document_app, name="document")
app.add_typer(agent_app, name="agent")
workflow_app = typer.Typer(
    help="List and show workflow definitions, start and cancel executions (DATABASE_URL, else the embedded PostgreSQL).",
    no_args_is_help=True,
)
app.add_typer(workflow_app, name="workflow")

def agent_option(name: str, help: str) -> Any:
    return typer.Option(name, parser=admin.check_agent_id, metavar="AGENT", help=f"{help}; 1 to 255 characters.")


def validated(model: type[BaseModel], hints: dict[str, str], **values: object) -> Any:
    """`values` checked by the wire model, so the CLI accepts exactly what the protocol does; a
    refused value is a usage error (exit 2) naming its option."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        raise typer.BadParameter(first["msg"], param_hint=hints.get(field, field)) from None


def echo_json(obj: dict[str, Any]) -> None:
    out(json.dumps(obj, ensure_ascii=False))


@token_app.command("issue")
def token_issue(
    tenant: Tenant,
    agent: Annotated[str, agent_option("--agent", help="Agent the token is for (its sub claim)")],
    ttl: Annotated[
        float | None,
        typer.Option(
            parser=admin.parse_ttl,
            metavar="TTL",
            help="Lifetime: 30s, 15m, 1h, 2d or seconds (default: TANDEM_TOKEN_TTL_S, 1h).",
        ),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", parser=admin.check_scope, metavar="SCOPE", help="A scope to grant; repeat for more."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a token that `tandem serve` accepts under the same settings, and nothing else.

    Signed with TANDEM_JWT_SECRET, else with the secret `tandem serve` keeps in the data dir; with neither it fails and says where it looked (it never makes a secret up). Carries TANDEM_JWT_ISSUER and TANDEM_JWT_AUDIENCE when set.

    Example: TOKEN=$(tandem token issue --tenant T --agent alice --ttl 1h)
    """
    settings = settings_from(data_dir=data_dir)
    with expected_failures():
        try:
            token = admin.issue_token(settings, tenant, agent, settings.token_ttl_s if ttl is None else ttl, scope or ())
        except admin.AdminError as exc:
            fail(str(exc))
    out(token)


@workspace_app.command("create")
def workspace_create(
    tenant: Tenant,
    owner: Annotated[str, agent_option("--owner", help="Agent that owns the workspace, its first member")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="1 to 255 characters.", show_default=False)],
    workspace_type: Annotated[str, typer.Option("--type", help="Free-form kind, 1 to 50 characters.")] = "general",
    visibility: Annotated[
        protocol.Visibility,
        typer.Option(help="private: members only; team and public: any agent of the tenant may join."),
    ] = "private",
    max_members: Annotated[int, typer.Option(help="Member limit, 1 to 1000.")] = 100,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Create a workspace owned by --owner; print its id (or the workspace as JSON)."""
    request = validated(
        protocol.WorkspaceCreate,
        {"name": "NAME", "workspace_type": "--type", "visibility": "--visibility", "max_members": "--max-members"},
        name=name,
        workspace_type=workspace_type,
        visibility=visibility,
        max_members=max_members,
    )
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> workspaces.Workspace:
        return await admin.create_workspace(pool, tenant, owner, request)

    workspace = run_admin(settings, action)
    if as_json:
        echo_json(workspace.to_wire())
    else:
        out(str(workspace.workspace_id))


@member_app.command("add")
def member_add(
    tenant: Tenant,
    workspace: WorkspaceId,
    agent: Annotated[
        str,
        typer.Argument(parser=admin.check_agent_id, metavar="AGENT", help="Agent id, 1 to 255 characters.", show_default=False),
    ],
    role: Annotated[
        protocol.Role,
        typer.Option(help="owner, admin and member write; viewer only reads. Does not transfer ownership."),
    ],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Make AGENT a member of WORKSPACE with --role (an existing member gets the new role).

    Prints the agent and its role (or the membership as JSON).
    """
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> workspaces.Member:
        return await admin.add_member(pool, tenant, workspace, agent, role)

    member = run_admin(settings, action)
    if as_json:
        echo_json({"workspace_id": str(workspace), **member.to_wire()})
    else:
        out(f"{member.agent_id} {member.role}")


@document_app.command("create")
def document_create(
    tenant: Tenant,
    workspace: WorkspaceId,
    title: Annotated[str, typer.Argument(metavar="TITLE", help="1 to 255 characters.", show_default=False)],
    content_type: Annotated[protocol.ContentType, typer.Option(help="What the text holds.")] = "text",
    language: Annotated[str | None, typer.Option(help="Language of a code document, e.g. python.")] = None,
    agent: Annotated[
        str | None, agent_option("--agent", help="Creator, a member who may write (default: the workspace's owner)")
    ] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Create an empty document in WORKSPACE; print its id (or the document as JSON).

    Its creator, --agent or else the workspace's owner, must be a member who may write (owner, admin or member), exactly as for doc.create over the wire.
    """
    request = validated(
        protocol.DocCreate,
        {"title": "TITLE", "content_type": "--content-type", "language": "--language"},
        workspace_id=workspace,
        title=title,
        content_type=content_type,
        language=language,
    )
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> workspaces.DocumentInfo:
        return await admin.create_document(pool, tenant, request, agent)

    document = run_admin(settings, action)
    if as_json:
        echo_json(document.to_wire())
    else:
        out(str(document.doc_id))


# --- replay tool: replay, history, blame (server/tools/cli_docs.py) --------------------------------

app.command("replay")(cli_docs.replay_command)
app.command("history")(cli_docs.history_command)
app.command("blame")(cli_docs.blame_command)


# --- the operator's everyday commands (server/tools/cli_ops.py) --------------------------------

workspace_app.command("list")(cli_ops.workspace_list)
workspace_app.command("show")(cli_ops.workspace_show)
workspace_app.command("delete")(cli_ops.workspace_delete)
document_app.command("list")(cli_ops.document_list)
document_app.command("show")(cli_ops.document_show)
document_app.command("delete")(cli_ops.document_delete)
member_app.command("list")(cli_ops.member_list)
member_app.command("remove")(cli_ops.member_remove)
agent_app.command("list")(cli_ops.agent_list)
token_app.command("revoke")(cli_ops.token_revoke)
workflow_app.command("list")(cli_workflows.workflow_list)
workflow_app.command("show")(cli_workflows.workflow_show)
workflow_app.command("start")(cli_workflows.workflow_start)
workflow_app.command("cancel")(cli_workflows.workflow_cancel)
workflow_app.command("runs")(cli_workflows.workflow_runs)
app.command("status")(cli_ops.status_command)
app.command("backup")(backup.backup_command)
app.command("restore")(backup.restore_command)

# --- a demo workspace and the snippets that join it (server/tools/quickstart.py) ----------------

app.command("quickstart")(quickstart.quickstart_command)

# Last: flags show no value in --help, for every command registered above.
use_real_metavars(app)
