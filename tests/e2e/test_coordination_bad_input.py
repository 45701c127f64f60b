"""Coordination requests refused end to end on one node (docs/protocol.md section 12): unknown and
other tenants' task ids, bad state updates and lock requests get their documented codes, and a
viewer's writes are forbidden with nothing stored.

Each module has one server (every test makes its own workspaces and agents), started with a fast
task sweep and a short lock release grace period (tests/e2e/coordination_peers.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from tests import wsclient
from tests.conftest import TENANT_B
from tests.e2e.conftest import (
    Tandem,
    admin_fetch,
    operation_count,
    replayed_text,
    shared_doc,
)
from tests.e2e.coordination_peers import (  # noqa: F401  (the fixtures the tests take)
    Connect,
    Frame,
    connect,
    server,
    workspace,
)

# --- bad input ---------------------------------------------------------------------------------


def without_re(frame: Frame) -> Frame:
    return {k: v for k, v in frame.items() if k != "re"}


async def test_unknown_and_other_tenants_task_ids_get_not_found(connect: Connect) -> None:
    owner = await connect("owner")
    ws_id = await workspace(owner)
    theirs_owner = await connect("theirs", tenant=TENANT_B)
    theirs_ws = await workspace(theirs_owner)
    theirs = (await theirs_owner.request("task.create", workspace_id=theirs_ws, title="Tenant B's"))["task"]["task_id"]
    unknown = str(uuid.uuid4())
    for type_, fields in (
        ("task.get", {}),
        ("task.start", {}),
        ("task.cancel", {}),
        ("task.assign", {"agent_id": owner.id}),
        ("task.delegate", {"agent_id": owner.id}),
    ):
        replies = [await owner.error(type_, task_id=task_id, **fields) for task_id in (theirs, unknown)]
        assert replies[0]["code"] == "not_found", (type_, replies)
        assert without_re(replies[0]) == without_re(replies[1])  # "theirs" and "unknown" look alike
    # Tenant B's task is untouched.
    assert (await theirs_owner.request("task.get", task_id=theirs))["task"]["status"] == "pending"
    mine = (await owner.request("task.create", workspace_id=ws_id, title="Pending"))["task"]["task_id"]
    error = await owner.error("task.complete", task_id=mine, result={})
    assert (error["code"], error["details"]) == ("invalid_transition", {"status": "pending", "action": "complete"})


async def state_row(server: Tandem, ws_id: str) -> tuple[int, Any]:
    rows = await admin_fetch(server.db, "SELECT coalesce(state_version, 1), state::text FROM workspaces WHERE id = $1", uuid.UUID(ws_id))
    return rows[0][0], rows[0][1]


async def test_bad_state_updates_get_invalid_patch_and_invalid_state(server: Tandem, connect: Connect) -> None:
    owner = await connect("owner")
    ws_id = await workspace(owner)
    version = (await owner.request("state.get", workspace_id=ws_id))["version"]
    ok = await owner.request("state.update", workspace_id=ws_id, expected_version=version, mode="replace", value={"a": 2})
    version = ok["version"]
    before = await state_row(server, ws_id)
    assert before[0] == version

    failing_test = [{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 3}]
    error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="patch", patch=failing_test)
    assert error["code"] == "invalid_patch", error
    for value in (5, [1]):
        error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="replace", value=value)
        assert error["code"] == "invalid_state", (value, error)
    root_to_string = [{"op": "replace", "path": "", "value": "not an object"}]
    error = await owner.error("state.update", workspace_id=ws_id, expected_version=version, mode="patch", patch=root_to_string)
    assert error["code"] == "invalid_state", error

    assert await state_row(server, ws_id) == before
    got = await owner.request("state.get", workspace_id=ws_id)
    assert (got["version"], got["state"]) == (version, {"a": 2})


async def test_bad_lock_requests_get_invalid_message(connect: Connect) -> None:
    owner = await connect("owner")
    ws_id, doc_id = await shared_doc(owner.agent)
    for fields in ({"doc_id": doc_id, "name": "deploy"}, {}, {"name": "deploy", "ttl_ms": 5}, {"doc_id": doc_id, "ttl_ms": 5}):
        error = await owner.error("lock.acquire", workspace_id=ws_id, **fields)
        assert error["code"] == "invalid_message", (fields, error)
    assert (await owner.request("lock.list", workspace_id=ws_id))["locks"] == []


async def lock_columns(server: Tandem, doc_id: str) -> tuple[Any, ...]:
    rows = await admin_fetch(
        server.db,
        "SELECT is_locked, locked_by, locked_at, lock_expires_at, lock_fence FROM shared_documents WHERE id = $1",
        uuid.UUID(doc_id),
    )
    return tuple(rows[0])


async def test_viewer_writes_are_forbidden_and_nothing_is_stored(server: Tandem, connect: Connect) -> None:
    owner = await connect("owner")
    viewer = await connect("viewer")
    ws_id, doc_id = await shared_doc(owner.agent, visibility="private")
    added = await owner.request("member.add", workspace_id=ws_id, agent_id=viewer.id, role="viewer")
    assert added["member"]["role"] == "viewer"
    joined = await viewer.request("workspace.join", workspace_id=ws_id)
    assert joined["role"] == "viewer"
    writing = await owner.agent.open(doc_id)
    await writing.edit(lambda t: t.insert(0, "owner's text."))
    reading = await viewer.agent.open(doc_id)
    assert str(reading.text) == "owner's text."

    rows, state, locks = await operation_count(server.db, doc_id), await state_row(server, ws_id), await lock_columns(server, doc_id)
    tasks_before = await admin_fetch(server.db, "SELECT count(*) FROM tasks WHERE workspace_id = $1", uuid.UUID(ws_id))

    update = wsclient.b64(reading.local_update(lambda t: t.insert(0, "viewer was here. ")))
    attempts = [
        ("doc.update", {"doc_id": doc_id, "update": update}),
        ("state.update", {"workspace_id": ws_id, "expected_version": state[0], "mode": "replace", "value": {"v": 1}}),
        ("lock.acquire", {"workspace_id": ws_id, "doc_id": doc_id}),
        ("lock.acquire", {"workspace_id": ws_id, "name": "deploy"}),
        ("task.create", {"workspace_id": ws_id, "title": "Viewer's task"}),
    ]
    for type_, fields in attempts:
        error = await viewer.error(type_, **fields)
        assert error["code"] == "forbidden", (type_, error)

    assert await operation_count(server.db, doc_id) == rows
    assert await state_row(server, ws_id) == state
    assert await lock_columns(server, doc_id) == locks
    assert await admin_fetch(server.db, "SELECT count(*) FROM tasks WHERE workspace_id = $1", uuid.UUID(ws_id)) == tasks_before
    assert await admin_fetch(server.db, "SELECT count(*) FROM workspace_locks WHERE workspace_id = $1", uuid.UUID(ws_id)) == [(0,)]
    assert (await owner.request("lock.list", workspace_id=ws_id))["locks"] == []
    assert "viewer was here" not in await replayed_text(server.db, doc_id)
