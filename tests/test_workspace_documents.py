"""Documents of a workspace (server/workspaces/directory.py) against real PostgreSQL: who may
create them, listing and getting, and what other tenants and deletions hide
(docs/protocol.md#55-documents).

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server.
"""

from __future__ import annotations

import uuid

import pytest

from server.core.errors import ErrorCode, TandemError
from server.workspaces import directory as ws
from tests.conftest import TENANT_B
from tests.workspace_helpers import (
    LIMIT,
    make_workspace,
    tx,
)

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
