"""A first-in first-out queue with one consumer: what a connection queues for its sender task
and for its update pipeline.

Every connection has two of them, and idle connections have a memory target of their own
(issue 4: under 50 KiB each). An empty `asyncio.Queue` takes about 3 KiB (four deques of 64
slots: its items, getters, putters and its `join()` event); a mailbox holds a list and, while
its consumer waits, one future. Its consumer also sees everything queued at once, which is what
both consumers want: the sender joins queued frames into one batched frame, the pipeline sends
queued updates to the validation worker in one round trip.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("_waiter", "items", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self.items: list[T] = []  # oldest first; read it, but remove with `take`
        self.maxsize = maxsize  # 0: unbounded
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: T) -> None:
        """Append without waiting; raises asyncio.QueueFull when `maxsize` items are queued."""
        if self.maxsize and len(self.items) >= self.maxsize:
            raise asyncio.QueueFull
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> list[T]:
        """The queued items, once there is at least one. They stay queued (and count against
        `maxsize`) until the consumer takes them. One consumer at a time."""
        while not self.items:
            if self._waiter is not None:
                raise RuntimeError("a mailbox has one consumer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.items

    def take(self, count: int | None = None) -> list[T]:
        """Remove and return the oldest `count` items (all of them by default)."""
        if count is None or count >= len(self.items):
            taken, self.items = self.items, []
            return taken
        taken = self.items[:count]
        del self.items[:count]
        return taken
