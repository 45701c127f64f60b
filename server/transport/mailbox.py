"""A first-in first-out queue with one consumer: what a connection queues for its sender task
and for its update pipeline.

Every connection has two of them, and idle connections have a memory target of their own
(under 50 KiB each). An empty `asyncio.Queue` takes about 3 KiB (four deques of 64
slots: its items, getters, putters and its `join()` event); a mailbox holds a list and, while
its consumer waits, one future. Its consumer also sees everything queued at once, which is what
both consumers want: the sender joins queued frames into one batched frame, the pipeline sends
queued updates to the update checker in one round trip.

A mailbox may be bounded in items (`maxsize`) and in bytes (`maxbytes`, with the `size` of an
item: a frame's length). The byte bound never refuses an item into an empty mailbox, so one
frame larger than the bound (a whole document's sync reply) still goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("_size", "_waiter", "items", "maxbytes", "maxsize", "nbytes")

    def __init__(self, maxsize: int = 0, maxbytes: int = 0, size: Callable[[T], int] | None = None) -> None:
        if maxbytes and size is None:
            raise ValueError("a byte bound needs the size of an item")
        self.items: list[T] = []  # oldest first; read it, but remove with `take`
        self.maxsize = maxsize  # 0: unbounded
        self.maxbytes = maxbytes  # 0: unbounded
        self.nbytes = 0  # the size of what is queued (0 without `size`)
        self._size = size
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: T) -> None:
        """Append without waiting; raises asyncio.QueueFull when `maxsize` items are queued, or
        when the item would take a non-empty mailbox over `maxbytes`."""
        if self.maxsize and len(self.items) >= self.maxsize:
            raise asyncio.QueueFull
        if self._size is not None:
            size = self._size(item)
            if self.maxbytes and self.items and self.nbytes + size > self.maxbytes:
                raise asyncio.QueueFull
            self.nbytes += size
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> list[T]:
        """The queued items, once there is at least one. They stay queued (and count against
        `maxsize` and `maxbytes`) until the consumer takes them. One consumer at a time."""
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
            taken, self.items, self.nbytes = self.items, [], 0
            return taken
        taken = self.items[:count]
        del self.items[:count]
        if self._size is not None:
            self.nbytes -= sum(map(self._size, taken))
        return taken
