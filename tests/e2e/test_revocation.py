"""Revocation takes effect now (docs/protocol.md#23, docs/http.md "Revoking tokens"): a revoked
token's sessions on two nodes, on /ws and /yjs, are closed with `token_revoked` (4401); the
token is refused from then on at connect and over HTTP; revoking an agent revokes all its tokens
but not one issued after; bad input is a typed problem and stores nothing. Real nodes, real
PostgreSQL, real y-websocket editors (tests/node/yclient.mjs), the real `tandem` command.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
import tandem_client

from server.core.auth import issue_token
from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import admin_fetch, shared_doc
from tests.e2e.editors import Editors, YClient, tok
from tests.e2e.http_peers import FAST
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import REPO, TANDEM, ServerProcess, server_env

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestDatabase

CLOSE_WAIT_S = (
    10.0  # generous: the server closes within about a second; the measure is printed
)
REVOKED = (4401, "token_revoked")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def base(node: ServerProcess) -> str:
    return f"http://{node.host}:{node.port}"


def yjs_base(node: ServerProcess) -> str:
    return f"ws://{node.host}:{node.port}"


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["type"] == f"urn:tandem:error:{code}"
    return body


async def revocation_rows(db: TestDatabase) -> int:
    rows = await admin_fetch(
        db,
        "SELECT (SELECT count(*) FROM token_revocations) + (SELECT count(*) FROM agent_token_revocations) AS n",
    )
    return int(rows[0]["n"])


async def closed_with(
    agent: wsclient.Agent,
) -> tuple[dict[str, Any], tuple[int | None, str | None]]:
    """The `session.closing` an agent got, and its close code and reason."""
    closing = await agent.event(
        lambda f: f["type"] == "session.closing", timeout_s=CLOSE_WAIT_S
    )
    return closing, await agent.wait_closed(CLOSE_WAIT_S)


async def editor_closed(editor: YClient) -> tuple[int, str] | None:
    await editor.wait_for(lambda c: c.closed is not None, timeout_s=CLOSE_WAIT_S)
    return editor.closed


async def test_a_revoked_token_is_closed_on_two_nodes_and_both_endpoints_and_refused_after(
    nodes: Nodes, db: TestDatabase, editors: Editors, http: httpx.AsyncClient
) -> None:
    one, two = nodes.start(2)
    revoked, other = (
        tok("ed"),
        tok("ed"),
    )  # two tokens of one agent: only the first is revoked
    alice = wsclient.Agent(nodes.url(0), tok("alice"))
    ed_ws = [wsclient.Agent(nodes.url(i), revoked) for i in (0, 1)]
    ed_other = wsclient.Agent(nodes.url(0), other)
    for agent in (alice, *ed_ws, ed_other):
        await agent.connect()
    try:
        ws_id, doc_id = await shared_doc(alice, *ed_ws)
        ed_yjs = [
            await editors.start(yjs_base(node), ws_id, doc_id, revoked)
            for node in (one, two)
        ]

        started = time.monotonic()
        response = await http.post(
            f"{base(two)}/v1/tokens/revoke",
            headers=bearer(revoked),
            json={"jti": jti_of(revoked)},
        )
        assert response.status_code == 200, response.text
        assert (
            response.json()["jti"] == jti_of(revoked)
            and response.json()["agent_id"] == "ed"
        )
        after_s: dict[str, float] = {}
        for name, agent in (
            ("/ws node-1 (NOTIFY)", ed_ws[0]),
            ("/ws node-2 (revoking node)", ed_ws[1]),
        ):
            closing, close = await closed_with(agent)
            after_s[name] = time.monotonic() - started
            assert (closing["code"], closing["reason"]) == REVOKED and close == REVOKED
        for name, editor in (
            ("/yjs node-1 (NOTIFY)", ed_yjs[0]),
            ("/yjs node-2 (revoking node)", ed_yjs[1]),
        ):
            assert await editor_closed(editor) == REVOKED
            after_s[name] = time.monotonic() - started
        print(
            "revoked sessions closed after:",
            {k: f"{v * 1000:.0f} ms" for k, v in after_s.items()},
        )

        # The agent's other token and other agents are untouched.
        assert (await ed_other.request("workspace.list"))["type"] == "workspace.list.ok"
        assert (await alice.request("workspace.list"))["type"] == "workspace.list.ok"

        # Refused from now on: at connect on both endpoints of both nodes, and over HTTP.
        for node in (one, two):
            refusal = await wsclient.refused(f"{yjs_base(node)}/ws", revoked)
            assert (refusal.code, refusal.reason) == REVOKED
            assert refusal.frames[-1]["type"] == "session.closing"
            error = next(f for f in refusal.frames if f["type"] == "error")
            assert error["code"] == "token_revoked" and error["details"] == {
                "reason": "revoked"
            }
            again = await editors.start(
                yjs_base(node), ws_id, doc_id, revoked, synced=False
            )
            assert await editor_closed(again) == REVOKED
            body = assert_problem(
                await http.get(f"{base(node)}/v1/workspaces", headers=bearer(revoked)),
                401,
                "token_revoked",
            )
            assert body["detail"] == "token_revoked" and body["details"] == {
                "reason": "revoked"
            }
            assert (
                await http.get(f"{base(node)}/v1/workspaces", headers=bearer(other))
            ).status_code == 200
    finally:
        for agent in (alice, *ed_ws, ed_other):
            await agent.close()


def revoke_cli(db: TestDatabase, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TANDEM, "token", "revoke", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
        env=server_env(DATABASE_URL=db.admin_url, TANDEM_JWT_SECRET=None, REDIS_URL=None),
    )  # fmt: skip


async def test_revoking_an_agent_revokes_all_its_tokens_but_not_one_issued_after(
    nodes: Nodes, db: TestDatabase, editors: Editors, http: httpx.AsyncClient
) -> None:
    one, two = nodes.start(2)
    first, second = tok("ed"), tok("ed")
    now = datetime.now(UTC)
    without_id = jwt.encode(  # a token from before tokens had ids
        {"tenant": str(TENANT_A), "sub": "ed", "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 600},
        wsclient.SECRET, algorithm="HS256",
    )  # fmt: skip
    other_tenant = tok("ed", tenant=TENANT_B)  # the same agent id in another tenant
    alice = wsclient.Agent(nodes.url(0), tok("alice"))
    eds = [
        wsclient.Agent(nodes.url(i), t)
        for i, t in ((0, first), (1, second), (1, without_id))
    ]
    ed_b = wsclient.Agent(nodes.url(0), other_tenant)
    for agent in (alice, *eds, ed_b):
        await agent.connect()
    try:
        ws_id, doc_id = await shared_doc(alice, *eds)
        editor = await editors.start(yjs_base(one), ws_id, doc_id, second)

        started = time.monotonic()
        done = revoke_cli(db, "--tenant", str(TENANT_A), "--agent", "ed", "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["agent_id"] == "ed" and shown["tenant_id"] == str(TENANT_A)
        for agent in eds:
            closing, close = await closed_with(agent)
            assert (closing["code"], closing["reason"]) == REVOKED and close == REVOKED
        assert await editor_closed(editor) == REVOKED
        print(f"agent revocation (tandem token revoke) closed 4 sessions after {(time.monotonic() - started) * 1000:.0f} ms"
              " (the command's own start included)")  # fmt: skip
        assert (await ed_b.request("workspace.list"))["type"] == "workspace.list.ok"

        # A token issued after the cut-off works on both endpoints and over HTTP; the old ones do not.
        cut_off = datetime.fromisoformat(shown["revoked_before"])
        fresh = issue_token(
            wsclient.SECRET, TENANT_A, "ed", 600, now=max(cut_off, datetime.now(UTC))
        )
        for node in (one, two):
            for old in (first, second, without_id):
                assert (
                    await wsclient.refused(f"{yjs_base(node)}/ws", old)
                ).reason == "token_revoked"
                assert_problem(
                    await http.get(f"{base(node)}/v1/workspaces", headers=bearer(old)),
                    401,
                    "token_revoked",
                )
            async with wsclient.Agent(f"{yjs_base(node)}/ws", fresh) as again:
                assert (await again.request("workspace.list"))[
                    "type"
                ] == "workspace.list.ok"
            assert (
                await http.get(f"{base(node)}/v1/workspaces", headers=bearer(fresh))
            ).status_code == 200
            new_editor = await editors.start(yjs_base(node), ws_id, doc_id, fresh)
            await new_editor.insert("<after>")
            assert new_editor.closed is None

        # A node started later loads the revocation from the database.
        three = nodes.start(1)[0]
        assert (
            await wsclient.refused(f"{yjs_base(three)}/ws", second)
        ).reason == "token_revoked"
        assert (
            await http.get(f"{base(three)}/v1/workspaces", headers=bearer(fresh))
        ).status_code == 200
    finally:
        for agent in (alice, *eds, ed_b):
            await agent.close()


async def test_bad_revocations_get_typed_errors_and_store_nothing(
    nodes: Nodes, db: TestDatabase, http: httpx.AsyncClient
) -> None:
    (node,) = nodes.start(1)
    token = tok("ed")
    url = f"{base(node)}/v1/tokens/revoke"
    cases: list[tuple[Any, int, str]] = [
        (
            {"jti": str(uuid.uuid4())},
            404,
            "not_found",
        ),  # an id the server cannot know is this agent's
        (
            {"jti": jti_of(tok("ed"))},
            404,
            "not_found",
        ),  # another token of the same agent: by agent_id
        ({"agent_id": "alice"}, 403, "forbidden"),  # another agent of the tenant
        ({"jti": "nope"}, 422, "invalid_message"),
        ({"agent_id": ""}, 422, "invalid_message"),
        ({"agent_id": "x" * 256}, 422, "invalid_message"),
        ({}, 422, "invalid_message"),
        ({"jti": jti_of(token), "agent_id": "ed"}, 422, "invalid_message"),
        ({"jti": jti_of(token), "extra": 1}, 422, "invalid_message"),
        ([jti_of(token)], 422, "invalid_message"),
    ]
    for body, status, code in cases:
        assert_problem(
            await http.post(url, headers=bearer(token), json=body), status, code
        )
    json_type = {**bearer(token), "Content-Type": "application/json"}
    assert_problem(
        await http.post(url, headers=json_type, content=b"{"), 400, "bad_json"
    )
    assert_problem(
        await http.post(url, headers=bearer(token), content=b"{}"),
        415,
        "unsupported_frame",
    )
    assert_problem(await http.post(url, json={"agent_id": "ed"}), 401, "unauthorized")
    # The same agent id in another tenant is another agent: its token revokes only its own.
    other_tenant = tok("ed", tenant=TENANT_B)
    assert_problem(
        await http.post(url, headers=bearer(other_tenant), json={"jti": jti_of(token)}),
        404,
        "not_found",
    )
    assert await revocation_rows(db) == 0
    async with wsclient.Agent(nodes.url(0), token) as still:
        assert (await still.request("workspace.list"))["type"] == "workspace.list.ok"

    # The operator's command: malformed or missing arguments, one line and nothing stored.
    for args, exit_code, says in (
        (["--tenant", str(TENANT_A)], 1, "give --jti ID or --agent AGENT"),
        (["--tenant", str(TENANT_A), "--jti", "nope"], 2, "--jti"),
        (["--tenant", "nope", "--agent", "ed"], 2, "--tenant"),
        (["--tenant", str(TENANT_A), "--agent", ""], 2, "--agent"),
    ):
        done = revoke_cli(db, *args)
        assert done.returncode == exit_code and says in done.stderr, (
            args,
            done.returncode,
            done.stderr,
        )
    assert await revocation_rows(db) == 0

    # Revoking one's own token: accepted, then the token is refused, for this call too. The
    # operator's command takes any well-formed id, twice as once.
    response = await http.post(url, headers=bearer(token), json={"jti": jti_of(token)})
    assert response.status_code == 200, response.text
    assert_problem(
        await http.post(url, headers=bearer(token), json={"jti": jti_of(token)}),
        401,
        "token_revoked",
    )
    expires = (await admin_fetch(db, "SELECT expires_at FROM token_revocations"))[0][
        "expires_at"
    ]
    assert abs(expires - (datetime.now(UTC) + timedelta(seconds=3600))) < timedelta(
        seconds=120
    )
    by_operator = jti_of(tok("ed"))
    for _ in range(2):
        done = revoke_cli(db, "--tenant", str(TENANT_A), "--jti", by_operator)
        assert (
            done.returncode == 0 and done.stdout == f"revoked token {by_operator}\n"
        ), done.stderr
    assert await revocation_rows(db) == 2


async def test_the_sdk_raises_token_revoked_for_a_revoked_fixed_token(
    nodes: Nodes, db: TestDatabase, http: httpx.AsyncClient
) -> None:
    (node,) = nodes.start(1)
    token = tok("ed")
    client = tandem_client.connect(nodes.url(0), token, **FAST)
    await client.start()
    try:
        assert await client.workspaces() == []
        response = await http.post(
            f"{base(node)}/v1/tokens/revoke",
            headers=bearer(token),
            json={"agent_id": "ed"},
        )
        assert response.status_code == 200, response.text
        with pytest.raises(tandem_client.TokenRevoked) as revoked:
            async with asyncio.timeout(CLOSE_WAIT_S):
                while True:  # each call before the close arrives may still be answered
                    await client.ping()
        assert revoked.value.close_code == 4401
    finally:
        await client.close()
    with pytest.raises(tandem_client.TokenRevoked):
        await tandem_client.connect(nodes.url(0), token, **FAST).start()
