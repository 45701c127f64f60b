"""What every `tandem` command shares: settings, failures, database access and stdout.

Expected failures print one line on stderr and exit 1. Output goes through `out`/`out_bytes`:
when the reader of stdout goes away (`tandem history ... | head -1`), the write raises
`StdoutClosed`, which unwinds the command (closing its connections, and the embedded
PostgreSQL if it started one, on the way) up to `TandemGroup.invoke`, which exits 141 as a Unix tool killed by
SIGPIPE would, without a traceback. Imports no command: server/tools/cli.py and server/tools/cli_docs.py
define them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import click
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from server.core import logs
from server.core.settings import Settings, load_settings
from server.db import dbserver
from server.tools import admin

T = TypeVar("T")

# The exit status a shell reports for a process killed by SIGPIPE (128 + 13).
STDOUT_CLOSED_EXIT = 141
# An admin connection that cannot be made in this long is an error, not a wait.
CONNECT_TIMEOUT_S = 10.0

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Folder of the embedded PostgreSQL when DATABASE_URL is unset (env TANDEM_DATA_DIR)."
    ),
]
# Help texts avoid square brackets: rich markup would eat them.
Tenant = Annotated[uuid.UUID, typer.Option("--tenant", help="Tenant id (a UUID); the command sees only its data.")]


class StdoutClosed(Exception):
    """The reader of stdout went away. Not an OSError, so no handler of expected failures
    mistakes it for a database or file error."""


class TandemGroup(TyperGroup):
    """The top-level group: a command whose stdout closed stops quietly with status 141."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StdoutClosed:
            # Output still buffered would fail again when Python flushes stdout at exit
            # ("Exception ignored ... BrokenPipeError"): send it to /dev/null instead.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise typer.Exit(STDOUT_CLOSED_EXIT) from None


def out(line: str, newline: bool = True) -> None:
    """Print `line` on stdout, flushed; `StdoutClosed` when nobody reads any more."""
    try:
        sys.stdout.write(line + "\n" if newline else line)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def out_bytes(data: bytes) -> None:
    """`data` on stdout as is (binary output); `StdoutClosed` when nobody reads any more."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def fail(message: str) -> NoReturn:
    typer.echo(f"tandem: error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def expected_failures() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit code 1."""
    try:
        yield
    except dbserver.StartupError as exc:
        fail(str(exc))
    except dbserver.EXPECTED_ERRORS as exc:
        fail(dbserver.explain(exc))


def settings_from(**overrides: object) -> Settings:
    """Read the settings once, with CLI flags (None: not given) over the environment."""
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}")
    logs.configure(settings.log_level, settings.log_json)
    return settings


def with_admin_connection(settings: Settings, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `action` on an admin connection: to DATABASE_URL, else to the embedded PostgreSQL of
    the server running on the data folder, else to one started for the meanwhile."""

    async def body() -> T:
        async with dbserver.database_server(settings, share=True) as (admin_url, _embedded):
            conn = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_S)
            try:
                return await action(conn)
            finally:
                await conn.close(timeout=CONNECT_TIMEOUT_S)

    with expected_failures():
        return asyncio.run(body())


def run_admin(settings: Settings, action: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `action` on the application role's pool (database reached as `with_admin_connection`)."""

    async def body() -> T:
        async with admin.app_pool(settings) as pool:
            return await action(pool)

    with expected_failures():
        try:
            return asyncio.run(body())
        except admin.AdminError as exc:
            fail(str(exc))
