"""The operator commands' bodies: `tandem token issue`, `workspace create`, `member add`, `document create`.

Tokens are signed with the secret `tandem serve` uses under the same settings. Database commands
reach the database the way the server does (DATABASE_URL or the embedded PostgreSQL, schema
brought up to date first), then act as the application role inside `store.tenant_transaction`,
so RLS confines each one to its tenant. Client-visible `TandemError`s become an `AdminError` with
one line for the operator. Imports no typer: server/tools/cli.py owns the command line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime

import asyncpg

from server.core import auth
from server.core.errors import ErrorCode, TandemError
from server.core.settings import Settings
from server.db import database, store
from server.db.dbserver import database_server
from server.wire import protocol
from server.workspaces import directory as workspaces

# What the audit trail records as the actor of every change these commands make
# (`app.user_id`): the operator acted, not the agent a document or workspace is made for.
ACTOR = "tandem-cli"
MAX_AGENT_ID_CHARS = 255  # workspace_members.agent_id and the token's `sub` (server/core/auth.py)
TTL_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The commands' pool: a connection is made within CONNECT_TIMEOUT_S and a query without its own
# timeout answers within COMMAND_TIMEOUT_S, or the command fails instead of waiting; closing
# waits CLOSE_TIMEOUT_S for connections still in use, then terminates them.
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


class AdminError(Exception):
    """An operator command failed for a reason the operator can fix; the message is one line."""


# --- command-line values (pure) --------------------------------------------------------------


def parse_ttl(text: str) -> float:
    """Seconds from `30s`, `15m`, `1h`, `2d` or a bare number of seconds; ValueError otherwise."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"expected seconds or a number with s, m, h or d (30s, 15m, 1h, 2d), not {text!r}")
    ttl_s = float(match.group(1)) * TTL_UNITS_S[match.group(2)]
    if ttl_s <= 0:
        raise ValueError("must be more than 0 seconds")
    return ttl_s


def check_agent_id(value: str) -> str:
    """An agent id as tokens and memberships store it: 1 to 255 characters, no NUL."""
    if not 1 <= len(value) <= MAX_AGENT_ID_CHARS or "\x00" in value:
        raise ValueError(f"must be 1 to {MAX_AGENT_ID_CHARS} characters, without NUL")
    return value


def check_scope(value: str) -> str:
    """A scope a token may carry: 1 to 255 characters (server/core/auth.py `_Claims.scopes`)."""
    if not 1 <= len(value) <= 255:
        raise ValueError("must be 1 to 255 characters")
    return value


# --- tokens ----------------------------------------------------------------------------------


def issue_token(
    settings: Settings,
    tenant_id: uuid.UUID,
    agent_id: str,
    ttl_s: float,
    scopes: Iterable[str] = (),
    *,
    now: datetime | None = None,
) -> str:
    """A token `tandem serve` with the same settings accepts: its secret (TANDEM_JWT_SECRET, else
    the one it keeps in the data dir; never a new one), issuer and audience.

    Raises `AdminError` for no secret (naming where it looked) or one that is too short, a TTL
    past the year 9999, or a token the server would refuse anyway (checked before it is printed).
    """
    try:
        secret = auth.find_secret(settings.jwt_secret, settings.data_dir)
        token = auth.issue_token(
            secret, tenant_id, agent_id, ttl_s, scopes, now=now,
            issuer=settings.jwt_issuer, audience=settings.jwt_audience,
        )
    except OverflowError as exc:
        raise AdminError("the ttl is too long: the token would expire after the year 9999") from exc
    except (auth.SecretNotFound, ValueError) as exc:
        raise AdminError(str(exc)) from exc
    verified = auth.check_token(
        secret, token, now, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
        max_token_bytes=settings.max_token_bytes,
    )
    if not isinstance(verified, auth.Principal):
        raise AdminError(
            f"the server would refuse this token ({verified.code.value}: {verified.reason.value}): check the ttl and the scopes"
        )
    return token


# --- database commands -----------------------------------------------------------------------


@asynccontextmanager
async def app_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A one-connection pool of the application role, on an up-to-date schema.

    Without DATABASE_URL: the embedded PostgreSQL of the server running on the data dir, else
    one that runs only while the block runs.
    """
    async with database_server(settings, share=True) as (admin_url, _embedded):
        await database.prepare(settings, admin_url)
        pool = await database.create_pool(
            database.app_url(settings, admin_url), min_size=1, max_size=1,
            connect_timeout_s=CONNECT_TIMEOUT_S, command_timeout_s=COMMAND_TIMEOUT_S,
        )
        try:
            yield pool
        finally:
            await database.close_pool(pool, CLOSE_TIMEOUT_S)


async def create_workspace(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, owner_id: str, request: protocol.WorkspaceCreate
) -> workspaces.Workspace:
    """A new workspace of the tenant with `owner_id` as its owner member."""
    with explained(tenant_id, None, owner_id):
        async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
            return await workspaces.create_workspace(
                conn, tenant_id, owner_id, request.name, request.workspace_type, request.visibility, request.max_members
            )


async def add_member(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workspace_id: uuid.UUID, agent_id: str, role: str
) -> workspaces.Member:
    """Make `agent_id` a member with `role` (an existing member gets the role); see
    `workspaces.add_member`. Another tenant's workspace is `not found`."""
    with explained(tenant_id, workspace_id, agent_id):
        async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
            return await workspaces.add_member(conn, workspace_id, agent_id, role)


async def create_document(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, request: protocol.DocCreate, agent_id: str | None
) -> workspaces.DocumentInfo:
    """An empty document created by `agent_id`, by default the workspace's owner.

    The agent must be a member who may write, as over the wire (`workspaces.create_document`);
    an unknown workspace, or another tenant's, is `not found` whatever the agent.
    """
    with explained(tenant_id, request.workspace_id, agent_id):
        async with store.tenant_transaction(pool, tenant_id, ACTOR) as conn:
            row = await conn.fetchrow(store.Q["ws_lock_workspace"], request.workspace_id)
            if row is None:
                raise TandemError(ErrorCode.NOT_FOUND)
            author = agent_id or row["owner_id"]
            try:
                return await workspaces.create_document(
                    conn, author, request.workspace_id, request.title, request.content_type, request.language
                )
            except TandemError as exc:
                if agent_id is None and exc.code in (ErrorCode.NOT_MEMBER, ErrorCode.FORBIDDEN):
                    raise AdminError(
                        f"the workspace's owner {author!r} may no longer write in it; name a writer with --agent"
                    ) from exc
                raise


@contextmanager
def explained(tenant_id: uuid.UUID, workspace_id: uuid.UUID | None, agent_id: str | None) -> Iterator[None]:
    """Turn a client-visible `TandemError` into an `AdminError` that names what it is about."""
    try:
        yield
    except TandemError as exc:
        raise AdminError(_explain(exc, tenant_id, workspace_id, agent_id)) from exc


def _explain(exc: TandemError, tenant_id: uuid.UUID, workspace_id: uuid.UUID | None, agent_id: str | None) -> str:
    workspace = f"workspace {workspace_id}"
    match exc.code:
        case ErrorCode.NOT_FOUND:
            return f"{workspace} not found in tenant {tenant_id}"
        case ErrorCode.NOT_MEMBER:
            return f"agent {agent_id!r} is not a member of {workspace} (tandem member add)"
        case ErrorCode.FORBIDDEN:
            return f"agent {agent_id!r} may not write in {workspace} (its role or permissions)"
        case ErrorCode.WORKSPACE_FULL:
            return f"{workspace} is full: it has max_members members"
        case ErrorCode.INVALID_MESSAGE:
            problems = (exc.details or {}).get("errors") or []
            if problems:
                return "; ".join(f"invalid {p['field']}: {p['message']}" for p in problems)
            cause = exc.__cause__
            return f"invalid value: {cause}" if cause is not None else "invalid value"
        case _:
            return f"{exc.code.value}: {exc.message}"
