"""Member management (server/workspaces/members.py) against real PostgreSQL.

Every call runs as the application role inside `store.tenant_transaction` (RLS and the audit
trigger apply as in the server). The rules are docs/protocol.md section 12.5, as listed in members.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.workspaces import directory as ws
from server.workspaces import members, state
from tests.conftest import TENANT_A, TENANT_B


def tx(pool: asyncpg.Pool, agent_id: str, tenant_id: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant_id, agent_id)


async def setup_workspace(pool: asyncpg.Pool, tenant_id: uuid.UUID = TENANT_A, max_members: int = 100) -> uuid.UUID:
    """owner (owner), admin-1 and admin-2 (admin), member-1 (member), viewer-1 (viewer)."""
    async with tx(pool, "owner", tenant_id) as conn:
        w = await ws.create_workspace(conn, tenant_id, "owner", "Team", max_members=max_members)
        for agent, role in (("admin-1", "admin"), ("admin-2", "admin"), ("member-1", "member"), ("viewer-1", "viewer")):
            await ws.add_member(conn, w.workspace_id, agent, role)
    return w.workspace_id


async def add(pool, actor: str, wid: uuid.UUID, agent: str, tenant_id: uuid.UUID = TENANT_A, **kw: Any) -> ws.Member:
    async with tx(pool, actor, tenant_id) as conn:
        return await members.add_member(conn, actor, wid, agent, **kw)


async def change(pool, actor: str, wid: uuid.UUID, agent: str, tenant_id: uuid.UUID = TENANT_A, **kw: Any) -> ws.Member:
    async with tx(pool, actor, tenant_id) as conn:
        return await members.update_member(conn, actor, wid, agent, **kw)


async def remove(pool, actor: str, wid: uuid.UUID, agent: str, tenant_id: uuid.UUID = TENANT_A) -> ws.Member:
    async with tx(pool, actor, tenant_id) as conn:
        return await members.remove_member(conn, actor, wid, agent)


async def error_of(call) -> TandemError:
    with pytest.raises(TandemError) as info:
        await call
    return info.value


async def roles(pool, wid: uuid.UUID) -> dict[str, tuple[str, tuple[str, ...]]]:
    async with tx(pool, "owner") as conn:
        listed, _ = await members.list_members(conn, wid, 1000)
    return {m.agent_id: (m.role, m.permissions) for m in listed}


# --- the rules as a pure function ------------------------------------------------------------

OW, A, M, V = "owner", "admin", "member", "viewer"


@pytest.mark.parametrize(
    ("action", "actor", "actor_role", "target", "target_role", "new_role", "expected"),
    [
        ("add", "x", None, "t", None, M, ErrorCode.NOT_MEMBER),
        ("remove", "x", None, "x", None, None, ErrorCode.NOT_MEMBER),
        ("add", "o", OW, "t", None, M, None),
        ("add", "o", OW, "t", None, A, None),
        ("add", "o", OW, "t", None, OW, ErrorCode.FORBIDDEN),
        ("add", "a", A, "t", None, V, None),
        ("add", "a", A, "t", None, A, ErrorCode.FORBIDDEN),
        ("add", "m", M, "t", None, M, ErrorCode.FORBIDDEN),
        ("add", "v", V, "t", None, V, ErrorCode.FORBIDDEN),
        ("update", "o", OW, "t", None, M, ErrorCode.NOT_FOUND),
        ("remove", "a", A, "t", None, None, ErrorCode.NOT_FOUND),
        ("remove", "m", M, "t", None, None, ErrorCode.FORBIDDEN),  # not a manager: forbidden first
        ("update", "o", OW, "t", M, A, None),
        ("update", "o", OW, "t", A, M, None),
        ("update", "o", OW, "t", M, OW, ErrorCode.FORBIDDEN),
        ("update", "a", A, "t", M, V, None),
        ("update", "a", A, "t", V, None, None),  # permissions only
        ("update", "a", A, "t", M, A, ErrorCode.FORBIDDEN),
        ("update", "a", A, "t", A, M, ErrorCode.FORBIDDEN),
        ("update", "a", A, "a", A, None, ErrorCode.FORBIDDEN),  # an admin cannot change itself
        ("update", "m", M, "m", M, V, ErrorCode.FORBIDDEN),
        ("remove", "o", OW, "t", A, None, None),
        ("remove", "a", A, "t", A, None, ErrorCode.FORBIDDEN),
        ("remove", "a", A, "t", M, None, None),
        ("remove", "a", A, "a", A, None, None),  # leaving
        ("remove", "m", M, "m", M, None, None),
        ("remove", "v", V, "v", V, None, None),
        ("remove", "o", OW, "o", OW, None, ErrorCode.FORBIDDEN),  # the owner cannot leave
        ("remove", "a", A, "o", OW, None, ErrorCode.FORBIDDEN),
        ("update", "o", OW, "o", OW, None, ErrorCode.FORBIDDEN),
        ("update", "o", OW, "o2", OW, M, ErrorCode.FORBIDDEN),  # any owner-role member is protected
        ("update", "o", OW, "owner-id", M, None, ErrorCode.FORBIDDEN),  # owner_id even with another role
    ],
)
def test_check_change_rules(action, actor, actor_role, target, target_role, new_role, expected) -> None:
    owner_id = "owner-id" if target == "owner-id" else "o"
    got = members.check_change(
        action, actor_id=actor, actor_role=actor_role, target_id=target, target_role=target_role,
        owner_id=owner_id, new_role=new_role,
    )  # fmt: skip
    assert got == expected


# --- add -------------------------------------------------------------------------------------


async def test_owner_adds_members_admins_and_viewers_with_permissions(pool) -> None:
    wid = await setup_workspace(pool)
    m = await add(pool, "owner", wid, "new-member")
    assert (m.agent_id, m.role, m.permissions) == ("new-member", "member", ("read", "write"))
    a = await add(pool, "owner", wid, "new-admin", role="admin", permissions=["read", "write", "admin"])
    assert (a.role, a.permissions) == ("admin", ("read", "write", "admin"))
    v = await add(pool, "owner", wid, "new-viewer", role="viewer", permissions=["read"])
    assert (v.role, v.permissions) == ("viewer", ("read",))
    assert members.member_to_wire(v) == {
        "agent_id": "new-viewer", "role": "viewer", "permissions": ["read"], "joined_at": ws.rfc3339(v.joined_at)
    }  # fmt: skip
    listed = await roles(pool, wid)
    assert listed["new-admin"] == ("admin", ("read", "write", "admin"))
    assert listed["new-viewer"] == ("viewer", ("read",))


async def test_admin_adds_members_and_viewers_but_not_admins(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await add(pool, "admin-1", wid, "m2")).role == "member"
    assert (await add(pool, "admin-1", wid, "v2", role="viewer")).role == "viewer"
    err = await error_of(add(pool, "admin-1", wid, "a3", role="admin"))
    assert err.code is ErrorCode.FORBIDDEN
    assert "a3" not in await roles(pool, wid)


async def test_members_and_viewers_cannot_add_anyone(pool) -> None:
    wid = await setup_workspace(pool)
    for actor in ("member-1", "viewer-1"):
        err = await error_of(add(pool, actor, wid, "someone", role="viewer"))
        assert err.code is ErrorCode.FORBIDDEN
    assert "someone" not in await roles(pool, wid)


async def test_nobody_is_given_the_owner_role(pool) -> None:
    wid = await setup_workspace(pool)
    for call in (
        add(pool, "owner", wid, "new", role="owner"),
        add(pool, "owner", wid, "member-1", role="owner"),
        change(pool, "owner", wid, "admin-1", role="owner"),
    ):
        assert (await error_of(call)).code is ErrorCode.FORBIDDEN
    listed = await roles(pool, wid)
    assert "new" not in listed and listed["member-1"][0] == "member" and listed["admin-1"][0] == "admin"


async def test_adding_an_existing_member_updates_it_under_the_same_rules(pool) -> None:
    wid = await setup_workspace(pool)
    before = await roles(pool, wid)
    v = await add(pool, "admin-1", wid, "member-1", role="viewer", permissions=["read"])
    assert (v.role, v.permissions) == ("viewer", ("read",))
    # Re-adding an admin (default role "member") would demote it: only the owner may.
    assert (await error_of(add(pool, "admin-1", wid, "admin-2"))).code is ErrorCode.FORBIDDEN
    assert (await add(pool, "owner", wid, "admin-2")).role == "member"
    # The owner cannot be re-added as anything.
    assert (await error_of(add(pool, "owner", wid, "owner", role="admin"))).code is ErrorCode.FORBIDDEN
    after = await roles(pool, wid)
    assert len(after) == len(before)
    assert after["owner"] == ("owner", ("read", "write"))


async def test_max_members_refuses_new_members_but_not_updates(pool) -> None:
    wid = await setup_workspace(pool, max_members=6)
    await add(pool, "owner", wid, "sixth")
    assert (await error_of(add(pool, "owner", wid, "seventh"))).code is ErrorCode.WORKSPACE_FULL
    assert (await add(pool, "owner", wid, "sixth", role="viewer")).role == "viewer"
    # Rules come before the limit: a viewer learns nothing about fullness.
    assert (await error_of(add(pool, "viewer-1", wid, "seventh"))).code is ErrorCode.FORBIDDEN


async def test_concurrent_adds_for_the_last_slot_admit_exactly_one(pool) -> None:
    wid = await setup_workspace(pool, max_members=6)

    async def attempt(i: int) -> ErrorCode | None:
        try:
            await add(pool, "owner" if i % 2 else "admin-1", wid, f"racer-{i}")
        except TandemError as exc:
            return exc.code
        return None

    results = await asyncio.gather(*(attempt(i) for i in range(6)))
    assert sorted(results, key=str) == [None] + [ErrorCode.WORKSPACE_FULL] * 5
    assert len(await roles(pool, wid)) == 6


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": "boss"}, "role"),
        ({"role": 3}, "role"),
        ({"permissions": ["read", "fly"]}, "permissions.1"),
        ({"permissions": ["read", "read"]}, "permissions"),
        ({"permissions": "read"}, "permissions"),
        ({"permissions": [1]}, "permissions.0"),
    ],
)
async def test_unknown_roles_and_bad_permissions_are_invalid_message(pool, kwargs, field) -> None:
    wid = await setup_workspace(pool)
    for call in (add(pool, "owner", wid, "member-1", **kwargs), change(pool, "owner", wid, "member-1", **kwargs)):
        err = await error_of(call)
        assert err.code is ErrorCode.INVALID_MESSAGE
        assert field in [e["field"] for e in err.details["errors"]]
    for agent_id in ("", "x" * 256):
        err = await error_of(add(pool, "owner", wid, agent_id))
        assert err.code is ErrorCode.INVALID_MESSAGE and err.details["errors"][0]["field"] == "agent_id"


# --- update ----------------------------------------------------------------------------------


async def test_owner_promotes_and_demotes_admins(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await change(pool, "owner", wid, "member-1", role="admin")).role == "admin"
    assert (await change(pool, "owner", wid, "admin-1", role="viewer")).role == "viewer"
    listed = await roles(pool, wid)
    assert listed["member-1"][0] == "admin" and listed["admin-1"][0] == "viewer"


async def test_admin_changes_members_and_viewers_but_not_admins(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await change(pool, "admin-1", wid, "member-1", role="viewer")).role == "viewer"
    m = await change(pool, "admin-1", wid, "viewer-1", role="member", permissions=["read"])
    assert (m.role, m.permissions) == ("member", ("read",))
    for call in (
        change(pool, "admin-1", wid, "admin-2", role="member"),
        change(pool, "admin-1", wid, "admin-2", permissions=["read"]),
        change(pool, "admin-1", wid, "admin-1", permissions=["read"]),
        change(pool, "admin-1", wid, "member-1", role="admin"),
    ):
        assert (await error_of(call)).code is ErrorCode.FORBIDDEN
    listed = await roles(pool, wid)
    assert listed["admin-2"] == ("admin", ("read", "write")) and listed["admin-1"] == ("admin", ("read", "write"))


async def test_members_and_viewers_cannot_change_anyone_including_themselves(pool) -> None:
    wid = await setup_workspace(pool)
    for actor, target in (("member-1", "viewer-1"), ("viewer-1", "member-1"), ("member-1", "member-1")):
        err = await error_of(change(pool, actor, wid, target, role="viewer", permissions=["read"]))
        assert err.code is ErrorCode.FORBIDDEN
    err = await error_of(change(pool, "viewer-1", wid, "viewer-1", role="admin"))
    assert err.code is ErrorCode.FORBIDDEN


async def test_the_owner_is_never_demoted_or_given_other_permissions(pool) -> None:
    wid = await setup_workspace(pool)
    for actor in ("owner", "admin-1", "member-1"):
        for kwargs in ({"role": "admin"}, {"permissions": ["read"]}, {"role": "owner"}, {}):
            assert (await error_of(change(pool, actor, wid, "owner", **kwargs))).code is ErrorCode.FORBIDDEN
    assert (await roles(pool, wid))["owner"] == ("owner", ("read", "write"))


async def test_changed_permissions_are_honoured_for_writing(pool) -> None:
    wid = await setup_workspace(pool)
    await change(pool, "admin-1", wid, "member-1", permissions=["read"])
    async with tx(pool, "member-1") as conn:
        m = await ws.membership(conn, "member-1", wid)
    assert m is not None and not ws.can_write(m)
    err = await error_of(_state_update(pool, "member-1", wid))
    assert err.code is ErrorCode.FORBIDDEN
    await change(pool, "admin-1", wid, "member-1", permissions=["read", "write"])
    assert (await _state_update(pool, "member-1", wid)).version == 2
    # A viewer stays read-only whatever its permissions say.
    await change(pool, "admin-1", wid, "viewer-1", permissions=["read", "write"])
    assert (await error_of(_state_update(pool, "viewer-1", wid))).code is ErrorCode.FORBIDDEN


async def _state_update(pool, agent: str, wid: uuid.UUID) -> state.StateUpdate:
    async with tx(pool, agent) as conn:
        return await state.update_state(
            conn, agent, wid, expected_version=1, mode="merge", value={"x": 1}, max_state_bytes=1024
        )


async def test_changing_a_non_member_is_not_found(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await error_of(change(pool, "owner", wid, "nobody", role="viewer"))).code is ErrorCode.NOT_FOUND
    assert (await error_of(change(pool, "admin-1", wid, "nobody", role="viewer"))).code is ErrorCode.NOT_FOUND


# --- remove ----------------------------------------------------------------------------------


async def test_owner_removes_admins_and_admins_remove_members_and_viewers(pool) -> None:
    wid = await setup_workspace(pool)
    removed = await remove(pool, "owner", wid, "admin-2")
    assert (removed.agent_id, removed.role, removed.permissions) == ("admin-2", "admin", ("read", "write"))
    assert (await remove(pool, "admin-1", wid, "member-1")).role == "member"
    assert (await remove(pool, "admin-1", wid, "viewer-1")).role == "viewer"
    assert set(await roles(pool, wid)) == {"owner", "admin-1"}


async def test_admins_cannot_remove_admins_or_the_owner(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await error_of(remove(pool, "admin-1", wid, "admin-2"))).code is ErrorCode.FORBIDDEN
    assert (await error_of(remove(pool, "admin-1", wid, "owner"))).code is ErrorCode.FORBIDDEN
    assert {"owner", "admin-2"} <= set(await roles(pool, wid))


async def test_members_and_viewers_cannot_remove_others(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await error_of(remove(pool, "member-1", wid, "viewer-1"))).code is ErrorCode.FORBIDDEN
    assert (await error_of(remove(pool, "viewer-1", wid, "member-1"))).code is ErrorCode.FORBIDDEN
    assert (await error_of(remove(pool, "member-1", wid, "owner"))).code is ErrorCode.FORBIDDEN
    assert {"member-1", "viewer-1"} <= set(await roles(pool, wid))


async def test_anyone_but_the_owner_may_leave(pool) -> None:
    wid = await setup_workspace(pool)
    for agent in ("viewer-1", "member-1", "admin-2"):
        assert (await remove(pool, agent, wid, agent)).agent_id == agent
    assert (await error_of(remove(pool, "owner", wid, "owner"))).code is ErrorCode.FORBIDDEN
    assert set(await roles(pool, wid)) == {"owner", "admin-1"}
    # Gone is gone: a second leave is not_member (the actor is no longer a member).
    assert (await error_of(remove(pool, "viewer-1", wid, "viewer-1"))).code is ErrorCode.NOT_MEMBER


async def test_removing_a_non_member_is_not_found(pool) -> None:
    wid = await setup_workspace(pool)
    assert (await error_of(remove(pool, "owner", wid, "nobody"))).code is ErrorCode.NOT_FOUND


# --- actors, tenants, lists, audit -----------------------------------------------------------


async def test_an_actor_that_is_not_a_member_gets_not_member(pool) -> None:
    wid = await setup_workspace(pool)
    for call in (
        add(pool, "stranger", wid, "x"),
        change(pool, "stranger", wid, "member-1", role="viewer"),
        remove(pool, "stranger", wid, "member-1"),
    ):
        assert (await error_of(call)).code is ErrorCode.NOT_MEMBER


async def test_other_tenants_deleted_and_unknown_workspaces_are_not_found(pool, admin) -> None:
    wid = await setup_workspace(pool, TENANT_A)
    deleted = await setup_workspace(pool, TENANT_A)
    await admin.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", deleted)
    for workspace_id, tenant in ((wid, TENANT_B), (deleted, TENANT_A), (uuid.uuid4(), TENANT_A)):
        for call in (
            add(pool, "owner", workspace_id, "x", tenant),
            change(pool, "owner", workspace_id, "member-1", tenant, role="viewer"),
            remove(pool, "owner", workspace_id, "member-1", tenant),
        ):
            err = await error_of(call)
            assert err.code is ErrorCode.NOT_FOUND and err.details is None
        async with tx(pool, "owner", tenant) as conn:
            assert (await error_of(members.list_members(conn, workspace_id, 10))).code is ErrorCode.NOT_FOUND
    assert len(await roles(pool, wid)) == 5
    assert await admin.fetchval("SELECT count(*) FROM workspace_members WHERE tenant_id = $1", TENANT_B) == 0


async def test_list_members_in_joining_order_cut_at_the_limit(pool) -> None:
    wid = await setup_workspace(pool)  # one transaction: equal joined_at, then by agent_id
    await add(pool, "owner", wid, "z-later")
    await add(pool, "owner", wid, "a-last")
    async with tx(pool, "member-1") as conn:
        listed, truncated = await members.list_members(conn, wid, 10)
        assert [m.agent_id for m in listed] == [
            "admin-1",
            "admin-2",
            "member-1",
            "owner",
            "viewer-1",
            "z-later",
            "a-last",
        ]
        assert not truncated
        cut, truncated = await members.list_members(conn, wid, 6)
        assert [m.agent_id for m in cut][-1] == "z-later" and truncated
        with pytest.raises(ValueError):
            await members.list_members(conn, wid, 0)


async def test_every_change_is_audited_with_the_acting_agent(pool, admin) -> None:
    wid = await setup_workspace(pool)
    await add(pool, "admin-1", wid, "audited", role="viewer")
    await change(pool, "owner", wid, "audited", role="member", permissions=["read"])
    await remove(pool, "admin-2", wid, "admin-2")
    await remove(pool, "admin-1", wid, "audited")
    rows = await admin.fetch(
        "SELECT action, changed_by, coalesce(new_data, old_data)->>'agent_id' AS agent, changed_fields"
        " FROM audit_log WHERE table_name = 'workspace_members' AND record_id = $1"
        " AND NOT (action = 'INSERT' AND changed_by = 'owner')"  # setup_workspace's own rows
        " ORDER BY changed_at",
        wid,
    )
    assert [(r["action"], r["changed_by"], r["agent"]) for r in rows] == [
        ("INSERT", "admin-1", "audited"),
        ("UPDATE", "owner", "audited"),
        ("DELETE", "admin-2", "admin-2"),
        ("DELETE", "admin-1", "audited"),
    ]
    assert set(rows[1]["changed_fields"]) == {"role", "permissions"}
