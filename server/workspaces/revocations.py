"""Revoking tokens: the rows of migration 0028 and the NOTIFY that commits with them.

`revoke_token` and `revoke_agent` take a connection inside `store.tenant_transaction` (RLS
scopes them to one tenant), write the revocation and NOTIFY it in that transaction, so every
node hears of it only if it commits (server/cluster/hints.py `"rev"`); the writer then applies it
to its own node. `load_live` reads every tenant's revocations in force (a node's start and
reconnect). SQL lives in `server/db/sql/tokens.sql`. Imports no Starlette or WebSocket code.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from server.cluster import hints
from server.core.revocations import Revocation
from server.db.store import Q


def _seconds(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


async def revoke_token(
    conn: asyncpg.Connection, node_id: str, tenant_id: uuid.UUID, jti: uuid.UUID,
    agent_id: str | None = None, expires_at: datetime | None = None,
) -> tuple[Revocation, datetime]:  # fmt: skip
    """Revoke token `jti` of the current tenant; idempotent. Returns the revocation and when it
    was first made."""
    row = await conn.fetchrow(Q["revoke_token"], jti, agent_id, expires_at)
    revocation = Revocation(
        tenant_id, row["agent_id"], row["jti"], None, _seconds(row["expires_at"])
    )
    await conn.execute(Q["notify"], [hints.encode_revoked(node_id, revocation)])
    return revocation, row["revoked_at"]


async def revoke_agent(
    conn: asyncpg.Connection, node_id: str, tenant_id: uuid.UUID, agent_id: str
) -> tuple[Revocation, datetime]:
    """Revoke every token of `agent_id` of the current tenant issued up to now. Returns the
    revocation and its cut-off (`revoked_before`)."""
    row = await conn.fetchrow(Q["revoke_agent"], agent_id)
    revocation = Revocation(
        tenant_id, agent_id, None, row["revoked_before"].timestamp()
    )
    await conn.execute(Q["notify"], [hints.encode_revoked(node_id, revocation)])
    return revocation, row["revoked_before"]


async def load_live(pool: asyncpg.Pool) -> list[Revocation]:
    """Every tenant's revocations in force (token ids of expired tokens are deleted first)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(Q["revocations_live"])
    return [
        Revocation(
            r["tenant_id"],
            r["agent_id"],
            r["jti"],
            _seconds(r["revoked_before"]),
            _seconds(r["expires_at"]),
        )
        for r in rows
    ]
