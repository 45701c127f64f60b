"""The `tandem` command: one typer sub-app per command group.

`tandem serve` runs the server; `tandem migrate up | down [N] | down --all | status` manages the
schema. Each command reads the settings once (environment plus its flags) and passes them down.
Expected failures print one line on stderr and exit 1; only bugs print a traceback.
A new group (e.g. `token`) is a `typer.Typer()` added with `app.add_typer(...)` below.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import asyncpg
import typer
from pydantic import ValidationError

from server import app as server_app
from server import logs, migrate
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
