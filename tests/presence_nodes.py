"""Stand-ins for the presence tests (tests/test_presence.py, tests/test_presence_redis.py):
sessions as `Inbox`es, real subscribers that keep the frames sent to them; Redis nodes as
`RedisPresence` instances with their background tasks running, each test under its own key
prefix on the session's Redis; and the fixtures built on them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from server.cluster.presence import MemoryPresence, Presence
from server.cluster.presence_redis import RedisPresence
from server.core.metrics import Metrics

TENANT_A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
TENANT_B = uuid.UUID("00000000-0000-0000-0000-00000000000b")
WS = uuid.UUID("3d6f0a52-8a47-4d0e-9a43-2f1b7c6e5a10")
DOC = uuid.UUID("9a7e3c1d-2b4f-4e6a-8c0d-1f2e3a4b5c6d")


class Inbox:
    """A subscriber (a session's stand-in) that records what it is sent: single events, or
    `presence.batch` frames with `presence_batch=True`."""

    def __init__(self, presence_batch: bool = False) -> None:
        self.conn_id = str(uuid.uuid4())
        self.presence_batch = presence_batch
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def send_text(self, frame: str) -> None:
        self.frames.put_nowait(json.loads(frame))

    async def next(self, type_: str, timeout_s: float = 10, **match: Any) -> dict[str, Any]:
        """The next frame of `type_` whose fields equal `match`; frames before it are dropped."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.frames.get()
                if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                    return frame

    async def until(self, type_: str, timeout_s: float = 10, **match: Any) -> list[dict[str, Any]]:
        """Every frame up to and including the next one of `type_` whose fields equal `match`."""
        frames = []
        async with asyncio.timeout(timeout_s):
            while True:
                frames.append(await self.frames.get())
                if frames[-1]["type"] == type_ and all(frames[-1].get(k) == v for k, v in match.items()):
                    return frames

    def own(self) -> list[dict[str, Any]]:
        """The pending frames about this very session (it must never get any)."""
        return [f for f in self.pending() if f.get("conn_id") == self.conn_id]

    def pending(self) -> list[dict[str, Any]]:
        frames = []
        while not self.frames.empty():
            frames.append(self.frames.get_nowait())
        return frames


async def eventually(check: Callable[[], Awaitable[Any] | Any], timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)  # the pause between polls, under the deadline above


class RedisNodes:
    """`RedisPresence` nodes of one test with their background tasks; `crash` stops one dead."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"tandem-test:{uuid.uuid4().hex}"
        self.running: dict[RedisPresence, list[asyncio.Task[None]]] = {}

    async def start(self, name: str, *, wait: bool = True, **options: Any) -> RedisPresence:
        options = {"ttl_s": 3.0, "timeout_s": 1.0, **options}
        node = RedisPresence(self.url, name, Metrics(), prefix=self.prefix, **options)
        self.running[node] = [asyncio.create_task(run(), name=task) for task, run in node.background()]
        if wait:
            await eventually(lambda: node.connected)
        return node

    async def _stop_tasks(self, node: RedisPresence) -> None:
        tasks = self.running.pop(node, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def crash(self, node: RedisPresence) -> None:
        """Stop as a killed node does: no more heartbeats, nothing removed."""
        await self._stop_tasks(node)
        await node.redis.aclose()
        await node._relay_redis.aclose()

    async def close(self) -> None:
        for node in list(self.running):
            await self._stop_tasks(node)
            await node.close()
        client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:  # leave nothing under this test's prefix (the session's Redis may be REDIS_URL's)
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=500)]
            if keys:
                await client.delete(*keys)
        except (redis.RedisError, OSError):
            pass  # the test stopped its own Redis
        finally:
            await client.aclose()


@pytest.fixture
async def redis_nodes(redis_url: str) -> AsyncIterator[RedisNodes]:
    nodes = RedisNodes(redis_url)
    try:
        yield nodes
    finally:
        await nodes.close()


@pytest.fixture
async def memory() -> AsyncIterator[MemoryPresence]:
    """A one-node presence with its flush loop running."""
    presence = MemoryPresence("node-m", Metrics())
    tasks = [asyncio.create_task(run(), name=name) for name, run in presence.background()]
    try:
        yield presence
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest, redis_nodes: RedisNodes, memory: MemoryPresence) -> tuple[Presence, Presence]:
    """Two nodes' presence: the same MemoryPresence twice (one node), or two Redis nodes."""
    if request.param == "memory":
        return memory, memory
    return await redis_nodes.start("node-1"), await redis_nodes.start("node-2")

