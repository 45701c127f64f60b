"""Webhooks (docs/http.md, "Webhooks") against real `tandem serve` processes and a real HTTP
receiver on a loopback port: retries with every attempt seen, signatures checked with the
Standard Webhooks library, order per endpoint, nothing from a rolled-back change, at least once
across a kill -9, one delivery per attempt with two nodes, and typed refusals storing nothing."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from server.db import store
from server.db.store import Q
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import Tandem, admin_fetch, eventually, typed_history
from tests.e2e.http_peers import assert_problem, bearer
from tests.webhook_receiver import Receiver

# Fast retries and short leases, so a test sees several attempts and a lost lease in seconds.
FAST_HOOKS = {
    "TANDEM_WEBHOOK_BACKOFF_BASE_S": "0.05",
    "TANDEM_WEBHOOK_BACKOFF_MAX_S": "0.2",
    "TANDEM_WEBHOOK_POLL_INTERVAL_S": "0.05",
    "TANDEM_WEBHOOK_TIMEOUT_S": "2",
    "TANDEM_WEBHOOK_LEASE_S": "3",
}
ALICE = bearer("alice")


@pytest.fixture
async def http(tandem: Tandem) -> AsyncIterator[httpx.AsyncClient]:
    server = tandem.start(**FAST_HOOKS)
    async with httpx.AsyncClient(
        base_url=f"{server.base_url}/v1", timeout=30
    ) as client:
        yield client


async def workspace(http: httpx.AsyncClient, headers: dict[str, str] = ALICE) -> str:
    response = await http.post(
        "/workspaces", json={"name": "Hooks", "visibility": "team"}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["workspace"]["workspace_id"])


async def register(
    http: httpx.AsyncClient, ws: str, url: str, *types: str
) -> dict[str, Any]:
    body = {"url": url, "event_types": list(types or ["state.changed"])}
    response = await http.post(f"/workspaces/{ws}/webhooks", json=body, headers=ALICE)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["secret"].startswith("whsec_")
    return created


async def change_state(http: httpx.AsyncClient, ws: str, n: int) -> None:
    for i in range(n):
        response = await http.patch(
            f"/workspaces/{ws}/state",
            content=json.dumps({"step": i}),
            headers={**ALICE, "content-type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text


async def deliveries(
    http: httpx.AsyncClient, ws: str, hook: str
) -> list[dict[str, Any]]:
    response = await http.get(
        f"/workspaces/{ws}/webhooks/{hook}/deliveries", headers=ALICE
    )
    assert response.status_code == 200, response.text
    return list(response.json()["deliveries"])


def verified(receiver: Receiver, secret: str) -> list[Any]:
    """Every request's body, its signature checked by the library (raises on a bad one)."""
    hook = Webhook(secret)
    return [hook.verify(r.body, r.headers) for r in receiver.snapshot()]


def in_order(ids: list[str]) -> bool:
    """Arrivals only repeat the event just sent (a retry) or move to a later one."""
    numbers = [int(i) for i in ids]
    return all(b >= a for a, b in itertools.pairwise(numbers))


async def test_a_receiver_failing_three_times_gets_each_attempt_signed_and_in_order(
    http: httpx.AsyncClient,
) -> None:
    ws = await workspace(http)
    with Receiver(fail_first=3) as receiver:
        hook = await register(http, ws, receiver.url + "/hook")
        await change_state(http, ws, 5)
        await eventually(lambda: len(set(receiver.ok_ids())) == 5, timeout_s=30)
        rows = await eventually(
            lambda: _all_delivered(http, ws, hook["id"], 5), timeout_s=10
        )
        arrivals = Counter(r.headers["webhook-id"] for r in receiver.snapshot())
        assert {str(d["event_id"]): d["attempt"] for d in rows} == dict(arrivals)
        assert (
            sum(arrivals.values()) == 5 + 3
        )  # the first event: three failures, then its success
        assert in_order([r.headers["webhook-id"] for r in receiver.snapshot()])
        bodies = verified(receiver, hook["secret"])
        assert [b["data"]["version"] for b in bodies][-5:] == sorted(
            b["data"]["version"] for b in bodies
        )[-5:]
        assert {b["type"] for b in bodies} == {"state.changed"}
        first = next(d for d in rows if d["attempt"] == 4)
        assert first["last_status_code"] == 200


async def _all_delivered(
    http: httpx.AsyncClient, ws: str, hook: str, n: int
) -> list[dict[str, Any]] | None:
    rows = await deliveries(http, ws, hook)
    return (
        rows
        if len(rows) == n and all(d["status"] == "delivered" for d in rows)
        else None
    )


async def test_document_changes_are_debounced_and_workspace_events_each_sent(
    tandem: Tandem, http: httpx.AsyncClient
) -> None:
    ws = await workspace(http)
    doc = await http.post(
        f"/workspaces/{ws}/documents", json={"title": "Notes"}, headers=ALICE
    )
    doc_id = doc.json()["doc_id"]
    with Receiver(hold_first=True) as receiver:
        types = [
            "document.changed",
            "task.changed",
            "lock.acquired",
            "lock.released",
            "member.changed",
        ]
        hook = await register(http, ws, receiver.url, *types)
        edits = f"/workspaces/{ws}/documents/{doc_id}/edits"
        for i in range(
            8
        ):  # the first is sent (and held); the other seven become one event
            body = [{"insert": {"index": 0, "text": f"{i}"}}]
            assert (await http.post(edits, json=body, headers=ALICE)).status_code == 201
            if i == 0:
                await eventually(receiver.held.is_set, timeout_s=20)
        async with tandem.agent(TENANT_A, "alice") as alice:
            await alice.request("workspace.join", workspace_id=ws)
            await alice.request("task.create", workspace_id=ws, title="Index it")
            lock = (
                await alice.request(
                    "lock.acquire", workspace_id=ws, doc_id=doc_id, ttl_ms=30_000
                )
            )["lock"]
            await alice.request(
                "lock.release", workspace_id=ws, doc_id=doc_id, fence=lock["fence"]
            )
            await alice.request(
                "member.add", workspace_id=ws, agent_id="carol", role="member"
            )
        receiver.release()
        await eventually(lambda: len(receiver.ok_ids()) == 6, timeout_s=30)
        bodies = verified(receiver, hook["secret"])
        assert [b["type"] for b in bodies] == ["document.changed", *types]
        assert [b["data"]["seq"] for b in bodies[:2]] == [1, 8]
        assert bodies[5]["data"]["member"]["agent_id"] == "carol"
        assert in_order(receiver.ok_ids())


async def test_an_endpoint_failing_max_failures_times_in_a_row_is_disabled(
    tandem: Tandem,
) -> None:
    server = tandem.start(**FAST_HOOKS, TANDEM_WEBHOOK_MAX_FAILURES="3")
    async with httpx.AsyncClient(base_url=f"{server.base_url}/v1", timeout=30) as http:
        ws = await workspace(http)
        with Receiver(fail_first=1000) as receiver:
            hook = await register(http, ws, receiver.url)
            await change_state(http, ws, 2)
            path = f"/workspaces/{ws}/webhooks"

            async def disabled() -> dict[str, Any] | None:
                listed = (await http.get(path, headers=ALICE)).json()["webhooks"]
                return None if listed[0]["enabled"] else listed[0]

            endpoint = await eventually(disabled, timeout_s=20)
            assert endpoint["failures"] == 3
            assert endpoint["disabled_reason"] == "3 failed attempts in a row"
            rows = await deliveries(http, ws, hook["id"])
            assert [(d["status"], d["attempt"]) for d in rows] == [
                ("pending", 0),
                ("failed", 3),
            ]
            assert (
                rows[1]["last_status_code"] == 500
                and rows[1]["last_error"] == "HTTP 500"
            )
            # A disabled endpoint gets no delivery of a later event (written with the change).
            await change_state(http, ws, 1)
            assert len(await deliveries(http, ws, hook["id"])) == 2
            ids = {r.headers["webhook-id"] for r in receiver.snapshot()}
            assert ids == {str(rows[1]["event_id"])} and len(receiver.snapshot()) == 3
        # Removing the endpoint removes its delivery log with it.
        assert (
            await http.delete(f"{path}/{hook['id']}", headers=ALICE)
        ).status_code == 204
        left = await admin_fetch(
            tandem.db, "SELECT count(*) AS n FROM webhook_deliveries"
        )
        assert left[0]["n"] == 0


async def test_an_event_past_its_max_age_is_dead_and_the_next_one_goes(
    tandem: Tandem,
) -> None:
    server = tandem.start(
        **FAST_HOOKS, TANDEM_WEBHOOK_MAX_AGE_S="0"
    )  # no retry is ever in time
    async with httpx.AsyncClient(base_url=f"{server.base_url}/v1", timeout=30) as http:
        ws = await workspace(http)
        with Receiver(fail_first=1) as receiver:
            hook = await register(http, ws, receiver.url)
            await change_state(http, ws, 2)
            rows = await eventually(
                lambda: _settled(http, ws, hook["id"], 2), timeout_s=20
            )
            assert [(d["status"], d["attempt"]) for d in rows] == [
                ("delivered", 1),
                ("dead", 1),
            ]
            assert [r.status for r in receiver.snapshot()] == [500, 200]
            listed = (
                await http.get(f"/workspaces/{ws}/webhooks", headers=ALICE)
            ).json()
            assert listed["webhooks"][0]["failures"] == 0  # the delivery ended the run
            assert listed["webhooks"][0]["enabled"]


async def _settled(
    http: httpx.AsyncClient, ws: str, hook: str, n: int
) -> list[dict[str, Any]] | None:
    rows = await deliveries(http, ws, hook)
    return (
        rows
        if len(rows) == n and all(d["status"] in ("delivered", "dead") for d in rows)
        else None
    )


async def test_a_rolled_back_change_never_produces_an_event(
    tandem: Tandem, http: httpx.AsyncClient
) -> None:
    ws = await workspace(http)
    doc = await http.post(
        f"/workspaces/{ws}/documents", json={"title": "Notes"}, headers=ALICE
    )
    assert doc.status_code == 201, doc.text
    doc_id = uuid.UUID(doc.json()["doc_id"])
    with Receiver() as receiver:
        await register(http, ws, receiver.url, "state.changed", "document.changed")
        conn = await asyncpg.connect(tandem.db.app_url)
        try:
            for _ in range(
                3
            ):  # a workspace event and a document append, each rolled back
                tx = conn.transaction()
                await tx.start()
                await conn.execute(Q["set_context"], str(TENANT_A), "alice", None)
                await conn.execute(
                    Q["notify_and_emit"],
                    ["{}"],
                    [uuid.UUID(ws)],
                    ["state.changed"],
                    [json.dumps({"rolled": "back"})],
                )
                op = store.NewOperation("alice", "insert", "{}", typed_history(1)[0])
                assert await store.append_operations(conn, doc_id, [op]) == [1]
                await tx.rollback()
        finally:
            await conn.close()
        await change_state(http, ws, 1)  # committed: the last event this endpoint gets
        await eventually(lambda: receiver.ok_ids(), timeout_s=20)
        bodies = [json.loads(r.body) for r in receiver.snapshot()]
        assert [b["type"] for b in bodies] == ["state.changed"]
        assert bodies[0]["data"]["state"] == {"step": 0}
    rows = await admin_fetch(tandem.db, "SELECT count(*) AS n FROM webhook_outbox")
    assert rows[0]["n"] == 1


async def test_kill_9_mid_delivery_then_restart_delivers_every_committed_event(
    tandem: Tandem, http: httpx.AsyncClient
) -> None:
    ws = await workspace(http)
    with Receiver(hold_first=True) as receiver:
        hook = await register(http, ws, receiver.url)
        await change_state(http, ws, 5)
        await eventually(
            receiver.held.is_set, timeout_s=20
        )  # the node is posting event 1 now
        tandem.restart(kill=True)
        receiver.release()
        server = tandem.server
        assert server is not None
        async with httpx.AsyncClient(
            base_url=f"{server.base_url}/v1", timeout=30
        ) as again:
            await change_state(again, ws, 2)  # committed after the restart too
            await eventually(lambda: len(set(receiver.ok_ids())) == 7, timeout_s=30)
            rows = await eventually(
                lambda: _all_delivered(again, ws, hook["id"], 7), timeout_s=10
            )
        assert sorted(str(d["event_id"]) for d in rows) == sorted(
            set(receiver.ok_ids())
        )
        verified(receiver, hook["secret"])


async def test_two_nodes_never_deliver_the_same_attempt_twice(
    tandem: Tandem, http: httpx.AsyncClient
) -> None:
    tandem.start(**FAST_HOOKS)  # a second node on the same database
    ws = await workspace(http)
    with Receiver() as receiver:
        hooks = [await register(http, ws, f"{receiver.url}/{i}") for i in range(3)]
        await change_state(http, ws, 20)
        await eventually(lambda: len(receiver.snapshot()) >= 60, timeout_s=30)
        for hook in hooks:
            rows = await eventually(
                lambda h=hook: _all_delivered(http, ws, h["id"], 20), timeout_s=10
            )
            assert {d["attempt"] for d in rows} == {1}
        seen = Counter((r.path, r.headers["webhook-id"]) for r in receiver.snapshot())
        assert len(seen) == 60 and set(seen.values()) == {1}
        for i in range(3):
            assert in_order(receiver.ok_ids(f"/{i}"))
        # Each attempt is counted once, by the node that made it.
        assert (
            sum(
                _delivered(node.get("/metrics").text) for node in tandem.servers.started
            )
            == 60
        )


def _delivered(metrics: str) -> float:
    found = re.search(
        r'^tandem_webhook_attempts_total\{outcome="delivered"\} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


async def test_bad_webhook_requests_are_typed_problems_and_store_nothing(
    tandem: Tandem, http: httpx.AsyncClient
) -> None:
    ws = await workspace(http)
    path = f"/workspaces/{ws}/webhooks"
    good = {"url": "http://127.0.0.1:9/hook", "event_types": ["task.changed"]}
    for body in (
        {**good, "url": "ftp://127.0.0.1/hook"},
        {**good, "url": "not a url"},
        {**good, "event_types": ["task.exploded"]},
        {**good, "event_types": []},
        {**good, "secret": "mine"},
    ):
        assert_problem(
            await http.post(path, json=body, headers=ALICE), 422, "invalid_message"
        )
    malformed = {**ALICE, "content-type": "application/json"}
    assert_problem(
        await http.post(path, content=b"{", headers=malformed), 400, "bad_json"
    )
    assert_problem(
        await http.post(path, content=b"{}", headers=ALICE), 415, "unsupported_frame"
    )
    # Bob joins the team workspace as a member: not an admin.
    assert (
        await http.get(f"/workspaces/{ws}", headers=bearer("bob"))
    ).status_code == 200
    assert_problem(
        await http.post(path, json=good, headers=bearer("bob")), 403, "forbidden"
    )
    assert_problem(await http.get(path, headers=bearer("bob")), 403, "forbidden")
    other = bearer("alice", TENANT_B)
    assert_problem(await http.post(path, json=good, headers=other), 404, "not_found")
    assert_problem(
        await http.delete(f"{path}/{uuid.uuid4()}", headers=ALICE), 404, "not_found"
    )
    assert_problem(
        await http.get(f"{path}/{uuid.uuid4()}/deliveries", headers=ALICE),
        404,
        "not_found",
    )
    rows = await admin_fetch(tandem.db, "SELECT count(*) AS n FROM webhook_endpoints")
    assert rows[0]["n"] == 0
    created = (await http.post(path, json=good, headers=ALICE)).json()
    listed = (await http.get(path, headers=ALICE)).json()["webhooks"]
    assert [h["id"] for h in listed] == [created["id"]] and "secret" not in listed[0]
    assert (
        await http.delete(f"{path}/{created['id']}", headers=ALICE)
    ).status_code == 204
    rows = await admin_fetch(tandem.db, "SELECT count(*) AS n FROM webhook_endpoints")
    assert rows[0]["n"] == 0
