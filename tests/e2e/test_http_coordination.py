"""Tasks and locks over /v1 (docs/http.md) against a real `tandem serve` and PostgreSQL: the task
life cycle and a lock's, as the agent endpoint's `task.*` and `lock.*` requests do them, each
change heard as an event by a session on /ws; and their refusals (not a member, a viewer, a
wrong fence, a held lock, a bad body or query, another tenant's id), typed problems that
store nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import Tandem
from tests.e2e.http_peers import (  # noqa: F401 (fixtures)
    assert_problem,
    bearer,
    count,
    http,
    run,
    server,
)
from tests.serverproc import TANDEM, server_env


async def _workspace(http: httpx.AsyncClient, server: Tandem, name: str) -> str:  # noqa: F811
    """Alice's team workspace with bob a member and victor a viewer."""
    created = await http.post(
        "/workspaces",
        json={"name": name, "visibility": "team"},
        headers=bearer("alice"),
    )
    ws_id = created.json()["workspace"]["workspace_id"]
    env = server_env(DATABASE_URL=server.db.admin_url)
    for agent, role in (("bob", "member"), ("victor", "viewer")):
        await run(
            [
                TANDEM,
                "member",
                "add",
                "--tenant",
                str(TENANT_A),
                ws_id,
                agent,
                "--role",
                role,
            ],
            env,
        )
    return ws_id


async def _watcher(node: Tandem, ws_id: str) -> wsclient.Agent:
    """Bob's session on /ws, joined to the workspace, hearing its events."""
    agent = await node.agent(TENANT_A, "bob").connect()
    await agent.request("workspace.join", workspace_id=ws_id)
    return agent


async def test_a_task_life_cycle_over_http_is_the_agent_endpoints(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
) -> None:
    ws_id = await _workspace(http, server, "Tasks")
    bob_ws = await _watcher(server, ws_id)
    try:
        created = await http.post(
            f"/workspaces/{ws_id}/tasks",
            json={
                "title": "Review",
                "priority": "high",
                "assign_to": "bob",
                "parameters": {"pr": 7},
            },
            headers=bearer("alice"),
        )
        assert created.status_code == 201, created.text
        task = created.json()["task"]
        task_id = task["task_id"]
        assert created.headers["location"] == f"/v1/tasks/{task_id}"
        assert (task["status"], task["assigned_to"], task["created_by"]) == (
            "assigned",
            "bob",
            "alice",
        )
        heard = await bob_ws.event(lambda f: f["type"] == "task.changed")
        assert heard["action"] == "create" and heard["task"]["task_id"] == task_id

        listed = await http.get(
            f"/workspaces/{ws_id}/tasks",
            params=[
                ("assigned_to", "bob"),
                ("status", "assigned"),
                ("status", "pending"),
            ],
            headers=bearer("bob"),
        )
        assert listed.status_code == 200, listed.text
        assert [t["task_id"] for t in listed.json()["tasks"]] == [task_id]
        assert listed.json()["truncated"] is False

        for action, body, status in (
            ("accept", None, "accepted"),
            ("start", {}, "in_progress"),
            ("complete", {"result": {"ok": True}}, "completed"),
        ):
            done = await http.post(
                f"/tasks/{task_id}/{action}", json=body, headers=bearer("bob")
            )
            assert done.status_code == 200, done.text
            assert done.json()["task"]["status"] == status
            heard = await bob_ws.event(lambda f: f["type"] == "task.changed")
            assert heard["action"] == action and heard["task"]["status"] == status
        assert_problem(
            await http.post(f"/tasks/{task_id}/start", headers=bearer("bob")),
            409,
            "invalid_transition",
        )
        got = (await http.get(f"/tasks/{task_id}", headers=bearer("alice"))).json()
        assert got["task"]["result"] == {"ok": True} and got["delegations"] == []

        # Delegation and a failure with retries left (back to pending, unassigned).
        second = (
            await http.post(
                f"/workspaces/{ws_id}/tasks",
                json={"title": "Deploy"},
                headers=bearer("alice"),
            )
        ).json()["task"]["task_id"]
        delegated = await http.post(
            f"/tasks/{second}/delegate",
            json={"agent_id": "bob", "reason": "yours"},
            headers=bearer("alice"),
        )
        assert (
            delegated.status_code == 200
            and delegated.json()["task"]["assigned_to"] == "bob"
        )
        # Started straight from assigned: accepted and started in one change, one event.
        moved = await http.post(f"/tasks/{second}/start", headers=bearer("bob"))
        assert moved.status_code == 200, moved.text
        assert moved.json()["task"]["status"] == "in_progress"
        assert moved.json()["task"]["started_at"] is not None
        heard = await bob_ws.event(
            lambda f: f["type"] == "task.changed" and f["task"]["task_id"] == second and f["action"] not in ("create", "delegate")
        )
        assert (heard["action"], heard["task"]["status"]) == ("start", "in_progress")
        failed = await http.post(
            f"/tasks/{second}/fail", json={"error": "disk full"}, headers=bearer("bob")
        )
        assert (
            failed.json()["task"]["status"] == "pending"
            and failed.json()["task"]["retry_count"] == 1
        )
        detail = (await http.get(f"/tasks/{second}", headers=bearer("bob"))).json()
        assert [
            (d["from_agent_id"], d["to_agent_id"]) for d in detail["delegations"]
        ] == [("alice", "bob")]
        # A worker claims a pending task by assigning it to itself, as on /ws.
        third = (
            await http.post(
                f"/workspaces/{ws_id}/tasks",
                json={"title": "Open"},
                headers=bearer("alice"),
            )
        ).json()["task"]["task_id"]
        claimed = await http.post(
            f"/tasks/{third}/assign", json={"agent_id": "bob"}, headers=bearer("bob")
        )
        assert (
            claimed.status_code == 200
            and claimed.json()["task"]["assigned_to"] == "bob"
        )
    finally:
        await bob_ws.close()


async def test_task_refusals_are_the_agent_endpoints_and_store_nothing(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
) -> None:
    ws_id = await _workspace(http, server, "Task refusals")
    tasks_path = f"/workspaces/{ws_id}/tasks"
    task_id = (
        await http.post(tasks_path, json={"title": "T"}, headers=bearer("alice"))
    ).json()["task"]["task_id"]
    before = await count(server, "tasks")
    cases: list[tuple[str, str, Any, str, int, str]] = [
        ("post", tasks_path, {"title": "x"}, "mallory", 403, "not_member"),
        ("get", tasks_path, None, "mallory", 403, "not_member"),
        ("get", f"/tasks/{task_id}", None, "mallory", 403, "not_member"),
        ("post", tasks_path, {"title": "x"}, "victor", 403, "forbidden"),
        ("post", f"/tasks/{task_id}/cancel", {}, "victor", 403, "forbidden"),
        ("post", tasks_path, {}, "alice", 422, "invalid_message"),  # no title
        (
            "post",
            tasks_path,
            {"title": "x", "type": "task.create"},
            "alice",
            422,
            "invalid_message",
        ),
        (
            "post",
            tasks_path,
            {"title": "x", "workspace_id": ws_id},
            "alice",
            422,
            "invalid_message",
        ),
        (
            "post",
            tasks_path,
            {"title": "x", "colour": "red"},
            "alice",
            422,
            "invalid_message",
        ),
        (
            "post",
            tasks_path,
            {"title": "x", "priority": "urgent"},
            "alice",
            422,
            "invalid_message",
        ),
        ("post", tasks_path, [{"title": "x"}], "alice", 422, "invalid_message"),
        (
            "post",
            f"/tasks/{task_id}/fail",
            {},
            "alice",
            422,
            "invalid_message",
        ),  # no error
        (
            "post",
            f"/tasks/{task_id}/start",
            {},
            "alice",
            409,
            "invalid_transition",
        ),  # pending
        ("post", f"/tasks/{uuid.uuid4()}/accept", {}, "alice", 404, "not_found"),
        (
            "post",
            f"/workspaces/{uuid.uuid4()}/tasks",
            {"title": "x"},
            "alice",
            404,
            "not_found",
        ),
    ]
    for method, path, body, agent, status, code in cases:
        response = await http.request(method, path, json=body, headers=bearer(agent))
        assert_problem(response, status, code)
    assert_problem(
        await http.post(
            tasks_path,
            content=b"{nope",
            headers={**bearer("alice"), "Content-Type": "application/json"},
        ),
        400,
        "bad_json",
    )
    bad_query = await http.get(
        tasks_path, params={"status": "sleeping"}, headers=bearer("alice")
    )
    assert assert_problem(bad_query, 422, "invalid_message")["details"]["errors"][0][
        "field"
    ].startswith("status")
    assert_problem(
        await http.get(tasks_path, params={"limit": 0}, headers=bearer("alice")),
        422,
        "invalid_message",
    )
    # Another tenant's agent: its ids are unknown ones.
    other = bearer("alice", TENANT_B)
    assert_problem(await http.get(f"/tasks/{task_id}", headers=other), 404, "not_found")
    assert_problem(
        await http.post(tasks_path, json={"title": "x"}, headers=other),
        404,
        "not_found",
    )
    assert await count(server, "tasks") == before
    still = (await http.get(f"/tasks/{task_id}", headers=bearer("alice"))).json()[
        "task"
    ]
    assert still["status"] == "pending"


async def test_a_lock_over_http_guards_as_the_agent_endpoints_does(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
) -> None:
    ws_id = await _workspace(http, server, "Locks")
    bob_ws = await _watcher(server, ws_id)
    locks = f"/workspaces/{ws_id}/locks"
    try:
        got = await http.post(
            locks + "/acquire",
            json={"name": "deploy", "ttl_ms": 60000},
            headers=bearer("alice"),
        )
        assert got.status_code == 200, got.text
        lock = got.json()["lock"]
        assert (lock["holder"], lock["name"], lock["doc_id"]) == (
            "alice",
            "deploy",
            None,
        )
        heard = await bob_ws.event(lambda f: f["type"] == "lock.acquired")
        assert heard["lock"]["fence"] == lock["fence"]
        held = assert_problem(
            await http.post(
                locks + "/acquire", json={"name": "deploy"}, headers=bearer("bob")
            ),
            423,
            "locked",
        )
        assert held["details"]["holder"] == "alice"
        renewed = await http.post(
            locks + "/renew",
            json={"name": "deploy", "fence": lock["fence"]},
            headers=bearer("alice"),
        )
        assert (
            renewed.status_code == 200
            and renewed.json()["lock"]["fence"] == lock["fence"]
        )
        stale = {"name": "deploy", "fence": lock["fence"] + 1}
        assert_problem(
            await http.post(locks + "/renew", json=stale, headers=bearer("alice")),
            409,
            "stale_fence",
        )
        assert_problem(
            await http.post(locks + "/release", json=stale, headers=bearer("alice")),
            409,
            "stale_fence",
        )
        listed = (await http.get(locks, headers=bearer("bob"))).json()
        assert [item["name"] for item in listed["locks"]] == ["deploy"]
        for body, agent, status, code in (
            ({"name": "deploy"}, "victor", 403, "forbidden"),
            ({"name": "deploy"}, "mallory", 403, "not_member"),
            (
                {"name": "x", "doc_id": str(uuid.uuid4())},
                "alice",
                422,
                "invalid_message",
            ),  # two targets
            ({}, "alice", 422, "invalid_message"),  # none
            (
                {"name": "x", "wait_ms": 100},
                "alice",
                422,
                "invalid_message",
            ),  # no waiting over HTTP
            ({"name": "x", "ttl_ms": 5}, "alice", 422, "invalid_message"),
        ):
            assert_problem(
                await http.post(locks + "/acquire", json=body, headers=bearer(agent)),
                status,
                code,
            )
        released = await http.post(
            locks + "/release",
            json={"name": "deploy", "fence": lock["fence"]},
            headers=bearer("alice"),
        )
        assert released.status_code == 200
        assert (await bob_ws.event(lambda f: f["type"] == "lock.released"))[
            "reason"
        ] == "released"
        assert (await http.get(locks, headers=bearer("bob"))).json()["locks"] == []
        # A document's lock guards writes: bob's HTTP edit is refused while alice holds it.
        doc = (
            await http.post(
                f"/workspaces/{ws_id}/documents",
                json={"title": "d"},
                headers=bearer("alice"),
            )
        ).json()
        doc_lock = await http.post(
            locks + "/acquire", json={"doc_id": doc["doc_id"]}, headers=bearer("alice")
        )
        assert doc_lock.status_code == 200
        edit = [{"insert": {"index": 0, "text": "hi"}}]
        refused = await http.post(
            f"/workspaces/{ws_id}/documents/{doc['doc_id']}/edits",
            json=edit,
            headers=bearer("bob"),
        )
        assert_problem(refused, 423, "locked")
    finally:
        await bob_ws.close()
