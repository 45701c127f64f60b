"""The HTTP API's reads (docs/http.md) against a real `tandem serve` and PostgreSQL: an SDK
agent edits a document over /ws and HTTP reads it back (content at the head, at a seq, at a
time, as a Yjs update; ETag and 304; history pages; blame), workspaces and documents listed,
created and got, and the OpenAPI document the app serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from pycrdt import Doc, Text

from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem
from tests.e2e.http_peers import bearer, doc_path, run
from tests.e2e.http_peers import edited, http, server  # noqa: F401 (fixtures)
from tests.serverproc import TANDEM, server_env

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


async def test_the_served_openapi_document_is_the_apps(http: httpx.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["servers"] == [{"url": "/v1"}]
    assert "/workspaces/{workspace_id}/documents/{doc_id}/content" in spec["paths"]
