"""The HTTP API under /v1 (docs/http.md) against a real `tandem serve` process and PostgreSQL: an
SDK agent edits a document over /ws and HTTP reads it back (content at the head, at a seq, at a
time, as a Yjs update; ETag and 304; history pages; blame), with the WebSocket endpoints' token,
tenant and workspace rules, and every bad input answered by a typed problem that stores nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import Tandem, admin_fetch
from tests.serverproc import REPO, TANDEM, server_env

if (
    str(REPO / "clients") not in sys.path
):  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client

PROBLEM = "application/problem+json"
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
MAX_BODY = 4096


def bearer(agent: str, tenant: uuid.UUID = TENANT_A, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {wsclient.token(tenant, agent, **kwargs)}"}


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start(TANDEM_HTTP_MAX_BODY_BYTES=str(MAX_BODY))
    yield module_tandem


@pytest.fixture
async def http(server: Tandem) -> AsyncIterator[httpx.AsyncClient]:
    assert server.server is not None
    async with httpx.AsyncClient(
        base_url=f"{server.server.base_url}/v1", timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def edited(server: Tandem) -> dict[str, Any]:
    """Alice's team workspace with one document she edited in five acknowledged steps over /ws."""
    assert server.server is not None
    url = f"ws://{server.server.host}:{server.server.port}/ws"
    async with tandem_client.connect(
        url, wsclient.token(TENANT_A, "alice"), **FAST
    ) as alice:
        info = await alice.create_workspace("HTTP", visibility="team")
        ws = await alice.join(info.workspace_id)
        doc = await ws.open("notes")
        texts = [""]
        for word in ("Hello", ", world", "!", " Bye", "."):
            doc.text.insert(len(doc.text), word)
            await doc.flushed(10)
            texts.append(str(doc.text))
            await asyncio.sleep(0.01)  # distinct commit times for ?at=
        assert doc.seq == 5
    return {"workspace_id": info.workspace_id, "doc_id": doc.doc_id, "texts": texts}


def doc_path(edited: dict[str, Any], tail: str = "") -> str:
    return f"/workspaces/{edited['workspace_id']}/documents/{edited['doc_id']}{tail}"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert (
        body["type"] == f"urn:tandem:error:{code}" and body["title"] and body["detail"]
    )
    return body


async def run(
    command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """A `tandem` command, off the event loop (the server answers meanwhile)."""
    return await asyncio.to_thread(
        subprocess.run,
        command,
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )


async def count(server: Tandem, table: str) -> int:
    rows = await admin_fetch(
        server.db, f"SELECT count(*) AS n FROM {table}"
    )  # a constant table name
    return int(rows[0]["n"])


# --- reading documents -----------------------------------------------------------------------


async def test_content_at_head_is_what_the_sdk_agent_wrote_with_the_head_as_etag(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    r = await http.get(doc_path(edited, "/content"), headers=bearer("alice"))
    assert r.status_code == 200, r.text
    assert r.text == "Hello, world! Bye." == edited["texts"][5]
    assert (
        r.headers["content-type"] == "text/plain; charset=utf-8"
        and r.headers["etag"] == '"5"'
    )
    meta = (await http.get(doc_path(edited), headers=bearer("alice"))).json()
    assert (
        meta["head_seq"] == 5
        and meta["title"] == "notes"
        and meta["created_by"] == "alice"
    )


async def test_content_at_each_seq_equals_tandem_replay(
    http: httpx.AsyncClient, server: Tandem, edited: dict[str, Any]
) -> None:
    env = server_env(DATABASE_URL=server.db.admin_url)
    for seq in range(6):
        r = await http.get(
            doc_path(edited, "/content"), params={"seq": seq}, headers=bearer("alice")
        )
        assert r.status_code == 200 and r.headers["etag"] == f'"{seq}"'
        assert r.text == edited["texts"][seq]
        command = [
            TANDEM,
            "replay",
            edited["doc_id"],
            "--tenant",
            str(TENANT_A),
            "--at-seq",
            str(seq),
        ]
        replayed = await run(command, env)
        assert r.text == replayed.stdout.decode()


async def test_content_at_a_time_and_as_a_yjs_update(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    before = await http.get(
        doc_path(edited, "/content"),
        params={"at": "2000-01-01T00:00:00Z"},
        headers=bearer("alice"),
    )
    assert (before.text, before.headers["etag"]) == ("", '"0"')
    now = datetime.now(UTC).isoformat()
    at_now = await http.get(
        doc_path(edited, "/content"), params={"at": now}, headers=bearer("alice")
    )
    assert (at_now.text, at_now.headers["etag"]) == (edited["texts"][5], '"5"')
    headers = {**bearer("alice"), "Accept": "application/octet-stream"}
    update = await http.get(
        doc_path(edited, "/content"), params={"seq": 3}, headers=headers
    )
    assert update.headers["content-type"] == "application/octet-stream"
    ydoc = Doc()
    ydoc["content"] = text = Text()
    ydoc.apply_update(update.content)
    assert str(text) == edited["texts"][3]


async def test_if_none_match_with_the_served_seq_gets_304(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    path = doc_path(edited, "/content")
    same = await http.get(path, headers={**bearer("alice"), "If-None-Match": '"5"'})
    assert (
        same.status_code == 304
        and same.headers["etag"] == '"5"'
        and same.content == b""
    )
    older = await http.get(
        path, headers={**bearer("alice"), "If-None-Match": '"4", W/"3"'}
    )
    assert older.status_code == 200 and older.text == edited["texts"][5]
    at_seq = await http.get(
        path, params={"seq": 2}, headers={**bearer("alice"), "If-None-Match": 'W/"2"'}
    )
    assert at_seq.status_code == 304


async def test_history_pages_follow_the_next_link_to_the_end(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    seen: list[int] = []
    url: str | None = doc_path(edited, "/history?limit=2")
    pages = 0
    while url is not None and pages < 10:
        r = await http.get(url, headers=bearer("alice"))
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [op["seq"] for op in page["operations"]]
        assert all(
            op["agent_id"] == "alice" and op["size_bytes"] > 0
            for op in page["operations"]
        )
        url = page["next"]
        if url is not None:
            assert (
                r.headers["link"] == f'<{url}>; rel="next"'
                and page["next_after_seq"] == seen[-1]
            )
        pages += 1
    assert seen == [1, 2, 3, 4, 5] and pages == 3
    tail = await http.get(
        doc_path(edited, "/history"), params={"after_seq": 4}, headers=bearer("alice")
    )
    assert [op["seq"] for op in tail.json()["operations"]] == [5] and tail.json()[
        "next"
    ] is None


async def test_blame_names_the_agent_of_every_run(
    http: httpx.AsyncClient, edited: dict[str, Any]
) -> None:
    r = await http.get(doc_path(edited, "/blame"), headers=bearer("alice"))
    assert r.status_code == 200
    body = r.json()
    assert (
        body["seq"] == 5
        and "".join(s["text"] for s in body["spans"]) == edited["texts"][5]
    )
    assert {s["agent_id"] for s in body["spans"]} == {"alice"}
    at_two = (
        await http.get(
            doc_path(edited, "/blame"), params={"seq": 2}, headers=bearer("alice")
        )
    ).json()
    assert "".join(s["text"] for s in at_two["spans"]) == edited["texts"][2]


# --- workspaces and documents ----------------------------------------------------------------


async def test_workspaces_and_documents_list_create_and_get(
    http: httpx.AsyncClient,
) -> None:
    created = await http.post(
        "/workspaces",
        json={"name": "Over HTTP", "visibility": "private"},
        headers=bearer("carol"),
    )
    assert created.status_code == 201, created.text
    ws = created.json()["workspace"]
    assert (
        created.json()["role"] == "owner"
        and created.headers["location"] == f"/v1/workspaces/{ws['workspace_id']}"
    )
    listed = (await http.get("/workspaces", headers=bearer("carol"))).json()
    assert ws["workspace_id"] in [w["workspace_id"] for w in listed["workspaces"]]
    got = await http.get(f"/workspaces/{ws['workspace_id']}", headers=bearer("carol"))
    assert got.json() == {"workspace": ws, "role": "owner"}
    doc = await http.post(
        f"/workspaces/{ws['workspace_id']}/documents",
        json={"title": "cfg", "content_type": "json"},
        headers=bearer("carol"),
    )
    assert (
        doc.status_code == 201
        and doc.json()["head_seq"] == 0
        and doc.json()["content_type"] == "json"
    )
    docs = (
        await http.get(
            f"/workspaces/{ws['workspace_id']}/documents", headers=bearer("carol")
        )
    ).json()
    assert [d["doc_id"] for d in docs["documents"]] == [doc.json()["doc_id"]] and docs[
        "truncated"
    ] is False
    empty = await http.get(
        f"/workspaces/{ws['workspace_id']}/documents/{doc.json()['doc_id']}/content",
        headers=bearer("carol"),
    )
    assert (
        empty.status_code == 200 and empty.text == "" and empty.headers["etag"] == '"0"'
    )


async def test_private_workspace_is_forbidden_to_a_non_member_and_a_team_one_admits(
    http: httpx.AsyncClient, edited: dict[str, Any]
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
    # Alice's workspace is a team one: another agent of the tenant is admitted, as workspace.join admits.
    r = await http.get(doc_path(edited, "/content"), headers=bearer("dave"))
    assert r.status_code == 200 and r.text == edited["texts"][5]


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


async def test_the_served_openapi_document_is_the_apps(http: httpx.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["servers"] == [{"url": "/v1"}]
    assert "/workspaces/{workspace_id}/documents/{doc_id}/content" in spec["paths"]
