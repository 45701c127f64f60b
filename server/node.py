"""What a running node shares between its connections: settings, pool, rooms and committer.

Built by the app's lifespan once the database is up (server/app.py) and handed to every
connection; it holds no logic of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from server.committer import Committer
from server.fanout import Fanout
from server.metrics import Metrics
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
