"""Updates are decoded in a worker process first (server/validation.py): a costly or corrupt
update is refused there, and the event loop never decodes client bytes it has not seen pass.

Real worker processes throughout; every wait is bounded (`asyncio.timeout`)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pycrdt import Doc, Text

from crdt.document import CorruptUpdate, Document
from server.validation import TOO_COSTLY, Validator, check_updates, encode_request, read_request

GARBAGE = b"\xff\xff\xff\xff"  # not an update (see the first test)


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[Validator]:
    """A started validator, stopped afterwards; the whole test is bounded in time."""
    validator = Validator(**kwargs)
    async with asyncio.timeout(60):
        await validator.start()
        try:
            yield validator
        finally:
            await validator.stop()


def _valid_update(text: str = "hello") -> bytes:
    doc = Doc()
    doc["content"] = content = Text()
    content.insert(0, text)
    return doc.get_update()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_check_updates_accepts_real_updates_and_names_what_is_wrong_with_garbage() -> None:
    verdicts = check_updates([_valid_update(), GARBAGE, _valid_update()[:-3]])
    assert verdicts[0] is None
    assert verdicts[1] is not None and verdicts[2] is not None


def test_check_updates_judges_as_a_room_document_does() -> None:
    """The worker's native-document check agrees with `Document.apply` on an empty document:
    an edit history whose updates depend on earlier ones (pending there, not corrupt), an
    update to another root, and every truncation of a real update."""
    doc = Doc()
    doc["content"] = content = Text()
    history: list[bytes] = []
    doc.observe(lambda event: history.append(event.update))
    for i in range(30):
        content.insert(len(content) // 2, f"{i:02d}")
        if i % 3 == 0:
            del content[0:1]
    other = Doc()
    other["notes"] = notes = Text()
    notes.insert(0, "elsewhere")
    candidates = [*history, other.get_update(), *(history[5][:n] for n in range(len(history[5])))]

    def room_verdict(update: bytes) -> bool:
        try:
            Document().apply(update)
        except CorruptUpdate:
            return False
        return True

    verdicts = check_updates(candidates)
    assert [v is None for v in verdicts] == [room_verdict(u) for u in candidates]
    assert all(v is None for v in verdicts[: len(history) + 1])
    assert all(v.startswith("ValueError: ") for v in verdicts if v is not None)


def test_requests_to_the_worker_round_trip_through_its_framing() -> None:
    for updates in ([], [b""], [_valid_update(), GARBAGE, b"", os.urandom(5000)]):
        stream = io.BytesIO(encode_request(updates) + encode_request([b"next"]))
        assert read_request(stream) == updates
        assert read_request(stream) == [b"next"]
        assert read_request(stream) is None  # end of input: the server closed the pipe


async def test_validator_passes_valid_and_refuses_corrupt_updates_in_one_round_trip() -> None:
    async with running(workers=1, timeout_s=10) as validator:
        garbage = [os.urandom(40) for _ in range(20)]
        verdicts = await validator.check_many([_valid_update(), *garbage])
        assert verdicts[0] is None
        assert sum(v is not None for v in verdicts[1:]) >= 15  # random bytes are almost never an update
        assert await validator.check(GARBAGE) is not None


async def test_a_batch_over_the_time_budget_restarts_the_worker_and_refuses_each_costly_update() -> None:
    async with running(workers=1, timeout_s=0.000_001) as validator:
        verdicts = await validator.check_many([_valid_update() for _ in range(3)])
        assert verdicts == [TOO_COSTLY] * 3
        assert validator.restarts >= 1
        validator.timeout_s = 10  # the fresh worker serves again
        assert await validator.check(_valid_update()) is None


@pytest.mark.parametrize("workers", [1, 2])
async def test_check_many_splits_large_calls_merges_concurrent_ones_and_keeps_order(workers: int) -> None:
    valid = [_valid_update(f"u{i}") for i in range(300)]
    mixed = [GARBAGE if i % 10 == 3 else valid[i] for i in range(300)]
    async with running(workers=workers, timeout_s=10, max_batch=64) as validator:
        big, small, single = await asyncio.gather(
            validator.check_many(mixed),  # 5 round trips of at most 64 updates
            validator.check_many([valid[0], GARBAGE, valid[1]]),
            validator.check(GARBAGE),
        )
        assert [v is None for v in big] == [i % 10 != 3 for i in range(300)]
        assert small[0] is None and small[1] is not None and small[2] is None
        assert single is not None
        assert validator.restarts == 0


async def test_a_memory_bomb_is_refused_within_the_memory_cap_and_the_worker_serves_on() -> None:
    # 20 bytes declaring 2**28 struct groups: uncapped, yrs allocates about 512 MB and spends
    # about a second before failing (crdt/ids.py's check_header refuses it earlier).
    bomb = _varint(2**28) + bytes(15)
    async with running(workers=1, timeout_s=10, max_memory_bytes=300 << 20) as validator:
        verdicts = await validator.check_many([_valid_update(), bomb, _valid_update()])
        assert verdicts[0] is None and verdicts[2] is None
        # yrs reserves its table fallibly: under the cap it fails at once (the worker lives
        # on); had an allocation aborted the worker, the bomb would be TOO_COSTLY instead.
        # Without the cap the message would be about the end of the buffer.
        bomb_verdict = verdicts[1]
        assert bomb_verdict is not None
        assert bomb_verdict == TOO_COSTLY or "allocat" in bomb_verdict
        assert await validator.check(_valid_update()) is None


async def test_an_update_that_crashes_the_worker_is_refused_and_the_others_get_their_verdicts() -> None:
    # Any values nested 2,000,000 deep (4 MB): yrs decodes them recursively and overflows the
    # worker's stack (SIGSEGV), a crash no exception handler can catch.
    crash = b"\x01\x01\x01\x00\x08\x01\x07content\x01" + b"\x75\x01" * 2_000_000 + b"\x7e"
    async with running(workers=1, timeout_s=10, max_memory_bytes=300 << 20) as validator:
        first_pid = validator.pids[0]
        verdicts = await validator.check_many([_valid_update(), crash, GARBAGE, _valid_update()])
        assert verdicts[0] is None and verdicts[3] is None
        assert verdicts[1] == TOO_COSTLY
        assert verdicts[2] is not None and verdicts[2] != TOO_COSTLY  # its real verdict
        assert validator.restarts >= 1
        assert _gone(first_pid)
        assert await validator.check(_valid_update()) is None


async def test_a_worker_killed_from_outside_is_replaced() -> None:
    async with running(workers=1, timeout_s=10) as validator:
        first_pid = validator.pids[0]
        os.kill(first_pid, signal.SIGKILL)
        assert await validator.check(_valid_update()) is None
        assert await validator.check(GARBAGE) is not None
        assert validator.restarts == 1
        assert validator.pids[0] != first_pid and _gone(first_pid)


async def test_stop_ends_every_worker() -> None:
    validator = Validator(workers=2, timeout_s=10)
    async with asyncio.timeout(60):
        await validator.start()
        pids = validator.pids
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
        assert await validator.check(_valid_update()) is None
        await validator.stop()
        assert all(_gone(pid) for pid in pids)  # exited and reaped
        assert validator.pids == []
