"""The HTTP API's refusals (docs/http.md) against a real `tandem serve`: private workspaces,
other tenants' ids, missing, expired and bad tokens, malformed queries and bodies, and a viewer's
writes, each answered by a typed problem that stores nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import Tandem, admin_fetch
from tests.e2e.http_peers import MAX_BODY, assert_problem, bearer, count, doc_path, run
from tests.e2e.http_peers import edited, http, server  # noqa: F401 (fixtures)
from tests.serverproc import TANDEM, server_env


async def test_private_workspace_is_forbidden_to_a_non_member_and_a_team_one_is_read_without_joining(
    http: httpx.AsyncClient,
    edited: dict[str, Any],
    server: Tandem,  # noqa: F811
) -> None:
    private = (
        await http.post("/workspaces", json={"name": "Secret"}, headers=bearer("carol"))
    ).json()["workspace"]
    for path in (
        f"/workspaces/{private['workspace_id']}",
        f"/workspaces/{private['workspace_id']}/documents",
    ):
        assert_problem(
            await http.get(path, headers=bearer("mallory")), 403, "forbidden"
        )
    # Alice's workspace is a team one: another agent of the tenant reads it through every GET
    # and stays a non-member; no GET writes a row of workspace_members.
    members = "SELECT workspace_id, agent_id, role, joined_at, last_seen_at FROM workspace_members ORDER BY 1, 2"
    before = await admin_fetch(server.db, members)
    ws_path = f"/workspaces/{edited['workspace_id']}"
    r = await http.get(doc_path(edited, "/content"), headers=bearer("dave"))
    assert r.status_code == 200 and r.text == edited["texts"][5]
    got = await http.get(ws_path, headers=bearer("dave"))
    assert got.status_code == 200 and got.json()["role"] is None
    for path in (
        ws_path + "/documents",
        ws_path + "/state",
        doc_path(edited),
        doc_path(edited, "/history"),
        doc_path(edited, "/blame"),
    ):
        assert (await http.get(path, headers=bearer("dave"))).status_code == 200, path
    assert await admin_fetch(server.db, members) == before
    assert "dave" not in {r["agent_id"] for r in before}


async def test_another_tenants_ids_are_not_found(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    other = bearer("alice", TENANT_B)
    for tail in ("", "/content", "/history", "/blame"):
        assert_problem(
            await http.get(doc_path(edited, tail), headers=other), 404, "not_found"
        )
    assert_problem(
        await http.get(f"/workspaces/{edited['workspace_id']}", headers=other),
        404,
        "not_found",
    )
    assert_problem(
        await http.get(
            f"/workspaces/{edited['workspace_id']}/documents", headers=other
        ),
        404,
        "not_found",
    )
    wrong_ws = f"/workspaces/{uuid.uuid4()}/documents/{edited['doc_id']}/content"
    assert_problem(await http.get(wrong_ws, headers=bearer("alice")), 404, "not_found")


# --- refusals --------------------------------------------------------------------------------


async def test_missing_expired_and_bad_tokens_get_401_naming_the_class(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    path = doc_path(edited, "/content")
    missing = assert_problem(await http.get(path), 401, "unauthorized")
    assert missing["detail"] == "unauthorized: missing"
    expired = assert_problem(
        await http.get(path, headers=bearer("alice", ttl_s=-3600)), 401, "token_expired"
    )
    assert expired["details"] == {"reason": "expired"}
    forged = {
        "Authorization": f"Bearer {wsclient.token(TENANT_A, 'alice', secret='x' * 48)}"
    }
    assert (
        assert_problem(await http.get(path, headers=forged), 401, "unauthorized")[
            "detail"
        ]
        == "unauthorized: bad_signature"
    )
    garbage = assert_problem(
        await http.get(path, headers={"Authorization": "Bearer abc"}),
        401,
        "unauthorized",
    )
    assert garbage["detail"] == "unauthorized: malformed"
    query_token = await http.get(
        path, params={"token": wsclient.token(TENANT_A, "alice")}
    )  # not over HTTP
    assert_problem(query_token, 401, "unauthorized")
    r = await http.get(path)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_malformed_queries_get_invalid_message(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    content, alice = doc_path(edited, "/content"), bearer("alice")
    for params in (
        {"seq": "-1"},
        {"seq": "x"},
        {"at": "yesterday"},
        {"at": "2026-01-01T00:00:00"},
        {"seq": "1", "at": "2026-01-01T00:00:00Z"},
    ):
        assert_problem(
            await http.get(content, params=params, headers=alice),
            422,
            "invalid_message",
        )
    assert_problem(
        await http.get(
            doc_path(edited, "/history"), params={"limit": "0"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.get(
            doc_path(edited, "/history"), params={"limit": "1001"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.get("/workspaces/not-a-uuid", headers=alice), 422, "invalid_message"
    )
    past = assert_problem(
        await http.get(content, params={"seq": "6"}, headers=alice), 404, "not_found"
    )
    assert "past the head" in past["detail"]
    assert_problem(await http.get("/nowhere", headers=alice), 404, "not_found")
    assert_problem(
        await http.delete("/workspaces", headers=alice), 405, "unexpected_message"
    )


async def test_bad_bodies_get_typed_problems_and_store_nothing(
    http: httpx.AsyncClient, server: Tandem, edited: dict[str, Any]
) -> None:
    before = (
        await count(server, "workspaces"),
        await count(server, "shared_documents"),
    )
    alice, docs = bearer("alice"), f"/workspaces/{edited['workspace_id']}/documents"
    json_type = {**alice, "Content-Type": "application/json"}
    assert_problem(
        await http.post("/workspaces", content=b'{"name": ', headers=json_type),
        400,
        "bad_json",
    )
    assert_problem(
        await http.post("/workspaces", json={}, headers=alice), 422, "invalid_message"
    )
    extra = assert_problem(
        await http.post(
            "/workspaces", json={"name": "x", "owner": "eve"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    assert extra["details"]["errors"][0]["field"] == "body.owner"
    assert_problem(
        await http.post(
            "/workspaces", json={"name": "x", "visibility": "secret"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.post(
            "/workspaces", json={"name": "x", "max_members": "5"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.post(docs, json={"title": "   "}, headers=alice),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.post(
            docs, json={"title": "t", "content_type": "pdf"}, headers=alice
        ),
        422,
        "invalid_message",
    )
    form = await http.post(
        "/workspaces",
        content=b"name=x",
        headers={**alice, "Content-Type": "text/plain"},
    )
    assert (
        assert_problem(form, 415, "unsupported_frame")["detail"]
        == "the body must be application/json, not text/plain"
    )
    big = {"name": "x", "workspace_type": "y" * MAX_BODY}
    too_large = assert_problem(
        await http.post("/workspaces", json=big, headers=alice), 413, "limit_exceeded"
    )
    assert too_large["details"] == {"limit": "http_max_body_bytes", "value": MAX_BODY}

    async def chunked() -> AsyncIterator[
        bytes
    ]:  # no Content-Length: counted while read
        for _ in range(MAX_BODY // 512 + 2):
            yield b" " * 512

    assert_problem(
        await http.post("/workspaces", content=chunked(), headers=json_type),
        413,
        "limit_exceeded",
    )
    other = bearer("alice", TENANT_B)
    assert_problem(
        await http.post(docs, json={"title": "t"}, headers=other), 404, "not_found"
    )
    assert (
        await count(server, "workspaces"),
        await count(server, "shared_documents"),
    ) == before


async def test_a_viewer_may_read_but_not_create_documents(
    http: httpx.AsyncClient, server: Tandem
) -> None:
    ws = (
        await http.post(
            "/workspaces",
            json={"name": "Viewers", "visibility": "private"},
            headers=bearer("erin"),
        )
    ).json()
    ws_id = ws["workspace"]["workspace_id"]
    env = server_env(DATABASE_URL=server.db.admin_url)
    await run(
        [
            TANDEM,
            "member",
            "add",
            "--tenant",
            str(TENANT_A),
            ws_id,
            "victor",
            "--role",
            "viewer",
        ],
        env,
    )
    before = await count(server, "shared_documents")
    assert (
        await http.get(f"/workspaces/{ws_id}/documents", headers=bearer("victor"))
    ).status_code == 200
    refused = await http.post(
        f"/workspaces/{ws_id}/documents", json={"title": "t"}, headers=bearer("victor")
    )
    assert_problem(refused, 403, "forbidden")
    assert await count(server, "shared_documents") == before
