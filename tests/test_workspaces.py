"""Workspaces, memberships and documents (server/workspaces/directory.py) against real PostgreSQL.

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server. The rules checked are docs/protocol.md#54-workspaces and #55-documents.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from server.db import store

from server.wire import protocol
from server.workspaces import directory as ws
from server.db.database import create_pool
from server.core.errors import ErrorCode, TandemError
from tests.conftest import TENANT_A, TENANT_B

LIMIT = 1000


@pytest.fixture
async def pool(db) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db.app_url, min_size=1, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


def tx(pool: asyncpg.Pool, agent_id: str, tenant_id: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant_id, agent_id)


async def make_workspace(
    pool: asyncpg.Pool, owner: str = "owner", tenant_id: uuid.UUID = TENANT_A, **kwargs
) -> ws.Workspace:
    async with tx(pool, owner, tenant_id) as conn:
        return await ws.create_workspace(conn, tenant_id, owner, kwargs.pop("name", "Design"), **kwargs)


async def join(
    pool: asyncpg.Pool, agent_id: str, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A, limit: int = LIMIT
) -> ws.JoinResult:
    async with tx(pool, agent_id, tenant_id) as conn:
        return await ws.join_workspace(conn, agent_id, workspace_id, limit)


async def join_error(
    pool: asyncpg.Pool, agent_id: str, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A
) -> TandemError:
    with pytest.raises(TandemError) as info:
        await join(pool, agent_id, workspace_id, tenant_id)
    return info.value


# --- create and wire shapes ------------------------------------------------------------------


async def test_create_makes_the_creator_owner_member(pool) -> None:
    w = await make_workspace(
        pool, "writer-1", name="Design", visibility="team", max_members=7, workspace_type="review"
    )
    assert (w.name, w.visibility, w.max_members, w.workspace_type) == ("Design", "team", 7, "review")
    assert w.owner_id == "writer-1"
    assert w.state_version == 1
    async with tx(pool, "writer-1") as conn:
        member = await ws.membership(conn, "writer-1", w.workspace_id)
    assert member is not None and member.role == "owner" and ws.can_write(member)
    assert member.permissions == ("read", "write")


async def test_wire_objects_have_exactly_the_protocol_shape(pool) -> None:
    w = await make_workspace(pool, "writer-1", visibility="team")
    result = await join(pool, "writer-1", w.workspace_id)
    async with tx(pool, "writer-1") as conn:
        doc = await ws.create_document(conn, "writer-1", w.workspace_id, "Plan", "markdown")

    wire = w.to_wire()
    assert list(wire) == [
        "workspace_id", "name", "workspace_type", "visibility", "max_members", "owner_id", "created_at"
    ]
    assert wire["workspace_id"] == str(w.workspace_id).lower()
    assert wire["created_at"].endswith("Z") and "+" not in wire["created_at"]
    assert datetime.fromisoformat(wire["created_at"]) == w.created_at

    doc_wire = doc.to_wire()
    assert list(doc_wire) == [
        "doc_id", "workspace_id", "title", "content_type", "language", "created_by", "created_at"
    ]
    assert (doc_wire["language"], doc_wire["content_type"], doc_wire["created_by"]) == (None, "markdown", "writer-1")
    assert doc_wire["created_at"].endswith("Z")

    member_wire = result.members[0].to_wire()
    assert list(member_wire) == ["agent_id", "role", "joined_at"] and member_wire["role"] == "owner"

    # The protocol's own reply models accept them unchanged (docs/protocol.md#52).
    reply = protocol.WorkspaceJoinOk(re=1, **result.to_wire())
    assert reply.role == "owner" and reply.state_version == 1
    protocol.DocCreateOk(re=2, document=doc_wire)
    protocol.WorkspaceCreateOk(re=3, workspace=wire)


def test_rfc3339_is_utc_with_z() -> None:
    plus_two = datetime(2026, 1, 1, 14, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert ws.rfc3339(plus_two) == "2026-01-01T14:00:00Z"
    assert ws.rfc3339(datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)) == "2026-01-01T12:00:00.250000Z"


# --- list ------------------------------------------------------------------------------------


async def test_list_shows_own_and_the_tenants_team_and_public_never_another_tenants(pool) -> None:
    mine = await make_workspace(pool, "alice", name="mine")
    team = await make_workspace(pool, "bob", name="team", visibility="team")
    public = await make_workspace(pool, "bob", name="public", visibility="public")
    await make_workspace(pool, "bob", name="bob-private")
    await make_workspace(pool, "alice", TENANT_B, name="b-mine")
    await make_workspace(pool, "carol", TENANT_B, name="b-team", visibility="team")
    await make_workspace(pool, "carol", TENANT_B, name="b-public", visibility="public")

    async with tx(pool, "alice") as conn:
        listed, truncated = await ws.list_workspaces(conn, "alice", LIMIT)
    assert [w.workspace_id for w in listed] == [mine.workspace_id, team.workspace_id, public.workspace_id]
    assert not truncated

    async with tx(pool, "alice", TENANT_B) as conn:
        listed_b, _ = await ws.list_workspaces(conn, "alice", LIMIT)
    assert sorted(w.name for w in listed_b) == ["b-mine", "b-public", "b-team"]


async def test_list_includes_private_workspaces_the_agent_was_added_to_and_skips_deleted(pool, admin) -> None:
    private = await make_workspace(pool, "bob", name="private")
    gone = await make_workspace(pool, "alice", name="gone")
    async with tx(pool, "bob") as conn:
        await ws.add_member(conn, private.workspace_id, "alice", "viewer")
    await admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", gone.workspace_id)
    async with tx(pool, "alice") as conn:
        listed, _ = await ws.list_workspaces(conn, "alice", LIMIT)
    assert [w.name for w in listed] == ["private"]


async def test_list_is_cut_at_the_limit_with_truncated(pool) -> None:
    for i in range(3):
        await make_workspace(pool, "alice", name=f"w{i}")
    async with tx(pool, "alice") as conn:
        two, cut = await ws.list_workspaces(conn, "alice", 2)
        three, not_cut = await ws.list_workspaces(conn, "alice", 3)
    assert [w.name for w in two] == ["w0", "w1"] and cut
    assert len(three) == 3 and not not_cut


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


# --- members ---------------------------------------------------------------------------------


async def test_add_member_is_an_idempotent_role_upsert(pool) -> None:
    w = await make_workspace(pool, "alice")
    async with tx(pool, "alice") as conn:
        first = await ws.add_member(conn, w.workspace_id, "bob", "viewer")
        again = await ws.add_member(conn, w.workspace_id, "bob", "viewer")
        promoted = await ws.add_member(conn, w.workspace_id, "bob", "admin")
    assert first == again and first.role == "viewer" and not ws.can_write(first)
    assert promoted.role == "admin" and promoted.joined_at == first.joined_at and ws.can_write(promoted)
    # A private workspace admits members added to it.
    assert (await join(pool, "bob", w.workspace_id)).role == "admin"
    async with tx(pool, "alice") as conn:
        await ws.add_member(conn, w.workspace_id, "bob", "viewer")
    joined = await join(pool, "bob", w.workspace_id)
    assert joined.role == "viewer" and not joined.can_write


async def test_add_member_respects_not_found_workspace_full_and_roles(pool) -> None:
    w = await make_workspace(pool, "alice", max_members=2)
    theirs = await make_workspace(pool, "carol", TENANT_B)
    for workspace_id in (uuid.uuid4(), theirs.workspace_id):
        with pytest.raises(TandemError) as info:
            async with tx(pool, "alice") as conn:
                await ws.add_member(conn, workspace_id, "bob")
        assert info.value.code is ErrorCode.NOT_FOUND and info.value.details is None
    async with tx(pool, "alice") as conn:
        await ws.add_member(conn, w.workspace_id, "bob")
    with pytest.raises(TandemError) as info:
        async with tx(pool, "alice") as conn:
            await ws.add_member(conn, w.workspace_id, "carol")
    assert info.value.code is ErrorCode.WORKSPACE_FULL
    # Changing an existing member's role is not a new member.
    async with tx(pool, "alice") as conn:
        assert (await ws.add_member(conn, w.workspace_id, "bob", "viewer")).role == "viewer"
    with pytest.raises(TandemError) as info:
        async with tx(pool, "alice") as conn:
            await ws.add_member(conn, w.workspace_id, "bob", "superuser")
    assert info.value.code is ErrorCode.INVALID_MESSAGE


async def test_permissions_without_write_take_writing_away(pool, admin) -> None:
    w = await make_workspace(pool, "alice", visibility="team")
    await join(pool, "bob", w.workspace_id)
    await admin.execute(
        "UPDATE workspace_members SET permissions = '[\"read\"]' WHERE workspace_id = $1 AND agent_id = 'bob'",
        w.workspace_id,
    )
    async with tx(pool, "bob") as conn:
        member = await ws.membership(conn, "bob", w.workspace_id)
    assert member is not None and member.role == "member" and member.permissions == ("read",)
    assert not ws.can_write(member)
    assert not (await join(pool, "bob", w.workspace_id)).can_write
    with pytest.raises(TandemError) as info:
        async with tx(pool, "bob") as conn:
            await ws.create_document(conn, "bob", w.workspace_id, "nope")
    assert info.value.code is ErrorCode.FORBIDDEN


def test_can_write_by_role() -> None:
    now = datetime.now(UTC)
    for role, expected in [("owner", True), ("admin", True), ("member", True), ("viewer", False)]:
        assert ws.can_write(ws.Member("a", role, now, ("read", "write"))) is expected
        assert ws.role_can_write(role) is expected
    assert not ws.can_write(None) and not ws.role_can_write(None)


# --- documents -------------------------------------------------------------------------------


async def test_viewer_cannot_create_documents(pool) -> None:
    w = await make_workspace(pool, "alice")
    async with tx(pool, "alice") as conn:
        await ws.add_member(conn, w.workspace_id, "vera", "viewer")
    with pytest.raises(TandemError) as info:
        async with tx(pool, "vera") as conn:
            await ws.create_document(conn, "vera", w.workspace_id, "Plan")
    assert info.value.code is ErrorCode.FORBIDDEN
    async with tx(pool, "vera") as conn:
        assert await ws.list_documents(conn, w.workspace_id, LIMIT) == ([], False)


async def test_non_member_and_other_tenant_cannot_create_documents(pool) -> None:
    w = await make_workspace(pool, "alice", visibility="team")
    theirs = await make_workspace(pool, "carol", TENANT_B, visibility="team")
    for workspace_id in (w.workspace_id, theirs.workspace_id, uuid.uuid4()):
        with pytest.raises(TandemError) as info:
            async with tx(pool, "bob") as conn:
                await ws.create_document(conn, "bob", workspace_id, "Plan")
        assert info.value.code is ErrorCode.NOT_MEMBER and info.value.details is None


async def test_create_list_and_get_documents(pool) -> None:
    w = await make_workspace(pool, "alice")
    other = await make_workspace(pool, "alice", name="other")
    async with tx(pool, "alice") as conn:
        plan = await ws.create_document(conn, "alice", w.workspace_id, "Plan", "markdown")
    async with tx(pool, "alice") as conn:
        code = await ws.create_document(conn, "alice", w.workspace_id, "main.py", "code", "python")
        await ws.create_document(conn, "alice", other.workspace_id, "elsewhere")
    assert (plan.title, plan.content_type, plan.language) == ("Plan", "markdown", None)
    assert (plan.created_by, plan.head_seq) == ("alice", 0)
    assert (code.content_type, code.language) == ("code", "python")

    async with tx(pool, "alice") as conn:
        listed, truncated = await ws.list_documents(conn, w.workspace_id, LIMIT)
        one, cut = await ws.list_documents(conn, w.workspace_id, 1)
        fetched = await ws.get_document(conn, code.doc_id)
    assert listed == [plan, code] and not truncated
    assert one == [plan] and cut
    assert fetched == code and fetched.workspace_id == w.workspace_id


async def test_other_tenants_and_deleted_documents_are_none(pool, admin) -> None:
    w = await make_workspace(pool, "alice")
    async with tx(pool, "alice") as conn:
        doc = await ws.create_document(conn, "alice", w.workspace_id, "Plan")
        gone = await ws.create_document(conn, "alice", w.workspace_id, "Gone")
    await admin.execute("UPDATE shared_documents SET deleted_at = now() WHERE id = $1", gone.doc_id)
    async with tx(pool, "carol", TENANT_B) as conn:
        assert await ws.get_document(conn, doc.doc_id) is None
        assert await ws.list_documents(conn, w.workspace_id, LIMIT) == ([], False)
    async with tx(pool, "alice") as conn:
        assert await ws.get_document(conn, gone.doc_id) is None
        assert await ws.get_document(conn, uuid.uuid4()) is None
        assert [d.doc_id for d in (await ws.list_documents(conn, w.workspace_id, LIMIT))[0]] == [doc.doc_id]
    # A deleted workspace hides its documents.
    await admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", w.workspace_id)
    async with tx(pool, "alice") as conn:
        assert await ws.get_document(conn, doc.doc_id) is None
        assert await ws.membership(conn, "alice", w.workspace_id) is None


# --- schema refusals become typed errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": " \t "}, "name"),
        ({"name": "x" * 256}, None),
        ({"name": "nul\x00"}, None),
        ({"visibility": "secret"}, None),
        ({"max_members": 0}, "max_members"),
        ({"max_members": 1001}, "max_members"),
        ({"workspace_type": "t" * 51}, None),
    ],
)
async def test_refused_workspace_values_are_invalid_message_without_sql(pool, kwargs, field) -> None:
    with pytest.raises(TandemError) as info:
        await make_workspace(pool, "alice", **kwargs)
    _assert_clean_invalid_message(info.value, field)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("   ",), "title"),
        (("t" * 256,), None),
        (("Plan", "pdf"), "content_type"),
        (("Plan", "code", "l" * 51), None),
    ],
)
async def test_refused_document_values_are_invalid_message_without_sql(pool, args, field) -> None:
    w = await make_workspace(pool, "alice")
    with pytest.raises(TandemError) as info:
        async with tx(pool, "alice") as conn:
            await ws.create_document(conn, "alice", w.workspace_id, *args)
    _assert_clean_invalid_message(info.value, field)


def _assert_clean_invalid_message(error: TandemError, field: str | None) -> None:
    assert error.code is ErrorCode.INVALID_MESSAGE
    frame = protocol.encode(error.frame(re=None))
    for leak in ("violates", "constraint", "workspaces", "shared_documents", "character varying", "enum"):
        assert leak not in frame
    if field is None:
        assert error.details is None
    else:
        assert [e["field"] for e in error.details["errors"]] == [field]


async def test_limit_must_be_positive(pool) -> None:
    async with tx(pool, "alice") as conn:
        with pytest.raises(ValueError):
            await ws.list_workspaces(conn, "alice", 0)
