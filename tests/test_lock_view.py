"""A room's view of its document's lock (server/documents/rooms.py): built from lock events that may arrive
out of order from several nodes, it refuses only what is certain; the write path decides the rest."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from crdt.document import Document
from server.core.errors import ErrorCode
from server.documents.room import LockView, Room


def room() -> Room:
    return Room(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Document(), 0)


def lock(holder: str, fence: int, seconds: float = 60) -> LockView:
    return LockView(holder, fence, datetime.now(UTC) + timedelta(seconds=seconds))


def test_another_agents_live_lock_refuses_writes_without_a_fence() -> None:
    r = room()
    r.on_lock(lock("a", 5), 5)
    assert r.write_refused("b", None) is ErrorCode.LOCKED
    assert r.write_refused("a", None) is None
    assert r.write_refused("a", 5) is None


def test_an_expired_lock_refuses_nobody() -> None:
    r = room()
    r.on_lock(lock("a", 5, seconds=-1), 5)
    assert r.write_refused("b", None) is None


def test_a_fence_older_than_one_seen_is_stale_and_an_unknown_newer_one_goes_to_the_write_path() -> None:
    r = room()
    r.on_lock(lock("a", 5), 5)
    assert r.write_refused("a", 4) is ErrorCode.STALE_FENCE
    assert r.write_refused("b", 9) is None  # its acquisition event is still on the way: the database decides
    r.on_lock(None, 5)
    assert r.write_refused("a", 4) is ErrorCode.STALE_FENCE


def test_a_release_overtaken_by_the_next_acquisition_does_not_clear_it() -> None:
    r = room()
    r.on_lock(lock("b", 6), 6)  # node-local acquisition, delivered first
    r.on_lock(None, 5)  # the previous holder's release from another node, late
    assert r.lock is not None and r.lock.holder == "b"
    assert r.write_refused("c", None) is ErrorCode.LOCKED


def test_an_acquisition_arriving_after_its_own_release_is_ignored() -> None:
    r = room()
    r.on_lock(None, 7)
    r.on_lock(lock("a", 7), 7)
    assert r.lock is None and r.write_refused("b", None) is None
    r.on_lock(lock("a", 6), 6)  # older still
    assert r.lock is None


# --- the node's known locks (server/workspaces/coordination.py): fast `locked` replies without a transaction ----


def test_known_locks_answer_only_for_another_agents_live_lock_and_follow_fences() -> None:
    from server.workspaces.coordination import KnownLocks

    known = KnownLocks(forget_after_s=0)
    key = (uuid.uuid4(), uuid.uuid4(), None, "deploy")
    assert known.held_by_other(key, "b") is None
    known.observe(key, lock("a", 5), 5)
    assert known.held_by_other(key, "b") is not None and known.held_by_other(key, "a") is None
    known.observe(key, lock("c", 6), 6)  # taken again, after an expiry, on another node
    known.observe(key, None, 5)  # the old release arrives late: the newer lock stays
    assert known.held_by_other(key, "b").holder == "c"  # type: ignore[union-attr]
    known.observe(key, None, 6)
    known.observe(key, lock("c", 6), 6)  # an acquisition already released changes nothing
    assert known.held_by_other(key, "b") is None
    known.observe(key, lock("d", 7, seconds=-1), 7)  # expired: free
    assert known.held_by_other(key, "b") is None
    known.prune()
    assert known.entries == {}
