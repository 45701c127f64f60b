"""What a running node shares between its connections: settings, pool, rooms, committer, presence.

Built by the app's lifespan once the database is up (server/app.py) and handed to every
connection; it holds no logic of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

from server.committer import Committer
from server.fanout import Fanout
from server.metrics import Metrics
from server.presence import Presence
from server.rooms import RoomRegistry
from server.settings import Settings
from server.validation import Validator


@dataclass
class Node:
    settings: Settings
    node_id: str
    pool: asyncpg.Pool
    rooms: RoomRegistry
    committer: Committer
    jwt_secret: str
    metrics: Metrics
    validator: Validator | None  # None: updates are decoded in process (trusted clients only)
    fanout: Fanout
    presence: Presence  # in Redis with REDIS_URL, else in process (server/presence.py)
    # Commits accepted from sessions that may end first: they must finish (held until done).
    background: set[asyncio.Task[None]] = field(default_factory=set)
