"""What a running node shares between its connections: settings, pool, rooms, committer, presence.

Built by the app's lifespan once the database is up (server/app.py) and handed to every
connection. Its one rule of its own is the token check both endpoints and the HTTP API share,
revocations included: a revocation heard (`on_revoked`, or read back by `reload`) ends the open
connections of the tokens it revokes with `token_revoked` (docs/protocol.md#23).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from server.cluster.fanout import Fanout
from server.cluster.presence import Presence
from server.core.auth import (
    Principal,
    Refusal,
    RefusalReason,
    check_token,
    token_from_request,
)
from server.core.errors import ErrorCode
from server.core.metrics import Metrics
from server.core.revocations import Revocation, Revocations
from server.core.settings import Settings
from server.core.supervisor import Supervisor
from server.documents.checker import UpdateChecker
from server.documents.committer import Committer
from server.documents.rooms import RoomRegistry
from server.workspaces import revocations as revocations_db
from server.workspaces.coordination import Coordination


@dataclass
class Node:
    settings: Settings
    node_id: str
    pool: asyncpg.Pool
    rooms: RoomRegistry
    committer: Committer
    jwt_secret: str
    metrics: Metrics
    checker: UpdateChecker | None  # None: updates are decoded in process (trusted clients only)
    fanout: Fanout
    presence: Presence  # in Redis with REDIS_URL, else in process (server/cluster/presence.py)
    coordination: Coordination  # workspace events, lock views, the task sweep
    supervisor: Supervisor  # runs and restarts every long-running task (server/core/supervisor.py)
    connections: set[Any] = field(default_factory=set)  # open client connections (server/transport/connection.py)
    revocations: Revocations = field(default_factory=Revocations)  # revoked tokens (server/core/revocations.py)

    def authenticate(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Principal | Refusal:
        """The connecting client's principal, or why not (one rule for /ws and /yjs)."""
        s = self.settings
        verdict = check_token(
            self.jwt_secret, token_from_request(query, headers), leeway_s=s.jwt_leeway_s,
            issuer=s.jwt_issuer, audience=s.jwt_audience, max_token_bytes=s.max_token_bytes,
        )
        if not isinstance(verdict, Refusal) and self.revocations.revoked(verdict):
            verdict = Refusal(ErrorCode.TOKEN_REVOKED, RefusalReason.REVOKED)
        if isinstance(verdict, Refusal):
            self.metrics.auth_failures.labels(verdict.code.value).inc()
        return verdict

    def on_revoked(self, revocation: Revocation) -> None:
        """A committed revocation (this node's after its commit, others' through NOTIFY): from now
        on its tokens are refused, and this node's connections holding one end."""
        self.revocations.add(revocation)
        for conn in list(self.connections):
            if conn.principal is not None and revocation.matches(conn.principal):
                conn.end(ErrorCode.TOKEN_REVOKED)

    async def reload(self) -> None:
        """Read every revocation in force (at start and after the LISTEN connection was lost:
        hints sent meanwhile are gone) and end the connections they revoke."""
        self.revocations.add_all(await revocations_db.load_live(self.pool))
        self.revocations.forget_expired()
        for conn in list(self.connections):
            if conn.principal is not None and self.revocations.revoked(conn.principal):
                conn.end(ErrorCode.TOKEN_REVOKED)
