"""server/transport/mailbox.py: the per-connection queue of the sender and of the update pipeline."""

from __future__ import annotations

import asyncio
import sys

import pytest

from server.transport.mailbox import Mailbox


async def test_the_consumer_sees_everything_queued_in_order_and_takes_what_it_wants() -> None:
    box: Mailbox[int] = Mailbox()
    for i in range(5):
        box.put(i)
    assert await box.wait() == [0, 1, 2, 3, 4]
    assert box.take(2) == [0, 1] and len(box) == 3
    assert box.take() == [2, 3, 4] and len(box) == 0


async def test_a_waiting_consumer_wakes_on_the_first_put() -> None:
    box: Mailbox[str] = Mailbox()
    waiting = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    box.put("a")
    box.put("b")  # before the consumer ran: it sees both
    async with asyncio.timeout(5):
        assert await waiting == ["a", "b"]


async def test_a_full_mailbox_refuses_and_counts_untaken_items() -> None:
    box: Mailbox[int] = Mailbox(maxsize=2)
    box.put(1)
    box.put(2)
    with pytest.raises(asyncio.QueueFull):
        box.put(3)
    await box.wait()  # seen, not taken: still queued
    with pytest.raises(asyncio.QueueFull):
        box.put(3)
    box.take(1)
    box.put(3)
    assert box.take() == [2, 3]


def test_a_byte_bounded_mailbox_refuses_what_would_take_it_over_the_bound() -> None:
    box: Mailbox[bytes] = Mailbox(maxsize=100, maxbytes=10, size=len)
    box.put(b"1234")
    box.put(b"567890")  # exactly at the bound
    assert box.nbytes == 10
    with pytest.raises(asyncio.QueueFull):
        box.put(b"x")
    assert box.take(1) == [b"1234"] and box.nbytes == 6
    box.put(b"abcd")
    with pytest.raises(asyncio.QueueFull):
        box.put(b"y")
    assert box.take() == [b"567890", b"abcd"] and box.nbytes == 0


def test_one_item_larger_than_the_byte_bound_goes_into_an_empty_mailbox_alone() -> None:
    box: Mailbox[str] = Mailbox(maxbytes=10, size=len)
    box.put("a whole document, larger than the bound")
    with pytest.raises(asyncio.QueueFull):
        box.put("a")
    box.take()
    box.put("a")
    assert box.nbytes == 1


def test_the_item_bound_still_holds_with_a_byte_bound() -> None:
    box: Mailbox[bytes] = Mailbox(maxsize=2, maxbytes=1000, size=len)
    box.put(b"a")
    box.put(b"b")
    with pytest.raises(asyncio.QueueFull):
        box.put(b"c")


def test_a_byte_bound_needs_a_size() -> None:
    with pytest.raises(ValueError):
        Mailbox(maxbytes=10)


async def test_a_cancelled_consumer_leaves_the_mailbox_usable() -> None:
    box: Mailbox[int] = Mailbox()
    waiting = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    box.put(7)
    async with asyncio.timeout(5):
        assert await box.wait() == [7]


async def test_a_second_consumer_is_an_error() -> None:
    box: Mailbox[int] = Mailbox()
    first = asyncio.create_task(box.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await box.wait()
    first.cancel()


def test_an_empty_mailbox_is_far_smaller_than_an_asyncio_queue() -> None:
    """Why it exists: two per connection, and idle connections have a memory target."""

    box: Mailbox[int] = Mailbox(10)
    mailbox = sys.getsizeof(box) + sys.getsizeof(box.items)
    queue = asyncio.Queue(10)
    queue_fields = sum(sys.getsizeof(v) for v in vars(queue).values())  # its deques, not counting the event's
    assert mailbox * 10 < queue_fields, (mailbox, queue_fields)
