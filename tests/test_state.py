"""Workspace state with an optimistic state_version (server/workspaces/state.py) against real PostgreSQL.

Every call runs as the application role inside `store.tenant_transaction`, so RLS and the
audit trigger apply as in the server. The rules are docs/protocol.md section 12.3.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.workspaces import directory as ws
from server.workspaces import state
from tests.conftest import TENANT_A, TENANT_B

MAX_BYTES = 4096



def tx(pool: asyncpg.Pool, agent_id: str, tenant_id: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant_id, agent_id)


async def make_workspace(pool: asyncpg.Pool, owner: str = "owner", tenant_id: uuid.UUID = TENANT_A) -> uuid.UUID:
    """A workspace of `owner` with "writer" as a plain member."""
    async with tx(pool, owner, tenant_id) as conn:
        w = await ws.create_workspace(conn, tenant_id, owner, "Shared", visibility="team")
        await ws.add_member(conn, w.workspace_id, "writer", "member")
    return w.workspace_id


async def update(
    pool: asyncpg.Pool, agent: str, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A, **kwargs: Any
):
    kwargs.setdefault("max_state_bytes", MAX_BYTES)
    async with tx(pool, agent, tenant_id) as conn:
        return await state.update_state(conn, agent, workspace_id, **kwargs)


async def update_error(pool: asyncpg.Pool, agent: str, workspace_id: uuid.UUID, **kwargs: Any) -> TandemError:
    with pytest.raises(TandemError) as info:
        await update(pool, agent, workspace_id, **kwargs)
    return info.value


async def get(pool: asyncpg.Pool, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A) -> state.StateSnapshot:
    async with tx(pool, "reader", tenant_id) as conn:
        return await state.get_state(conn, workspace_id)


# --- apply_patch (pure) ----------------------------------------------------------------------


def test_apply_patch_applies_every_rfc6902_operation_without_touching_the_input() -> None:
    before = {"a": 1, "list": [1, 2], "nested": {"x": "y"}}
    patch = [
        {"op": "add", "path": "/b", "value": {"c": True}},
        {"op": "remove", "path": "/a"},
        {"op": "replace", "path": "/list/0", "value": 10},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "move", "from": "/nested/x", "path": "/moved"},
        {"op": "copy", "from": "/b", "path": "/b2"},
        {"op": "test", "path": "/moved", "value": "y"},
    ]
    after = state.apply_patch(before, patch)
    assert after == {"list": [10, 2, 3], "nested": {}, "b": {"c": True}, "b2": {"c": True}, "moved": "y"}
    assert before == {"a": 1, "list": [1, 2], "nested": {"x": "y"}}


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "test", "path": "/a", "value": 2}],  # a test that does not hold
        [{"op": "test", "path": "/a", "value": True}],  # 1 is not true in JSON
        [{"op": "remove", "path": "/missing/deeper"}],  # bad path
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "no-slash", "value": 1}],
        [{"op": "add", "path": "/list/9", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "/b"}],  # no value
        [7],  # not an operation object
        [{"op": "remove", "path": ""}],
    ],
)
def test_apply_patch_failures_are_invalid_patch_with_the_operation_index(patch) -> None:
    with pytest.raises(TandemError) as info:
        state.apply_patch({"a": 1, "list": []}, [{"op": "add", "path": "/ok", "value": 0}, *patch])
    assert info.value.code is ErrorCode.INVALID_PATCH
    reason = info.value.details["reason"]
    assert reason.startswith("operation 1: ") and len(reason) <= state.MAX_REASON_CHARS + len("operation 1: ")


def test_apply_patch_replacing_the_root_with_a_non_object_is_invalid_state() -> None:
    with pytest.raises(TandemError) as info:
        state.apply_patch({"a": 1}, [{"op": "replace", "path": "", "value": 42}])
    assert info.value.code is ErrorCode.INVALID_STATE


def test_encode_state_is_compact_and_bounded() -> None:
    assert state.encode_state({"a": [1, 2], "é": "x"}, 100) == '{"a":[1,2],"é":"x"}'
    size = len('{"a":[1,2],"é":"x"}'.encode())
    with pytest.raises(TandemError) as info:
        state.encode_state({"a": [1, 2], "é": "x"}, size - 1)
    assert info.value.code is ErrorCode.INVALID_STATE
    assert info.value.details == {"max_state_bytes": size - 1, "state_bytes": size}
    with pytest.raises(TandemError) as info:
        state.encode_state({"nan": float("nan")}, 100)
    assert info.value.code is ErrorCode.INVALID_STATE


# --- get and update --------------------------------------------------------------------------


async def test_new_workspace_has_an_empty_state_at_version_one(pool) -> None:
    wid = await make_workspace(pool)
    snap = await get(pool, wid)
    assert (snap.workspace_id, snap.version, snap.state) == (wid, 1, {})
    assert snap.to_wire() == {"workspace_id": str(wid), "version": 1, "state": {}}


async def test_replace_merge_and_patch_each_advance_the_version_by_exactly_one(pool) -> None:
    wid = await make_workspace(pool)
    r1 = await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": {"x": 1, "y": 2}, "b": [1]})
    assert (r1.version, r1.previous_version, r1.merged_conflict) == (2, 1, False)
    assert r1.state == {"a": {"x": 1, "y": 2}, "b": [1]}

    r2 = await update(pool, "owner", wid, expected_version=2, mode="merge", value={"a": {"y": 20, "z": 3}, "c": "new"})
    assert (r2.version, r2.previous_version) == (3, 2)
    assert r2.state == {"a": {"x": 1, "y": 20, "z": 3}, "b": [1], "c": "new"}  # recursive, not shallow

    r3 = await update(
        pool, "owner", wid, expected_version=3, mode="patch",
        patch=[{"op": "test", "path": "/c", "value": "new"}, {"op": "add", "path": "/b/-", "value": 2},
               {"op": "remove", "path": "/a/x"}],
    )  # fmt: skip
    assert (r3.version, r3.previous_version) == (4, 3)
    assert r3.state == {"a": {"y": 20, "z": 3}, "b": [1, 2], "c": "new"}

    r4 = await update(pool, "owner", wid, expected_version=4, mode="replace", value={})
    assert (r4.version, r4.state) == (5, {})
    snap = await get(pool, wid)
    assert (snap.version, snap.state) == (5, {})
    assert r4.to_wire() == {
        "workspace_id": str(wid), "version": 5, "state": {}, "previous_version": 4, "merged_conflict": False
    }  # fmt: skip


async def test_merge_replaces_non_object_values_and_keeps_untouched_keys(pool) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": {"b": 1}, "keep": True})
    r = await update(pool, "owner", wid, expected_version=2, mode="merge", value={"a": [1, 2]})
    assert r.state == {"a": [1, 2], "keep": True}


@pytest.mark.parametrize("mode", ["replace", "merge", "patch"])
async def test_stale_version_is_a_conflict_with_the_current_version_and_state(pool, admin, mode) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"n": 1})
    payload = {"patch": [{"op": "add", "path": "/m", "value": 2}]} if mode == "patch" else {"value": {"m": 2}}
    for stale in (1, 3, 99):
        err = await update_error(pool, "owner", wid, expected_version=stale, mode=mode, **payload)
        assert err.code is ErrorCode.CONFLICT
        assert err.details == {"version": 2, "state": {"n": 1}}
    snap = await get(pool, wid)
    assert (snap.version, snap.state) == (2, {"n": 1})  # nothing was written
    assert await admin.fetchval("SELECT count(*) FROM conflict_resolutions") == 0


async def test_replace_cannot_be_merged_even_when_asked(pool) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"n": 1})
    err = await update_error(
        pool, "owner", wid, expected_version=1, mode="replace", value={"m": 2}, on_conflict="merge"
    )
    assert err.code is ErrorCode.CONFLICT and err.details == {"version": 2, "state": {"n": 1}}


async def test_on_conflict_merge_applies_onto_the_current_state_and_records_it(pool, admin) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": {"x": 1}, "n": 1})
    await update(pool, "owner", wid, expected_version=2, mode="merge", value={"n": 2})

    r = await update(pool, "writer", wid, expected_version=1, mode="merge", value={"a": {"y": 2}}, on_conflict="merge")
    assert (r.version, r.previous_version, r.merged_conflict) == (4, 3, True)
    assert r.state == {"a": {"x": 1, "y": 2}, "n": 2}

    r = await update(
        pool, "writer", wid, expected_version=2, mode="patch", patch=[{"op": "add", "path": "/p", "value": 1}],
        on_conflict="merge",
    )  # fmt: skip
    assert (r.version, r.previous_version, r.merged_conflict) == (5, 4, True)
    assert r.state == {"a": {"x": 1, "y": 2}, "n": 2, "p": 1}

    # A current version with on_conflict=merge is a plain update, recorded nowhere.
    r = await update(pool, "writer", wid, expected_version=5, mode="merge", value={"q": 1}, on_conflict="merge")
    assert (r.version, r.merged_conflict) == (6, False)

    rows = await admin.fetch(
        "SELECT tenant_id, resource_type, resource_id, conflict_type, resolution_strategy, details::text AS details,"
        " resolved_by, resolved_at FROM conflict_resolutions ORDER BY created_at, (details->>'expected_version')::int"
    )
    assert [
        (r["tenant_id"], r["resource_type"], r["resource_id"], r["conflict_type"], r["resolution_strategy"],
         json.loads(r["details"]), r["resolved_by"], r["resolved_at"] is not None)
        for r in rows
    ] == [
        (TENANT_A, "workspace_state", wid, "version_mismatch", "merge",
         {"expected_version": 1, "actual_version": 3, "mode": "merge"}, "writer", True),
        (TENANT_A, "workspace_state", wid, "version_mismatch", "merge",
         {"expected_version": 2, "actual_version": 4, "mode": "patch"}, "writer", True),
    ]  # fmt: skip


async def test_a_patch_that_no_longer_applies_to_the_current_state_is_a_conflict(pool, admin) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": 1})
    await update(pool, "owner", wid, expected_version=2, mode="patch", patch=[{"op": "remove", "path": "/a"}])
    err = await update_error(
        pool, "writer", wid, expected_version=2, mode="patch", patch=[{"op": "replace", "path": "/a", "value": 5}],
        on_conflict="merge",
    )  # fmt: skip
    assert err.code is ErrorCode.CONFLICT and err.details == {"version": 3, "state": {}}
    assert await admin.fetchval("SELECT count(*) FROM conflict_resolutions") == 0


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "remove", "path": "/no/such/path"}],
        [{"op": "add", "path": "/a/b", "value": 1}],  # into a number
        ["not an operation"],
    ],
)
async def test_invalid_patch_changes_nothing(pool, patch) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": 1})
    err = await update_error(pool, "owner", wid, expected_version=2, mode="patch", patch=patch)
    assert err.code is ErrorCode.INVALID_PATCH and isinstance(err.details["reason"], str)
    snap = await get(pool, wid)
    assert (snap.version, snap.state) == (2, {"a": 1})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "patch", "patch": {"op": "add"}}, "patch"),  # not a list
        ({"mode": "patch", "patch": "[]"}, "patch"),
        ({"mode": "patch"}, "patch"),
        ({"mode": "patch", "patch": [], "value": {}}, "value"),
        ({"mode": "replace", "value": None}, "value"),
        ({"mode": "merge", "value": {}, "patch": []}, "patch"),
        ({"mode": "upsert", "value": {}}, "mode"),
        ({"mode": "merge", "value": {}, "on_conflict": "ignore"}, "on_conflict"),
        ({"mode": "merge", "value": {}, "expected_version": "1"}, "expected_version"),
        ({"mode": "merge", "value": {}, "expected_version": True}, "expected_version"),
        ({"mode": "merge", "value": {}, "expected_version": 0}, "expected_version"),
    ],
)
async def test_arguments_of_the_wrong_shape_are_invalid_message_naming_the_field(pool, kwargs, field) -> None:
    # (A `value` that is present but not an object is `invalid_state`: see the test below.)
    wid = await make_workspace(pool)
    kwargs = {"expected_version": 1, **kwargs}
    err = await update_error(pool, "owner", wid, **kwargs)
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert field in [e["field"] for e in err.details["errors"]]
    assert all(set(e) == {"field", "type", "message"} for e in err.details["errors"])


async def test_a_patch_replacing_the_root_with_a_number_is_invalid_state(pool) -> None:
    wid = await make_workspace(pool)
    err = await update_error(
        pool, "owner", wid, expected_version=1, mode="patch", patch=[{"op": "replace", "path": "", "value": 3}]
    )
    assert err.code is ErrorCode.INVALID_STATE
    assert (await get(pool, wid)).version == 1


@pytest.mark.parametrize("mode", ["replace", "merge", "patch"])
async def test_a_result_over_max_state_bytes_is_invalid_state(pool, mode) -> None:
    wid = await make_workspace(pool)
    await update(pool, "owner", wid, expected_version=1, mode="replace", value={"a": "x" * 50})
    big = "y" * 100
    payload = {"patch": [{"op": "add", "path": "/b", "value": big}]} if mode == "patch" else {"value": {"b": big}}
    if mode == "replace":
        payload = {"value": {"a": "x" * 50, "b": big}}
    expected_size = len(json.dumps({"a": "x" * 50, "b": big}, separators=(",", ":")))
    err = await update_error(
        pool, "owner", wid, expected_version=2, mode=mode, max_state_bytes=expected_size - 1, **payload
    )
    assert err.code is ErrorCode.INVALID_STATE
    assert err.details == {"max_state_bytes": expected_size - 1, "state_bytes": expected_size}
    assert (await get(pool, wid)).version == 2
    # Exactly at the limit is fine.
    r = await update(pool, "owner", wid, expected_version=2, mode=mode, max_state_bytes=expected_size, **payload)
    assert r.version == 3 and r.state == {"a": "x" * 50, "b": big}


async def test_json_that_jsonb_cannot_hold_is_invalid_state(pool) -> None:
    wid = await make_workspace(pool)
    err = await update_error(pool, "owner", wid, expected_version=1, mode="merge", value={"nul": "a\u0000b"})
    assert err.code is ErrorCode.INVALID_STATE
    assert (await get(pool, wid)).version == 1


async def test_viewers_and_members_without_write_permission_are_forbidden(pool, admin) -> None:
    wid = await make_workspace(pool)
    async with tx(pool, "owner") as conn:
        await ws.add_member(conn, wid, "viewer-1", "viewer")
        await ws.add_member(conn, wid, "reader-1", "member")
    await admin.execute(
        "UPDATE workspace_members SET permissions = '[\"read\"]' WHERE workspace_id = $1 AND agent_id = 'reader-1'", wid
    )
    for agent in ("viewer-1", "reader-1"):
        err = await update_error(pool, agent, wid, expected_version=1, mode="merge", value={"x": 1})
        assert err.code is ErrorCode.FORBIDDEN
    err = await update_error(pool, "stranger", wid, expected_version=1, mode="merge", value={"x": 1})
    assert err.code is ErrorCode.NOT_MEMBER
    assert (await get(pool, wid)).version == 1


async def test_other_tenants_deleted_and_unknown_workspaces_are_not_found(pool, admin) -> None:
    wid = await make_workspace(pool, "owner", TENANT_A)
    deleted = await make_workspace(pool, "owner", TENANT_A)
    await admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", deleted)
    for workspace_id, tenant in ((wid, TENANT_B), (deleted, TENANT_A), (uuid.uuid4(), TENANT_A)):
        with pytest.raises(TandemError) as info:
            await get(pool, workspace_id, tenant)
        assert info.value.code is ErrorCode.NOT_FOUND and info.value.details is None
        with pytest.raises(TandemError) as info:
            await update(pool, "owner", workspace_id, tenant, expected_version=1, mode="merge", value={"x": 1})
        assert info.value.code is ErrorCode.NOT_FOUND and info.value.details is None
    assert await admin.fetchval("SELECT state_version FROM workspaces WHERE id = $1", wid) == 1


async def test_each_update_is_audited_with_the_acting_agent(pool, admin) -> None:
    wid = await make_workspace(pool)
    async with tx(pool, "owner") as conn:
        await ws.add_member(conn, wid, "writer-2", "member")
    await update(pool, "writer-2", wid, expected_version=1, mode="replace", value={"k": 1})
    await update(pool, "owner", wid, expected_version=2, mode="merge", value={"k": 2})
    rows = await admin.fetch(
        "SELECT changed_by, changed_fields, old_data->'state_version' AS old_v, new_data->>'state' AS new_state"
        " FROM audit_log WHERE table_name = 'workspaces' AND record_id = $1 AND action = 'UPDATE'"
        " ORDER BY changed_at, (new_data->>'state_version')::int",
        wid,
    )
    assert [(r["changed_by"], json.loads(r["new_state"])) for r in rows] == [
        ("writer-2", {"k": 1}),
        ("owner", {"k": 2}),
    ]
    assert all({"state", "state_version"} <= set(r["changed_fields"]) for r in rows)


# --- concurrency -----------------------------------------------------------------------------


async def test_ten_writers_incrementing_with_retry_lose_no_update(pool, admin) -> None:
    wid = await make_workspace(pool)
    async with tx(pool, "owner") as conn:
        for i in range(10):
            await ws.add_member(conn, wid, f"agent-{i}", "member")
    writers, increments = 10, 30
    # Bounded: a writer's failed attempt means another writer's success since its last read.
    max_attempts = increments + writers * increments

    async def writer(i: int) -> int:
        agent = f"agent-{i}"
        attempts = 0
        async with pool.acquire() as conn:  # this task's own connection for all its attempts
            async with conn.transaction():
                await store.set_tenant(conn, TENANT_A, agent)
                snap = await state.get_state(conn, wid)
            version, current = snap.version, snap.state
            done = 0
            while done < increments:
                attempts += 1
                assert attempts <= max_attempts, f"{agent} did not finish"
                mode = ("replace", "merge", "patch")[(i + done) % 3]
                counter = current.get("counter", 0)
                payload: dict[str, Any] = {"value": {"counter": counter + 1}}
                if mode == "patch":
                    guard = [{"op": "test", "path": "/counter", "value": counter}] if "counter" in current else []
                    payload = {"patch": [*guard, {"op": "add", "path": "/counter", "value": counter + 1}]}
                try:
                    async with conn.transaction():
                        await store.set_tenant(conn, TENANT_A, agent)
                        result = await state.update_state(
                            conn, agent, wid, expected_version=version, mode=mode, max_state_bytes=MAX_BYTES, **payload
                        )
                except TandemError as exc:
                    assert exc.code is ErrorCode.CONFLICT
                    version, current = exc.details["version"], exc.details["state"]
                    continue
                assert result.version == version + 1 and result.state == {"counter": counter + 1}
                version, current = result.version, result.state
                done += 1
        return attempts

    attempts = await asyncio.gather(*(writer(i) for i in range(writers)))
    snap = await get(pool, wid)
    assert snap.state == {"counter": writers * increments}
    assert snap.version == 1 + writers * increments
    audited = await admin.fetchval(
        "SELECT count(*) FROM audit_log WHERE table_name = 'workspaces' AND record_id = $1 AND action = 'UPDATE'",
        wid,
    )
    assert audited == writers * increments
    assert sum(attempts) >= writers * increments


@pytest.mark.parametrize("value", [[1, 2], "x", 5, True])
@pytest.mark.parametrize("mode", ["replace", "merge"])
async def test_a_value_that_is_not_an_object_is_invalid_state(pool, mode, value) -> None:
    wid = await make_workspace(pool)
    err = await update_error(pool, "owner", wid, expected_version=1, mode=mode, value=value)
    assert err.code is ErrorCode.INVALID_STATE
    snap = await get(pool, wid)
    assert snap.version == 1
