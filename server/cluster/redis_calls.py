"""Calls to Redis that are bounded and never leak a cancellation: what a failing Redis raises,
a guard for redis-py's timeouts on Python 3.11, and closing a subscription quietly.
Used by the presence backend (server/cluster/presence_redis.py, server/cluster/presence_sweep.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

# What a failing Redis raises: connection refused or reset, timeouts, protocol errors.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


@contextlib.contextmanager
def keep_cancellation() -> Iterator[None]:
    """Re-raise a cancellation requested during the block that did not end it.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses to send commands) can return its
    result and drop a cancellation that arrived as the call completed (CPython gh-86296, fixed in
    3.12). A periodic loop would then run forever and a shutdown would hang. Exceptions leaving
    the block pass unchanged; only a normal exit is checked.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


async def close_quietly(pubsub: PubSub, timeout_s: float) -> None:
    with contextlib.suppress(*REDIS_ERRORS):
        async with asyncio.timeout(timeout_s):  # not wait_for: see keep_cancellation
            await pubsub.aclose()
