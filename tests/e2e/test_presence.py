"""Presence and awareness end to end (docs/protocol.md#57): real `tandem serve` processes on one
PostgreSQL and one Redis. A join on one node is seen on the others, awareness crosses nodes, a
killed node's sessions expire, presence comes back after Redis restarts while documents never
stop, one node works without Redis, and tenants never see each other.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import UNLIMITED_RATE, eventually
from tests.redisproc import RedisProcess
from tests.serverproc import ServerProcess, Servers, server_env, servers_for

if TYPE_CHECKING:
    from tests.conftest import (
        TestDatabase,  # a name starting with Test would be collected
    )

TTL_S = 2.0
PRESENCE_ENV = {
    "TANDEM_PRESENCE_TTL_S": str(TTL_S),
    "TANDEM_PRESENCE_SWEEP_INTERVAL_S": "0.5",
    "TANDEM_PRESENCE_TIMEOUT_S": "0.5",
    **UNLIMITED_RATE,
}
# A vanished node's sessions are gone within the TTL plus about two sweeps; the rest is slack.
EXPIRY_DEADLINE_S = TTL_S + 1.0 + 10.0


def presence_env(db: TestDatabase, redis_url: str | None) -> dict[str, str]:
    return server_env(DATABASE_URL=db.admin_url, REDIS_URL=redis_url, TANDEM_JWT_SECRET=wsclient.SECRET, **PRESENCE_ENV)


def start_nodes(servers: Servers, env: dict[str, str], count: int) -> list[ServerProcess]:
    """Start `count` servers at once, then wait for each (and, with Redis, for its relay)."""
    nodes = [servers.start(env=env, ready=False) for _ in range(count)]
    for node in nodes:
        node.wait_ready()
        if "REDIS_URL" in env:
            wait_redis(node, up=True)
    return nodes


def wait_redis(node: ServerProcess, up: bool, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll /healthz until it reports Redis `up`; the pause between polls waits on the process."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = node.get("/healthz")
        body = response.json()
        if response.status_code == 200 and body["redis"]["up"] is up:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never reported redis up={up}: {body}")
        assert node.proc is not None
        try:
            node.proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"server exited\n{node.log_tail()}")


@dataclass
class Cluster:
    servers: Servers
    env: dict[str, str]
    nodes: list[ServerProcess]

    def agent(self, node: ServerProcess | int, tenant_id: uuid.UUID, agent_id: str) -> wsclient.Agent:
        server = self.nodes[node] if isinstance(node, int) else node
        return wsclient.Agent(f"ws://{server.host}:{server.port}/ws", wsclient.token(tenant_id, agent_id))


@pytest.fixture(scope="module")
def cluster(module_db: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes on the module's database and the session's Redis."""
    for servers in servers_for(tmp_path_factory.mktemp("presence")):
        env = presence_env(module_db, redis_url)
        yield Cluster(servers, env, start_nodes(servers, env, 3))


def session_id(agent: wsclient.Agent) -> str:
    assert agent.hello is not None
    return agent.hello["session_id"]


async def until(agent: wsclient.Agent, predicate: Callable[[wsclient.Frame], bool], timeout_s: float = 10) -> list[wsclient.Frame]:
    """Every event up to and including the first matching `predicate`."""
    frames: list[wsclient.Frame] = []
    while not frames or not predicate(frames[-1]):
        frames.append(await agent.event(lambda _f: True, timeout_s))
    return frames


def is_type(type_: str, **match: Any) -> Callable[[wsclient.Frame], bool]:
    return lambda f: f["type"] == type_ and all(f.get(k) == v for k, v in match.items())


async def team_workspace(owner: wsclient.Agent, *others: wsclient.Agent) -> str:
    ws_id = (await owner.request("workspace.create", name="Presence", visibility="team"))["workspace"]["workspace_id"]
    for agent in (owner, *others):
        await agent.request("workspace.join", workspace_id=ws_id)
    return ws_id


async def members(agent: wsclient.Agent, ws_id: str) -> dict[str, dict[str, Any]]:
    listing = await agent.request("presence.list", workspace_id=ws_id)
    assert listing["partial"] is False and listing["truncated"] is False
    return {m["conn_id"]: m for m in listing["members"]}


# --- three nodes, one Redis ----------------------------------------------------------------------


async def test_a_join_on_node_1_is_seen_on_node_3(cluster):
    async with cluster.agent(2, TENANT_A, "cat") as cat, cluster.agent(0, TENANT_A, "ann") as ann:
        ws_id = await team_workspace(cat)
        await ann.request("workspace.join", workspace_id=ws_id)
        joined = await cat.event(is_type("presence.joined"))
        assert joined == {
            "type": "presence.joined", "workspace_id": ws_id, "agent_id": "ann", "conn_id": session_id(ann),
            "node_id": ann.hello["node_id"], "since": joined["since"],
        }  # fmt: skip
        found = await members(cat, ws_id)
        assert set(found) == {session_id(ann), session_id(cat)}
        assert found[session_id(ann)]["node_id"] == ann.hello["node_id"] != cat.hello["node_id"]
        assert found[session_id(ann)]["since"] == joined["since"]
        assert (found[session_id(ann)]["doc_ids"], found[session_id(ann)]["awareness"]) == ([], None)
        # Ann gets no event about herself: up to Cat's marker she hears only of Cat (whose join,
        # sent at the end of its window, may reach her node after she joined).
        await cat.request("awareness.set", workspace_id=ws_id, state={"marker": 1})
        heard = await until(ann, is_type("awareness.changed"))
        assert {f["conn_id"] for f in heard} == {session_id(cat)}
        assert [f["type"] for f in heard] in (["awareness.changed"], ["presence.joined", "awareness.changed"])
    metrics = cluster.nodes[2].get("/metrics").text
    assert "tandem_redis_up 1.0" in metrics and 'tandem_presence_events_total{direction="relayed"}' in metrics


async def test_awareness_and_documents_cross_nodes(cluster):
    async with cluster.agent(0, TENANT_A, "ann") as ann, cluster.agent(1, TENANT_A, "bob") as bob:
        ws_id = await team_workspace(ann, bob)
        doc_id = (await ann.request("doc.create", workspace_id=ws_id, title="Notes"))["document"]["doc_id"]
        await ann.request("awareness.set", workspace_id=ws_id, state={"status": "reading"})
        changed = await bob.event(is_type("awareness.changed"))
        assert changed == {
            "type": "awareness.changed", "workspace_id": ws_id, "doc_id": None, "agent_id": "ann",
            "conn_id": session_id(ann), "state": {"status": "reading"},
        }  # fmt: skip
        await ann.open(doc_id)
        assert (await bob.event(is_type("presence.changed")))["doc_ids"] == [doc_id]
        reply = await ann.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state={"cursor": {"index": 4}})
        assert reply == {"type": "awareness.set.ok", "re": reply["re"], "workspace_id": ws_id, "doc_id": doc_id}
        changed = await bob.event(is_type("awareness.changed"))
        assert (changed["doc_id"], changed["state"]) == (doc_id, {"cursor": {"index": 4}})
        found = (await members(bob, ws_id))[session_id(ann)]
        assert (found["doc_ids"], found["awareness"], found["awareness_doc_id"]) == ([doc_id], {"cursor": {"index": 4}}, doc_id)
        # Too large: refused, nothing changes; the session stays open.
        err = await ann.error("awareness.set", workspace_id=ws_id, state={"blob": "x" * 8192})
        assert err["code"] == "awareness_too_large"
        assert err["details"] == {"max_awareness_bytes": 8192, "awareness_bytes": 8192 + len('{"blob":""}')}
        assert (await ann.request("ping"))["type"] == "pong"
        assert (await bob.error("awareness.set", workspace_id=ws_id, doc_id=str(uuid.uuid4()), state={}))["code"] == "doc_not_open"
        # Closing the document clears the state about it.
        await ann.request("doc.close", doc_id=doc_id)
        assert (await bob.event(is_type("presence.changed")))["doc_ids"] == []
        cleared = await bob.event(is_type("awareness.changed"))
        assert (cleared["doc_id"], cleared["state"]) == (doc_id, None)
        await bob.request("workspace.leave", workspace_id=ws_id)
        left = await ann.event(is_type("presence.left"))
        assert (left["conn_id"], left["reason"]) == (session_id(bob), "left")
        assert (await bob.error("presence.list", workspace_id=ws_id))["code"] == "not_member"
        async with cluster.agent(2, TENANT_A, "ann") as ann2:
            await ann2.request("workspace.join", workspace_id=ws_id)
            assert (await ann.event(is_type("presence.joined")))["conn_id"] == session_id(ann2)
            ann2_id = session_id(ann2)
        left = await ann.event(is_type("presence.left"))
        assert (left["conn_id"], left["agent_id"], left["reason"]) == (ann2_id, "ann", "disconnected")


async def test_another_tenant_never_sees_this_tenants_presence(cluster):
    async with (
        cluster.agent(0, TENANT_A, "ann") as ann,
        cluster.agent(1, TENANT_B, "mal") as mal,
        cluster.agent(2, TENANT_B, "max") as max_,
    ):
        ws_b = await team_workspace(mal)
        ws_a = await team_workspace(ann)
        await ann.request("awareness.set", workspace_id=ws_a, state={"secret": True})
        assert (await mal.error("workspace.join", workspace_id=ws_a))["code"] == "not_found"
        assert (await mal.error("presence.list", workspace_id=ws_a))["code"] == "not_member"
        assert (await mal.error("awareness.set", workspace_id=ws_a, state={}))["code"] == "not_member"
        async with cluster.agent(2, TENANT_A, "amy") as amy:
            await amy.request("workspace.join", workspace_id=ws_a)
            await ann.event(is_type("presence.joined", conn_id=session_id(amy)))
        await max_.request("workspace.join", workspace_id=ws_b)  # the marker, after all of tenant A's events
        heard = await until(mal, is_type("presence.joined", conn_id=session_id(max_)))
        assert [f["type"] for f in heard] == ["presence.joined"]
        assert set(await members(mal, ws_b)) == {session_id(mal), session_id(max_)}


async def test_a_killed_nodes_sessions_expire_on_the_other_nodes(cluster):
    victim = cluster.servers.start(env=cluster.env)
    wait_redis(victim, up=True)
    async with cluster.agent(0, TENANT_A, "ann") as ann, cluster.agent(1, TENANT_A, "bob") as bob:
        ws_id = await team_workspace(ann, bob)
        lost = cluster.agent(victim, TENANT_A, "vic")
        await lost.connect()
        await lost.request("workspace.join", workspace_id=ws_id)
        for agent in (ann, bob):
            await agent.event(is_type("presence.joined", conn_id=session_id(lost)))
        assert session_id(lost) in await members(bob, ws_id)
        victim.kill()
        for agent in (ann, bob):
            left = await agent.event(is_type("presence.left", conn_id=session_id(lost)), timeout_s=EXPIRY_DEADLINE_S)
            assert (left["agent_id"], left["reason"]) == ("vic", "expired")
        assert set(await members(bob, ws_id)) == {session_id(ann), session_id(bob)}
        await lost.close()


# --- Redis going away and coming back --------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


async def test_presence_recovers_after_redis_restarts_and_documents_never_stop(db, own_redis, tmp_path: Path):
    for servers in servers_for(tmp_path):
        env = presence_env(db, own_redis.url)
        node_a, node_b = start_nodes(servers, env, 2)
        cluster = Cluster(servers, env, [node_a, node_b])
        async with cluster.agent(0, TENANT_A, "ann") as ann, cluster.agent(1, TENANT_A, "bob") as bob:
            ws_id = await team_workspace(ann, bob)
            doc_id = (await ann.request("doc.create", workspace_id=ws_id, title="Log"))["document"]["doc_id"]
            doc = await ann.open(doc_id)
            await ann.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state={"cursor": 1})
            await bob.event(is_type("awareness.changed"))

            own_redis.stop()
            for node in (node_a, node_b):
                health = wait_redis(node, up=False)
                assert health["status"] == "ok" and health["database"]["up"] is True
                assert health["redis"] == {"configured": True, "up": False}
            # Documents keep working; presence answers from the node alone.
            ack = await doc.edit(lambda text: text.insert(0, "still here"))
            assert ack["type"] == "doc.update.ok" and ack["seq"] == 1
            listing = await bob.request("presence.list", workspace_id=ws_id)
            assert listing["partial"] is True and [m["conn_id"] for m in listing["members"]] == [session_id(bob)]
            assert (await ann.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state={"cursor": 2}))["type"] == "awareness.set.ok"
            async with cluster.agent(0, TENANT_A, "cy") as cy:
                await cy.request("workspace.join", workspace_id=ws_id)  # joins while Redis is away

                own_redis.start()  # the same port, empty
                for node in (node_a, node_b):
                    wait_redis(node, up=True)
                assert (await bob.event(is_type("presence.stale"), timeout_s=20))["workspace_id"] == ws_id

                async def recovered() -> bool:
                    listing = await bob.request("presence.list", workspace_id=ws_id)
                    found = {m["conn_id"]: m for m in listing["members"]}
                    return not listing["partial"] and set(found) == {session_id(ann), session_id(bob), session_id(cy)}

                await eventually(recovered, timeout_s=20)
                ann_member = (await members(bob, ws_id))[session_id(ann)]
                assert (ann_member["doc_ids"], ann_member["awareness"]) == ([doc_id], {"cursor": 2})
            ack = await doc.edit(lambda text: text.insert(0, "and back: "))
            assert ack["seq"] == 2


# --- one node, no Redis --------------------------------------------------------------------------


async def test_single_node_presence_without_redis(db, tmp_path: Path):
    for servers in servers_for(tmp_path):
        env = presence_env(db, None)
        (node,) = start_nodes(servers, env, 1)
        assert node.get("/healthz").json()["redis"] == {"configured": False, "up": None}
        cluster = Cluster(servers, env, [node])
        async with cluster.agent(0, TENANT_A, "ann") as ann:
            ws_id = await team_workspace(ann)
            async with cluster.agent(0, TENANT_A, "bob") as bob:
                await bob.request("workspace.join", workspace_id=ws_id)
                assert (await ann.event(is_type("presence.joined")))["conn_id"] == session_id(bob)
                assert set(await members(bob, ws_id)) == {session_id(ann), session_id(bob)}
                await bob.request("awareness.set", workspace_id=ws_id, state={"typing": True})
                assert (await ann.event(is_type("awareness.changed")))["state"] == {"typing": True}
                bob_id = session_id(bob)
            left = await ann.event(is_type("presence.left"))
            assert (left["conn_id"], left["reason"]) == (bob_id, "disconnected")
            assert set(await members(ann, ws_id)) == {session_id(ann)}
