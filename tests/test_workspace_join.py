"""Joining workspaces (server/workspaces/directory.py) against real PostgreSQL: visibility, not
found alike for every hidden id, the member limit under racing joiners, activity stamps, and what
a join lists (docs/protocol.md#54-workspaces).

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.workspaces import directory as ws
from tests.conftest import TENANT_B
from tests.workspace_helpers import (
    join,
    join_error,
    make_workspace,
    tx,
)

# --- join ------------------------------------------------------------------------------------


async def test_join_as_member_updates_last_seen_and_activity(pool, admin) -> None:
    w = await make_workspace(pool, "alice")
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    await admin.execute(
        "UPDATE workspace_members SET last_seen_at = $1 WHERE workspace_id = $2", long_ago, w.workspace_id
    )
    await admin.execute("UPDATE workspaces SET last_activity_at = $1 WHERE id = $2", long_ago, w.workspace_id)

    result = await join(pool, "alice", w.workspace_id)

    assert result.role == "owner" and result.state_version == 1 and result.workspace == w
    assert [m.agent_id for m in result.members] == ["alice"] and result.documents == () and not result.truncated
    seen = await admin.fetchval(
        "SELECT last_seen_at FROM workspace_members WHERE workspace_id = $1 AND agent_id = 'alice'", w.workspace_id
    )
    activity = await admin.fetchval("SELECT last_activity_at FROM workspaces WHERE id = $1", w.workspace_id)
    assert seen > long_ago and activity > long_ago


async def test_joining_twice_returns_the_same_reply(pool) -> None:
    w = await make_workspace(pool, "alice", visibility="team")
    first = await join(pool, "bob", w.workspace_id)
    again = await join(pool, "bob", w.workspace_id)
    assert first.to_wire() == again.to_wire()
    assert first.role == "member" and first.can_write


async def test_join_private_as_non_member_is_forbidden(pool) -> None:
    w = await make_workspace(pool, "alice")
    error = await join_error(pool, "mallory", w.workspace_id)
    assert error.code is ErrorCode.FORBIDDEN
    async with tx(pool, "alice") as conn:
        assert await ws.membership(conn, "mallory", w.workspace_id) is None


@pytest.mark.parametrize("visibility", ["team", "public"])
async def test_join_team_or_public_as_non_member_becomes_member(pool, visibility) -> None:
    w = await make_workspace(pool, "alice", visibility=visibility)
    result = await join(pool, "bob", w.workspace_id)
    assert result.role == "member"
    assert [(m.agent_id, m.role) for m in result.members] == [("alice", "owner"), ("bob", "member")]
    async with tx(pool, "bob") as conn:
        member = await ws.membership(conn, "bob", w.workspace_id)
    assert member is not None and member.role == "member" and ws.can_write(member)


async def test_other_tenants_deleted_and_unknown_ids_get_the_same_not_found(pool, admin) -> None:
    theirs = await make_workspace(pool, "carol", TENANT_B, visibility="public")
    deleted = await make_workspace(pool, "alice", visibility="team")
    await admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", deleted.workspace_id)

    errors = [
        await join_error(pool, "alice", theirs.workspace_id),
        await join_error(pool, "alice", deleted.workspace_id),
        await join_error(pool, "alice", uuid.uuid4()),
    ]
    frames = [e.frame(re=1) for e in errors]
    assert all(e.code is ErrorCode.NOT_FOUND for e in errors)
    expected = {"type": "error", "re": 1, "code": "not_found", "message": "Not found."}
    assert frames[0] == frames[1] == frames[2] == expected
    # Nothing was written to the other tenant's workspace.
    count = "SELECT count(*) FROM workspace_members WHERE workspace_id = $1"
    assert await admin.fetchval(count, theirs.workspace_id) == 1


async def test_full_workspace_refuses_new_members_but_admits_existing_ones(pool) -> None:
    w = await make_workspace(pool, "alice", visibility="team", max_members=2)
    await join(pool, "bob", w.workspace_id)
    error = await join_error(pool, "carol", w.workspace_id)
    assert error.code is ErrorCode.WORKSPACE_FULL
    assert (await join(pool, "bob", w.workspace_id)).role == "member"


async def test_five_joiners_racing_for_the_last_slot_exactly_one_gets_in(pool, admin) -> None:
    w = await make_workspace(pool, "alice", visibility="team", max_members=2)

    async def attempt(agent_id: str) -> str:
        try:
            return (await join(pool, agent_id, w.workspace_id)).role
        except TandemError as exc:
            return exc.code.value

    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*(attempt(f"joiner-{i}") for i in range(5)))
    assert sorted(outcomes) == ["member"] + ["workspace_full"] * 4
    assert await admin.fetchval("SELECT count(*) FROM workspace_members WHERE workspace_id = $1", w.workspace_id) == 2


async def test_joiners_queued_behind_a_row_lock_still_admit_only_one(pool, db, admin) -> None:
    """Deterministic version of the race: all five are waiting at once before any proceeds."""
    w = await make_workspace(pool, "alice", visibility="team", max_members=2)
    blocker = await asyncpg.connect(db.admin_url)
    try:
        tr = blocker.transaction()
        await tr.start()
        await blocker.execute("SELECT 1 FROM workspaces WHERE id = $1 FOR SHARE", w.workspace_id)

        async def attempt(agent_id: str) -> str:
            try:
                return (await join(pool, agent_id, w.workspace_id)).role
            except TandemError as exc:
                return exc.code.value

        tasks = [asyncio.create_task(attempt(f"joiner-{i}")) for i in range(5)]
        async with asyncio.timeout(30):
            while True:  # bounded by the timeout: wait until all five block on the row lock
                # From another connection: pg_stat_activity is frozen for a transaction's duration.
                waiting = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> $1",
                    blocker.get_server_pid(),
                )
                if waiting == 5:
                    break
                await asyncio.sleep(0.01)
        await tr.commit()
        async with asyncio.timeout(30):
            outcomes = await asyncio.gather(*tasks)
    finally:
        await blocker.close()
    assert sorted(outcomes) == ["member"] + ["workspace_full"] * 4


async def test_members_rejoin_while_the_workspace_row_is_locked_and_newcomers_wait(pool, db, admin) -> None:
    """A crowd of returning members (a node restarted) is not served one at a time: their
    rejoins take no lock on the workspace row. A newcomer's join still queues behind it."""
    w = await make_workspace(pool, "alice", visibility="team")
    await join(pool, "bob", w.workspace_id)
    blocker = await asyncpg.connect(db.admin_url)
    try:
        tr = blocker.transaction()
        await tr.start()
        await blocker.execute("SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", w.workspace_id)

        async with asyncio.timeout(30):  # a rejoin that waited for the lock would never finish
            rejoined = await asyncio.gather(join(pool, "alice", w.workspace_id), join(pool, "bob", w.workspace_id))
        assert [r.role for r in rejoined] == ["owner", "member"]

        newcomer = asyncio.create_task(join(pool, "carol", w.workspace_id))
        async with asyncio.timeout(30):
            while True:  # bounded by the timeout: until carol's join waits on the row lock
                waiting = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> $1",
                    blocker.get_server_pid(),
                )
                if waiting == 1:
                    break
                await asyncio.sleep(0.01)
        assert not newcomer.done()
        await tr.commit()
        async with asyncio.timeout(30):
            assert (await newcomer).role == "member"
    finally:
        await blocker.close()


async def test_rejoins_move_the_workspace_activity_at_most_once_a_second(pool, admin) -> None:
    w = await make_workspace(pool, "alice", visibility="team")
    await join(pool, "bob", w.workspace_id)
    recent = datetime.now(UTC) - timedelta(milliseconds=100)
    await admin.execute("UPDATE workspaces SET last_activity_at = $1 WHERE id = $2", recent, w.workspace_id)
    await join(pool, "bob", w.workspace_id)
    assert await admin.fetchval("SELECT last_activity_at FROM workspaces WHERE id = $1", w.workspace_id) == recent
    stale = recent - timedelta(seconds=2)
    await admin.execute("UPDATE workspaces SET last_activity_at = $1 WHERE id = $2", stale, w.workspace_id)
    await join(pool, "bob", w.workspace_id)
    assert await admin.fetchval("SELECT last_activity_at FROM workspaces WHERE id = $1", w.workspace_id) > recent


async def test_join_lists_documents_and_members_cut_at_the_limit(pool) -> None:
    w = await make_workspace(pool, "alice", visibility="team")
    await join(pool, "bob", w.workspace_id)
    for i in range(3):  # one transaction each: created_at (transaction time) orders them
        async with tx(pool, "alice") as conn:
            await ws.create_document(conn, "alice", w.workspace_id, f"doc {i}")
    cut = await join(pool, "alice", w.workspace_id, limit=2)
    assert [d.title for d in cut.documents] == ["doc 0", "doc 1"] and cut.truncated
    assert len(cut.members) == 2
    whole = await join(pool, "alice", w.workspace_id, limit=3)
    assert len(whole.documents) == 3 and not whole.truncated
