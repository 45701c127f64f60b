"""Creating and listing workspaces (server/workspaces/directory.py) against real PostgreSQL: the
creator's membership, the wire shapes, and what each agent's list shows
(docs/protocol.md#54-workspaces).

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from server.wire import protocol
from server.workspaces import directory as ws
from tests.conftest import TENANT_B
from tests.workspace_helpers import (
    LIMIT,
    join,
    make_workspace,
    tx,
)

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
