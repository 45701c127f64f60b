"""Workspace members (server/workspaces/directory.py) against real PostgreSQL: adding is a role
upsert, its refusals, and who may write by role and permissions (docs/protocol.md#54-workspaces).

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from server.core.errors import ErrorCode, TandemError
from server.workspaces import directory as ws
from tests.conftest import TENANT_B
from tests.workspace_helpers import (
    join,
    make_workspace,
    tx,
)

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
