"""What a running node shares between its connections: settings, pool, rooms, committer, presence.

Built by the app's lifespan once the database is up (server/app.py) and handed to every
connection; it holds no logic of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from server.cluster.fanout import Fanout
from server.cluster.presence import Presence
from server.core.auth import Principal, Refusal, check_token, token_from_request
from server.core.metrics import Metrics
from server.core.settings import Settings
from server.core.supervisor import Supervisor
from server.documents.checker import UpdateChecker
from server.documents.committer import Committer
from server.documents.rooms import RoomRegistry
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

    def authenticate(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Principal | Refusal:
        """The connecting client's principal, or why not (one rule for /ws and /yjs)."""
        s = self.settings
        verdict = check_token(
            self.jwt_secret, token_from_request(query, headers), leeway_s=s.jwt_leeway_s,
            issuer=s.jwt_issuer, audience=s.jwt_audience, max_token_bytes=s.max_token_bytes,
        )
        if isinstance(verdict, Refusal):
            self.metrics.auth_failures.labels(verdict.code.value).inc()
        return verdict
