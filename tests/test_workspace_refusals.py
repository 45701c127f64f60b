"""Values the schema refuses become typed errors (server/workspaces/directory.py) against real
PostgreSQL: `invalid_message` naming the field, never SQL text; and list limits must be positive.

Every call runs as the application role inside `store.tenant_transaction`, so RLS applies as in
the server.
"""

from __future__ import annotations

import pytest

from server.core.errors import ErrorCode, TandemError
from server.wire import protocol
from server.workspaces import directory as ws
from tests.workspace_helpers import (
    make_workspace,
    tx,
)

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
