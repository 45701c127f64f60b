"""Writes over /v1 (docs/http.md) against a real `tandem serve` and PostgreSQL: an SDK agent and
an HTTP client edit one document and each sees the other's edits; If-Match with a stale head is
412 and stores nothing; a viewer's writes, bad updates and bad edits are typed problems that
store nothing; workspace state by JSON Patch and merge patch with If-Match."""

from __future__ import annotations

import httpx
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, eventually
from tests.e2e.editors import Editors, base_url, tok
from tests.e2e.http_peers import (  # noqa: F401 (fixtures)
    FAST,
    assert_problem,
    bearer,
    count,
    http,
    run,
    server,
    tandem_client,
)
from tests.serverproc import TANDEM, server_env

OCTET = {"Content-Type": "application/octet-stream"}


async def test_an_sdk_agent_and_an_http_client_edit_one_document(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
) -> None:
    assert server.server is not None
    url = f"ws://{server.server.host}:{server.server.port}/ws"
    async with tandem_client.connect(
        url, wsclient.token(TENANT_A, "alice"), **FAST
    ) as alice:
        info = await alice.create_workspace("Writes", visibility="team")
        ws = await alice.join(info.workspace_id)
        doc = await ws.open("shared")
        doc.text.insert(0, "Hello world")
        await doc.flushed(10)
        path = f"/workspaces/{info.workspace_id}/documents/{doc.doc_id}"
        wrote = await http.post(
            path + "/edits",
            json=[
                {"insert": {"index": 5, "text": ", 😀"}},
                {"delete": {"index": 0, "length": 1}},
            ],
            headers=bearer("bob"),
        )
        assert wrote.status_code == 201, wrote.text
        seq = wrote.json()["seq"]
        assert wrote.headers["etag"] == f'"{seq}"' and wrote.json()["changed"] is True
        await doc.wait_for(lambda d: str(d.text) == "ello, 😀 world", 10)
        doc.text.insert(len(doc.text), "!")
        await doc.flushed(10)
        got = await http.get(path + "/content", headers=bearer("bob"))
        assert got.text == "ello, 😀 world!"
        # A stale If-Match: 412, nothing stored.
        before = await count(server, "document_operations")
        stale = await http.post(
            path + "/edits", json=[{"replace": {"text": "x"}}],
            headers={**bearer("bob"), "If-Match": f'"{seq}"'},
        )  # fmt: skip
        assert assert_problem(stale, 412, "conflict")["details"]["head_seq"] > seq
        assert await count(server, "document_operations") == before
        head = int(got.headers["etag"].strip('"'))
        # A replace at the right head: minimal, attributed to bob, seen by alice.
        done = await http.post(
            path + "/edits", json=[{"replace": {"text": "Hello, 😀 world!"}}],
            headers={**bearer("bob"), "If-Match": f'"{head}"'},
        )  # fmt: skip
        assert done.status_code == 201 and done.json()["seq"] == head + 1
        await doc.wait_for(lambda d: str(d.text) == "Hello, 😀 world!", 10)
        same = await http.post(
            path + "/edits", json=[{"replace": {"text": "Hello, 😀 world!"}}], headers=bearer("bob")
        )  # fmt: skip
        assert same.status_code == 200 and same.json() == {
            "doc_id": str(doc.doc_id), "seq": head + 1, "changed": False
        }  # fmt: skip
        blame = (await http.get(path + "/blame", headers=bearer("bob"))).json()
        assert {s["agent_id"] for s in blame["spans"]} == {"alice", "bob"}
        # A Yjs update made by a client holding the served state.
        state = await http.get(
            path + "/content",
            headers={**bearer("bob"), "Accept": "application/octet-stream"},
        )
        mine = Doc()
        mine["content"] = text = Text()
        mine.apply_update(state.content)
        before_sv = mine.get_state()
        text += " Yjs"
        posted = await http.post(
            path + "/updates",
            content=mine.get_update(before_sv),
            headers={**bearer("bob"), **OCTET},
        )
        assert posted.status_code == 201, posted.text
        await doc.wait_for(lambda d: str(d.text) == "Hello, 😀 world! Yjs", 10)


async def test_bad_writes_are_typed_problems_that_store_nothing(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
) -> None:
    ws = (
        await http.post(
            "/workspaces",
            json={"name": "BadWrites", "visibility": "private"},
            headers=bearer("erin"),
        )
    ).json()
    ws_id = ws["workspace"]["workspace_id"]
    doc = (
        await http.post(
            f"/workspaces/{ws_id}/documents",
            json={"title": "d"},
            headers=bearer("erin"),
        )
    ).json()
    path = f"/workspaces/{ws_id}/documents/{doc['doc_id']}"
    env = server_env(DATABASE_URL=server.db.admin_url)
    await run(
        [
            TANDEM,
            "member",
            "add",
            "--tenant",
            str(TENANT_A),
            ws_id,
            "vera",
            "--role",
            "viewer",
        ],
        env,
    )
    before = await count(server, "document_operations")
    edit = [{"insert": {"index": 0, "text": "x"}}]
    assert_problem(
        await http.post(path + "/edits", json=edit, headers=bearer("vera")),
        403,
        "forbidden",
    )
    assert_problem(
        await http.post(path + "/edits", json=edit, headers=bearer("mallory")),
        403,
        "forbidden",
    )
    assert_problem(await http.post(path + "/edits", json=[{"insert": {"index": 3, "text": "x"}}],
                                   headers=bearer("erin")), 422, "invalid_message")  # fmt: skip
    assert_problem(
        await http.post(path + "/edits", json=[{"move": {}}], headers=bearer("erin")),
        422,
        "invalid_message",
    )
    assert_problem(
        await http.post(path + "/edits", json=[], headers=bearer("erin")),
        422,
        "invalid_message",
    )
    assert_problem(await http.post(path + "/updates", content=b"\x01\x02garbage", headers={**bearer("erin"), **OCTET}),
                   422, "invalid_update")  # fmt: skip
    assert_problem(
        await http.post(path + "/updates", json=edit, headers=bearer("erin")),
        415,
        "unsupported_frame",
    )
    assert_problem(await http.post(path + "/edits", content=b"x", headers={**bearer("erin"), **OCTET}),
                   415, "unsupported_frame")  # fmt: skip
    assert_problem(await http.post(path + "/edits", json=edit, headers={**bearer("erin"), "If-Match": "abc"}),
                   422, "invalid_message")  # fmt: skip
    assert await count(server, "document_operations") == before


async def test_workspace_state_by_json_patch_and_merge_patch_with_if_match(
    http: httpx.AsyncClient,  # noqa: F811
) -> None:
    ws = (
        await http.post("/workspaces", json={"name": "State"}, headers=bearer("sam"))
    ).json()
    path = f"/workspaces/{ws['workspace']['workspace_id']}/state"
    got = await http.get(path, headers=bearer("sam"))
    version = int(got.headers["etag"].strip('"'))
    patch = {
        **bearer("sam"),
        "Content-Type": "application/json-patch+json",
        "If-Match": f'"{version}"',
    }
    done = await http.patch(
        path,
        content=b'[{"op": "add", "path": "/a", "value": {"b": 1, "c": 2}}]',
        headers=patch,
    )
    assert done.status_code == 200 and done.json()["state"] == {"a": {"b": 1, "c": 2}}
    assert done.headers["etag"] == f'"{version + 1}"'
    assert_problem(await http.patch(path, content=b'[{"op": "add", "path": "/z", "value": 1}]', headers=patch),
                   412, "conflict")  # fmt: skip
    merge = {**bearer("sam"), "Content-Type": "application/merge-patch+json"}
    merged = await http.patch(
        path, content=b'{"a": {"b": null, "d": 3}}', headers=merge
    )
    assert (
        merged.json()["state"] == {"a": {"c": 2, "d": 3}}
        and merged.json()["version"] == version + 2
    )
    bad = {**bearer("sam"), "Content-Type": "application/json-patch+json"}
    assert_problem(
        await http.patch(
            path, content=b'[{"op": "remove", "path": "/nope"}]', headers=bad
        ),
        422,
        "invalid_patch",
    )
    assert_problem(
        await http.patch(path, content=b'{"op": 1}', headers=bad), 422, "invalid_patch"
    )
    assert_problem(await http.patch(path, content=b"[", headers=bad), 400, "bad_json")
    assert_problem(
        await http.patch(path, json={"a": 1}, headers=bearer("sam")),
        415,
        "unsupported_frame",
    )
    assert (await http.get(path, headers=bearer("sam"))).json()[
        "version"
    ] == version + 2


async def test_a_whole_text_replace_keeps_a_yjs_editors_concurrent_insertions(
    http: httpx.AsyncClient,  # noqa: F811
    server: Tandem,  # noqa: F811
    editors: Editors,
) -> None:
    """A stock Yjs editor (Node, y-websocket) types while offline, so its insertions are
    concurrent with an HTTP replace of the whole text made meanwhile; once it reconnects both
    sides hold the replace's change and every character it typed (the replace became the
    minimal edit of the title line, not a delete of everything)."""
    ws_id = (
        await http.post(
            "/workspaces",
            json={"name": "Replace", "visibility": "team"},
            headers=bearer("alice"),
        )
    ).json()["workspace"]["workspace_id"]
    doc_id = (
        await http.post(
            f"/workspaces/{ws_id}/documents",
            json={"title": "r"},
            headers=bearer("alice"),
        )
    ).json()["doc_id"]
    path = f"/workspaces/{ws_id}/documents/{doc_id}"
    start = "Title: draft\nbody line\n"
    first = await http.post(
        path + "/edits",
        json=[{"insert": {"index": 0, "text": start}}],
        headers=bearer("alice"),
    )
    assert first.status_code == 201, first.text
    editor = await editors.start(base_url(server), ws_id, doc_id, tok("ed"))
    await editor.wait_for(lambda c: c.text == start)
    await editor.send(cmd="disconnect")
    await editor.wait_for(lambda c: len(c.closes) > 0)
    await editor.type("typed offline")
    await editor.insert(">> ", 0)
    replaced = await http.post(
        path + "/edits",
        json=[{"replace": {"text": "Title: FINAL\nbody line\n"}}],
        headers=bearer("alice"),
    )
    assert replaced.status_code == 201, replaced.text
    await editor.send(cmd="reconnect", token=tok("ed"))
    expected = ">> Title: FINAL\nbody line\ntyped offline"
    await editor.wait_for(lambda c: c.text == expected)

    async def served() -> bool:
        return (
            await http.get(path + "/content", headers=bearer("alice"))
        ).text == expected

    await eventually(served)  # the editor's updates commit, then the head serves them
