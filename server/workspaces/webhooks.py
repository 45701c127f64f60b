"""A workspace's webhook endpoints and their delivery log (docs/http.md, "Webhooks").

Only the workspace's owners and admins manage them. The signing secret is made here, in the
form the Standard Webhooks libraries take (`whsec_` + base64 of 24 random bytes), returned once
by `create_endpoint` and never listed again. Events reach the outbox elsewhere: in the change's
own transaction (server/cluster/events.py, and migration 0030's trigger on the log).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from server.core.errors import ErrorCode, TandemError
from server.db.store import Q
from server.wire.webhook_types import WebhookEventType
from server.workspaces import directory
from server.workspaces.members import MANAGER_ROLES

SECRET_BYTES = 24


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    workspace_id: uuid.UUID
    url: str
    event_types: tuple[WebhookEventType, ...]
    enabled: bool
    failures: int
    disabled_reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    event_id: int
    type: str
    attempt: int
    status: str
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime  # when the event happened


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


async def require_admin(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID
) -> None:
    """The caller is an owner or admin of the live workspace: `forbidden` for another member or
    a non-member, `not_found` when the tenant has no such workspace."""
    member = await directory.membership(conn, agent_id, workspace_id)
    if member is not None and member.role in MANAGER_ROLES:
        return
    if member is None and not await conn.fetchval(
        Q["webhook_workspace_live"], workspace_id
    ):
        raise TandemError(ErrorCode.NOT_FOUND)
    raise TandemError(
        ErrorCode.FORBIDDEN,
        "only the workspace's owners and admins manage its webhooks",
    )


async def create_endpoint(
    conn: asyncpg.Connection, agent_id: str, workspace_id: uuid.UUID, url: str,
    event_types: Sequence[WebhookEventType],
) -> tuple[Endpoint, str]:  # fmt: skip
    """A new endpoint and its secret (shown to the caller this once)."""
    secret = new_secret()
    kinds = sorted({str(kind) for kind in event_types})
    row = await conn.fetchrow(
        Q["webhook_create"], workspace_id, url, secret, kinds, agent_id
    )
    return _endpoint(row), secret


async def list_endpoints(
    conn: asyncpg.Connection, workspace_id: uuid.UUID
) -> list[Endpoint]:
    return [_endpoint(row) for row in await conn.fetch(Q["webhook_list"], workspace_id)]


async def delete_endpoint(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, endpoint_id: uuid.UUID
) -> None:
    """Remove the endpoint and its deliveries; `not_found` when the workspace has no such one."""
    if await conn.fetchval(Q["webhook_delete"], endpoint_id, workspace_id) is None:
        raise TandemError(ErrorCode.NOT_FOUND)


async def deliveries(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    before: int | None,
    limit: int,
) -> list[Delivery]:
    """The endpoint's deliveries, newest event first, before event `before` when given."""
    if await conn.fetchrow(Q["webhook_get"], endpoint_id, workspace_id) is None:
        raise TandemError(ErrorCode.NOT_FOUND)
    rows = await conn.fetch(Q["webhook_deliveries"], endpoint_id, before, limit)
    return [Delivery(**dict(row)) for row in rows]


def _endpoint(row: Mapping[str, Any]) -> Endpoint:
    return Endpoint(
        row["id"], row["workspace_id"], row["url"], tuple(WebhookEventType(t) for t in row["event_types"]),
        row["enabled"], row["failures"], row["disabled_reason"], row["created_at"],
    )  # fmt: skip
