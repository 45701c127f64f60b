"""The `tandem` command: one typer sub-app per command group.

`tandem serve` runs the server; `tandem migrate up | down [N] | down --all | status` manages the
schema and `tandem schema dump` writes it out (server/schema_dump.py); `tandem token issue`,
`workspace create`, `member add` and `document create` are the operator commands (bodies in
server/admin.py); `tandem replay`, `history` and `blame` read a document's log (bodies in
server/replay.py). Each command reads the settings once (environment
plus its flags) and passes them down. Bad arguments are usage errors (exit 2); expected failures
print one line on stderr and exit 1; only bugs print a traceback.
A new group is a `typer.Typer()` added with `app.add_typer(...)` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from pydantic import BaseModel, ValidationError

from crdt.clock import VectorClock
from server import admin, logs, migrate, protocol, schema_dump, workspaces
from server import app as server_app
from server import replay as replay_tool
from server.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="tandem",
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

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder of the embedded PostgreSQL when DATABASE_URL is unset (env TANDEM_DATA_DIR)."
    ),
]


def fail(message: str) -> NoReturn:
    typer.echo(f"tandem: error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def expected_failures() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit code 1."""
    try:
        yield
    except server_app.StartupError as exc:
        fail(str(exc))
    except server_app.EXPECTED_ERRORS as exc:
        fail(server_app.explain(exc))


def settings_from(**overrides: object) -> Settings:
    """Read the settings once, with CLI flags (None: not given) over the environment."""
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}")
    logs.configure(settings.log_level, settings.log_json)
    return settings


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
        server_app.run(settings)


# --- migrate ---------------------------------------------------------------------------------


def with_admin_connection(settings: Settings, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `action` on an admin connection; the embedded PostgreSQL runs only meanwhile."""

    async def body() -> T:
        async with server_app.database_server(settings) as (admin_url, _embedded):
            conn = await asyncpg.connect(admin_url)
            try:
                return await action(conn)
            finally:
                await conn.close()

    with expected_failures():
        return asyncio.run(body())


@migrate_app.command("up")
def migrate_up(data_dir: DataDir = None) -> None:
    """Create the roles and apply every pending migration."""
    settings = settings_from(data_dir=data_dir)

    async def action(conn: asyncpg.Connection) -> list[migrate.Migration]:
        await migrate.ensure_roles(conn, settings.owner_role, settings.app_role, settings.app_password)
        return await migrate.up(conn, settings.migrations_dir, settings.owner_role)

    applied = with_admin_connection(settings, action)
    for m in applied:
        typer.echo(f"applied {m.version} {m.name}")
    if not applied:
        typer.echo("nothing to apply")


@migrate_app.command("down")
def migrate_down(
    steps: Annotated[int | None, typer.Argument(min=1, help="How many migrations to roll back (default 1).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Roll back every applied migration.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Roll back the newest applied migrations."""
    if all_ and steps is not None:
        fail("give N or --all, not both")
    settings = settings_from(data_dir=data_dir)
    count = None if all_ else (steps or 1)

    async def action(conn: asyncpg.Connection) -> list[migrate.Migration]:
        return await migrate.down(conn, settings.migrations_dir, settings.owner_role, count)

    rolled_back = with_admin_connection(settings, action)
    for m in rolled_back:
        typer.echo(f"rolled back {m.version} {m.name}")
    if not rolled_back:
        typer.echo("nothing to roll back")


@migrate_app.command("status")
def migrate_status(data_dir: DataDir = None) -> None:
    """Print each migration's version, name and state (applied, pending, edited, missing)."""
    settings = settings_from(data_dir=data_dir)

    async def action(conn: asyncpg.Connection) -> list[migrate.Status]:
        return await migrate.status(conn, settings.migrations_dir)

    statuses = with_admin_connection(settings, action)
    width = max((len(s.name) for s in statuses), default=0)
    for s in statuses:
        typer.echo(f"{s.version}  {s.name:<{width}}  {s.state}")


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
        typer.echo(schema, nl=False)
        return
    target = output or settings.migrations_dir / schema_dump.SCHEMA_FILE
    target.write_text(schema)
    typer.echo(f"wrote {target}")


# --- operator commands: token, workspace, member, document -----------------------------------

token_app = typer.Typer(help="Issue access tokens (no database needed).", no_args_is_help=True)
workspace_app = typer.Typer(help="Create workspaces (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True)
member_app = typer.Typer(help="Manage workspace members (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True)
document_app = typer.Typer(help="Create documents (DATABASE_URL, else the embedded PostgreSQL).", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(workspace_app, name="workspace")
app.add_typer(member_app, name="member")
app.add_typer(document_app, name="document")

# Help texts avoid square brackets: rich markup would eat them.
Tenant = Annotated[uuid.UUID, typer.Option("--tenant", help="Tenant id (a UUID); the command sees only its data.")]
WorkspaceId = Annotated[uuid.UUID, typer.Argument(metavar="WORKSPACE", help="Workspace id (a UUID).", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print the whole object as JSON.")]


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


def run_admin(settings: Settings, action: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `action` on the application role's pool; the embedded PostgreSQL runs only meanwhile."""

    async def body() -> T:
        async with admin.app_pool(settings) as pool:
            return await action(pool)

    with expected_failures():
        try:
            return asyncio.run(body())
        except admin.AdminError as exc:
            fail(str(exc))


def echo_json(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


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

    Signed with TANDEM_JWT_SECRET, else with the secret kept in the data dir (created on first use, as `tandem serve` does); carries TANDEM_JWT_ISSUER and TANDEM_JWT_AUDIENCE when set.

    Example: TOKEN=$(tandem token issue --tenant T --agent alice --ttl 1h)
    """
    settings = settings_from(data_dir=data_dir)
    with expected_failures():
        try:
            token = admin.issue_token(settings, tenant, agent, settings.token_ttl_s if ttl is None else ttl, scope or ())
        except admin.AdminError as exc:
            fail(str(exc))
    typer.echo(token)


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
        typer.echo(workspace.workspace_id)


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
        typer.echo(f"{member.agent_id} {member.role}")


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
        typer.echo(document.doc_id)


# --- replay tool: replay, history, blame (bodies in server/replay.py) ------------------------

DocumentId = Annotated[uuid.UUID, typer.Argument(metavar="DOCUMENT", help="Document id (a UUID).", show_default=False)]
AtSeq = Annotated[int | None, typer.Option("--at-seq", min=0, metavar="N", help="After operation N (0: empty).")]
Progress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help=f"Progress bar on stderr (default: when stderr is a terminal and {replay_tool.PROGRESS_MIN_OPS:,} "
        "or more operations are read).",
    ),
]
JsonLines = Annotated[bool, typer.Option("--json", help="Print one JSON object per line.")]


def time_option(name: str, help: str) -> Any:
    help = f"{help}; ISO 8601, UTC without an offset."
    return typer.Option(name, parser=replay_tool.parse_time, metavar="TIMESTAMP", help=help)


class ReplayFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    UPDATE = "update"


@app.command("replay")
def replay_command(
    document: DocumentId,
    tenant: Tenant,
    at_seq: AtSeq = None,
    at_time: Annotated[datetime | None, time_option("--at-time", "As of this time: the log written until then")] = None,
    at_clock: Annotated[
        VectorClock | None,
        typer.Option(
            "--at-clock", parser=replay_tool.parse_clock, metavar="VECTOR",
            help='The operations this vector clock has seen, as JSON like {"3735928559": 42} (a state vector: the entrywise maximum of the log\'s vector_clock up to a seq).',
        ),
    ] = None,
    output_format: Annotated[
        ReplayFormat,
        typer.Option("--format", help="text; json (json and yaml documents, parsed); update (the state as one binary Yjs update)."),
    ] = ReplayFormat.TEXT,
    verify: Annotated[
        bool, typer.Option("--verify", help="Replay from the first operation; compare with the snapshots and the live content.")
    ] = False,
    progress: Progress = None,
    data_dir: DataDir = None,
) -> None:
    """Rebuild DOCUMENT from its nearest snapshot and the operations after it, and print it.

    Without a bound: the head. The text is printed exactly as it is (no newline added); --format update writes binary, so redirect stdout.

    --verify prints a report instead, and exits 1 if the replay differs from a stored snapshot or the live content, or if an operation cannot be applied.
    """
    given = (("--at-seq", at_seq), ("--at-time", at_time), ("--at-clock", at_clock))
    bounds = [name for name, value in given if value is not None]
    if len(bounds) > 1:
        raise typer.BadParameter("give at most one of them", param_hint=" / ".join(bounds))
    if verify and (bounds or output_format is not ReplayFormat.TEXT):
        raise typer.BadParameter("it replays the whole log and prints a report: no bound, no --format",
                                 param_hint="--verify")
    if output_format is ReplayFormat.UPDATE and sys.stdout.isatty():
        fail("refusing to write a binary update to a terminal: redirect stdout to a file")
    settings = settings_from(data_dir=data_dir)
    if verify:
        report = run_admin(settings, lambda pool: replay_tool.verify(pool, tenant, document, progress=progress))
        for line in report.lines():
            typer.echo(line)
        if not report.ok:
            fail(f"document {document} does not match its log: {report.problems} problem(s), see above")
        return
    result = run_admin(
        settings,
        lambda pool: replay_tool.replay(
            pool, tenant, document, at_seq=at_seq, at_time=at_time, at_clock=at_clock, progress=progress
        ),
    )
    if output_format is ReplayFormat.UPDATE:
        sys.stdout.buffer.write(result.document.encode_state())
        sys.stdout.buffer.flush()
    elif output_format is ReplayFormat.JSON:
        try:
            typer.echo(replay_tool.as_json(result.doc, result.document.text(), result.seq))
        except admin.AdminError as exc:
            fail(str(exc))
    else:
        sys.stdout.write(result.document.text())
        sys.stdout.flush()


@app.command("history")
def history_command(
    document: DocumentId,
    tenant: Tenant,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", metavar="AGENT", help="Only this agent's operations; repeat for more.")
    ] = None,
    from_seq: Annotated[int | None, typer.Option("--from-seq", min=1, metavar="N", help="From operation N on.")] = None,
    to_seq: Annotated[int | None, typer.Option("--to-seq", min=1, metavar="N", help="Up to operation N.")] = None,
    from_time: Annotated[datetime | None, time_option("--from-time", "Written at or after this time")] = None,
    to_time: Annotated[datetime | None, time_option("--to-time", "Written at or before this time")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="At most N operations.")] = None,
    as_json: JsonLines = False,
    data_dir: DataDir = None,
) -> None:
    """List DOCUMENT's operations in order: seq, time, type, size in bytes, agent.

    Filters combine, and ranges include their ends. With --json each line is {seq, agent_id, op_type, timestamp, size_bytes}.
    """
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> None:
        entries = replay_tool.history(
            pool, tenant, document, agents=agent or (), from_seq=from_seq or 1, to_seq=to_seq,
            from_time=from_time, to_time=to_time, limit=limit,
        )
        header = not as_json
        async for entry in entries:
            if header:
                typer.echo(replay_tool.HISTORY_HEADER)
                header = False
            typer.echo(json.dumps(entry.to_json(), ensure_ascii=False) if as_json else entry.line())
        if header:  # nothing matched: the header alone
            typer.echo(replay_tool.HISTORY_HEADER)

    run_admin(settings, action)


@app.command("blame")
def blame_command(
    document: DocumentId,
    tenant: Tenant,
    at_seq: AtSeq = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the spans, one JSON object per line: agent_id, start (a character offset), text.")
    ] = False,
    progress: Progress = None,
    data_dir: DataDir = None,
) -> None:
    """Print DOCUMENT's text with the agent that inserted each part (replays the whole log).

    One line per line of text: the agents that wrote it, its number, the text.
    """
    settings = settings_from(data_dir=data_dir)
    _doc, spans = run_admin(
        settings, lambda pool: replay_tool.blame(pool, tenant, document, at_seq=at_seq, progress=progress)
    )
    if as_json:
        for span in replay_tool.blame_json(spans):
            typer.echo(json.dumps(span, ensure_ascii=False))
    else:
        for line in replay_tool.blame_lines(spans):
            typer.echo(line)
