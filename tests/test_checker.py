"""Updates are decoded in a worker process first (server/documents/checker.py): a costly or corrupt
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

from crdt.document import CorruptUpdate, Document, OriginsMissing
from server.core.errors import ErrorCode
from server.core.settings import Settings
from server.documents.checker import TOO_COSTLY, UpdateChecker, check_updates
from server.documents.checker_wire import (
    Measured,
    Verdict,
    decode_reply,
    encode_reply,
    encode_request,
    read_request,
)
from server.documents.update_bounds import UpdateBounds, judge
from tests.costly_updates import (
    deletion_only_update,
    deletions_ahead,
    many_clients_update,
    one_item_state,
)

GARBAGE = b"\xff\xff\xff\xff"  # not an update (see the first test)


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[UpdateChecker]:
    """A started checker, stopped afterwards; the whole test is bounded in time."""
    checker = UpdateChecker(**kwargs)
    async with asyncio.timeout(60):
        await checker.start()
        try:
            yield checker
        finally:
            await checker.stop()


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


def ok(verdict: Verdict) -> bool:
    """The update passed: the worker measured it instead of naming what is wrong."""
    return isinstance(verdict, Measured)


def refused(verdict: Verdict) -> bool:
    return isinstance(verdict, str)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_check_updates_accepts_real_updates_and_names_what_is_wrong_with_garbage() -> None:
    verdicts = check_updates([(b"", u) for u in (_valid_update(), GARBAGE, _valid_update()[:-3])])
    assert ok(verdicts[0])
    assert refused(verdicts[1]) and refused(verdicts[2])


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
        except OriginsMissing:
            return True  # valid bytes naming items the room lacks: its state decides, not the worker
        except CorruptUpdate:
            return False
        return True

    verdicts = check_updates([(b"", u) for u in candidates])
    assert [ok(v) for v in verdicts] == [room_verdict(u) for u in candidates]
    assert all(ok(v) for v in verdicts[: len(history) + 1])
    assert all(v.startswith("ValueError: ") for v in verdicts if isinstance(v, str))


def test_requests_to_the_worker_round_trip_through_its_framing() -> None:
    for items in ([], [(b"", b"")], [(b"", _valid_update()), (_valid_update(), GARBAGE), (b"", b""), (b"", os.urandom(5000))]):
        stream = io.BytesIO(encode_request(items) + encode_request([(b"state", b"next")]))
        assert read_request(stream) == items
        assert read_request(stream) == [(b"state", b"next")]
        assert read_request(stream) is None  # end of input: the server closed the pipe


def test_replies_round_trip_through_their_framing() -> None:
    verdicts: list[Verdict] = [Measured(1), "ValueError: no", Measured(80_000, 0.0123), Measured(3, 0.0), ""]
    reply = encode_reply(verdicts)
    assert decode_reply(reply[4:], len(verdicts)) == verdicts


def test_the_worker_counts_the_clients_whose_structs_an_update_carries() -> None:
    one_editor = Doc(client_id=7)
    one_editor.get("content", type=Text).insert(0, "typed")
    typed = one_editor.get_update()
    del one_editor.get("content", type=Text)[0:2]
    assert check_updates([(b"", typed), (b"", many_clients_update(300))]) == [Measured(1), Measured(300)]
    # A delete set adds no client of its own (its structs are the document's already).
    assert check_updates([(b"", one_editor.get_update(one_editor.get_state()))]) == [Measured(0, None, ((7, 2),))]


def test_a_deletion_only_update_costs_the_real_document_far_more_than_an_empty_one() -> None:
    """The update the worker passes against an empty document is refused once it is timed
    against the document it is meant for, and an ordinary edit of that document is not."""
    state = one_item_state(300_000)
    hostile = deletion_only_update(state, 20_000)
    typing = Doc()
    typing.apply_update(state)
    before = typing.get_state()
    typing.get("content", type=Text).insert(150_000, "a few words")
    typed = typing.get_update(before)
    empty, against_state, ordinary = check_updates([(b"", hostile), (state, hostile), (state, typed)])
    assert isinstance(empty, Measured) and isinstance(against_state, Measured) and isinstance(ordinary, Measured)
    assert against_state.apply_cpu_s is not None and ordinary.apply_cpu_s is not None
    bounds = UpdateBounds.from_settings(Settings())
    assert judge(bounds, empty, Document.from_state(state)) is None  # what the worker alone concluded
    assert against_state.apply_cpu_s * 1000 > 2 * bounds.max_apply_ms  # wide margin: 0.2-0.4 s here
    assert judge(bounds, against_state, Document.from_state(state)) == (ErrorCode.UPDATE_TOO_COSTLY, bounds.refusal(against_state))
    assert ordinary.apply_cpu_s * 1000 < bounds.max_apply_ms / 4 and judge(bounds, ordinary, Document.from_state(state)) is None


def test_the_worker_measures_how_far_deletions_reach_beyond_the_update_s_own_structs() -> None:
    editor = Doc(client_id=7)
    text = editor.get("content", type=Text)
    text.insert(0, "hello world")
    room = Document.from_state(editor.get_update())
    before = editor.get_state()
    del text[0:3]  # a backspace over text the room holds
    backspace = editor.get_update(before)
    before = editor.get_state()
    text.insert(2, "abc")
    del text[2:4]  # its own new text, in the same update
    own = editor.get_update(before)
    ahead = deletions_ahead(7, 100, 50)  # clocks 100-199 of client 7: the room has 0-10
    verdicts = check_updates([(b"", backspace), (b"", own), (b"", editor.get_update()), (b"", ahead)])
    assert verdicts == [Measured(0, None, ((7, 3),)), Measured(1), Measured(1), Measured(0, None, ((7, 199),))]
    bounds = UpdateBounds.from_settings(Settings())
    assert [judge(bounds, v, room) for v in verdicts[:3]] == [None, None, None]
    assert judge(bounds, verdicts[3], room) == (
        ErrorCode.UPDATE_TOO_COSTLY,
        "the update deletes items the document does not hold yet (client 7 up to clock 199; the document has 11)",
    )
    # A struct group starting past clock 0 whose deletions reach no further than its own
    # structs; the delete set also lists the editor's deletions (Yjs sends the whole set).
    other = Doc(client_id=9)
    other.apply_update(editor.get_update())
    other_text = other.get("content", type=Text)
    other_text.insert(0, "first ")
    before = other.get_state()
    other_text.insert(0, "second ")
    del other_text[0:9]  # "second " and "fi" of its earlier "first "
    assert check_updates([(b"", other.get_update(before))]) == [Measured(1, None, ((7, 13),))]


def test_the_bounds_refuse_many_clients_and_tell_costly_from_corrupt() -> None:
    bounds = UpdateBounds(max_clients=64, check_bytes=256, max_apply_ms=40.0)
    assert judge(bounds, Measured(64), Document()) is None
    assert judge(bounds, Measured(65), Document()) == (
        ErrorCode.UPDATE_TOO_COSTLY, "the update carries structs of 65 clients (max_update_clients 64)"
    )
    assert judge(bounds, TOO_COSTLY, Document()) == (ErrorCode.UPDATE_TOO_COSTLY, TOO_COSTLY)
    assert judge(bounds, "ValueError: x", Document()) == (ErrorCode.INVALID_UPDATE, "ValueError: x")
    assert not bounds.needs_room_check(256, Measured(1)) and bounds.needs_room_check(257, Measured(1))
    assert not bounds.needs_room_check(10_000, Measured(1, 0.001))  # timed already


async def test_check_against_times_the_update_against_the_given_state() -> None:
    state = one_item_state(100_000)
    async with running(workers=1, timeout_s=30) as checker:
        hostile = deletion_only_update(state, 10_000)
        first, timed = await asyncio.gather(checker.check(hostile), checker.check_against(state, hostile))
        assert isinstance(first, Measured) and (first.clients, first.apply_cpu_s) == (0, None)
        assert isinstance(timed, Measured) and timed.apply_cpu_s is not None and timed.apply_cpu_s > 0
        assert refused(await checker.check_against(state, GARBAGE))


async def test_checker_passes_valid_and_refuses_corrupt_updates_in_one_round_trip() -> None:
    async with running(workers=1, timeout_s=10) as checker:
        garbage = [os.urandom(40) for _ in range(20)]
        verdicts = await checker.check_many([_valid_update(), *garbage])
        assert ok(verdicts[0])
        assert sum(refused(v) for v in verdicts[1:]) >= 15  # random bytes are almost never an update
        assert refused(await checker.check(GARBAGE))


async def test_a_batch_over_the_time_budget_restarts_the_worker_and_refuses_each_costly_update() -> None:
    async with running(workers=1, timeout_s=0.000_001) as checker:
        verdicts = await checker.check_many([_valid_update() for _ in range(3)])
        assert verdicts == [TOO_COSTLY] * 3
        assert checker.restarts >= 1
        checker.timeout_s = 10  # the fresh worker serves again
        assert ok(await checker.check(_valid_update()))


@pytest.mark.parametrize("workers", [1, 2])
async def test_check_many_splits_large_calls_merges_concurrent_ones_and_keeps_order(workers: int) -> None:
    valid = [_valid_update(f"u{i}") for i in range(300)]
    mixed = [GARBAGE if i % 10 == 3 else valid[i] for i in range(300)]
    async with running(workers=workers, timeout_s=10, max_batch=64) as checker:
        big, small, single = await asyncio.gather(
            checker.check_many(mixed),  # 5 round trips of at most 64 updates
            checker.check_many([valid[0], GARBAGE, valid[1]]),
            checker.check(GARBAGE),
        )
        assert [ok(v) for v in big] == [i % 10 != 3 for i in range(300)]
        assert ok(small[0]) and refused(small[1]) and ok(small[2])
        assert refused(single)
        assert checker.restarts == 0


async def test_a_memory_bomb_is_refused_within_the_memory_cap_and_the_worker_serves_on() -> None:
    # 20 bytes declaring 2**28 struct groups: uncapped, yrs allocates about 512 MB and spends
    # about a second before failing (crdt/ids.py's check_header refuses it earlier).
    bomb = _varint(2**28) + bytes(15)
    async with running(workers=1, timeout_s=10, max_memory_bytes=300 << 20) as checker:
        verdicts = await checker.check_many([_valid_update(), bomb, _valid_update()])
        assert ok(verdicts[0]) and ok(verdicts[2])
        # yrs reserves its table fallibly: under the cap it fails at once (the worker lives
        # on); had an allocation aborted the worker, the bomb would be TOO_COSTLY instead.
        # Without the cap the message would be about the end of the buffer.
        bomb_verdict = verdicts[1]
        assert refused(bomb_verdict)
        assert bomb_verdict == TOO_COSTLY or "allocat" in bomb_verdict
        assert ok(await checker.check(_valid_update()))


async def test_an_update_that_crashes_the_worker_is_refused_and_the_others_get_their_verdicts() -> None:
    # Any values nested 2,000,000 deep (4 MB): yrs decodes them recursively and overflows the
    # worker's stack (SIGSEGV), a crash no exception handler can catch.
    crash = b"\x01\x01\x01\x00\x08\x01\x07content\x01" + b"\x75\x01" * 2_000_000 + b"\x7e"
    async with running(workers=1, timeout_s=10, max_memory_bytes=300 << 20) as checker:
        first_pid = checker.pids[0]
        verdicts = await checker.check_many([_valid_update(), crash, GARBAGE, _valid_update()])
        assert ok(verdicts[0]) and ok(verdicts[3])
        assert verdicts[1] == TOO_COSTLY
        assert refused(verdicts[2]) and verdicts[2] != TOO_COSTLY  # its real verdict
        assert checker.restarts >= 1
        assert _gone(first_pid)
        assert ok(await checker.check(_valid_update()))


async def test_a_worker_killed_from_outside_is_replaced() -> None:
    async with running(workers=1, timeout_s=10) as checker:
        first_pid = checker.pids[0]
        os.kill(first_pid, signal.SIGKILL)
        assert ok(await checker.check(_valid_update()))
        assert refused(await checker.check(GARBAGE))
        assert checker.restarts == 1
        assert checker.pids[0] != first_pid and _gone(first_pid)


async def test_stop_ends_every_worker() -> None:
    checker = UpdateChecker(workers=2, timeout_s=10)
    async with asyncio.timeout(60):
        await checker.start()
        pids = checker.pids
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
        assert ok(await checker.check(_valid_update()))
        await checker.stop()
        assert all(_gone(pid) for pid in pids)  # exited and reaped
        assert checker.pids == []
