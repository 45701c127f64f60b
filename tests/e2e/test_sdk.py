"""The Python SDK (clients/, package tandem-client) against real `tandem serve` processes:
documents in sync both ways, typed errors, reconnects to another node that lose nothing and apply
nothing twice, and the co-writing example installed in a fresh virtual environment and run
against the embedded server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import UNLIMITED_RATE, Tandem, operation_rows, replayed_text
from tests.serverproc import REPO, ServerProcess, Servers, server_env, servers_for

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402

EXAMPLES = REPO / "clients" / "examples"
# Short backoff: tests wait for reconnects under deadlines, not for a production backoff.
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
SERVER_DEPENDENCIES = ("starlette", "asyncpg", "uvicorn", "structlog", "server")


def url_of(server: ServerProcess) -> str:
    return f"ws://{server.host}:{server.port}/ws"


def token(agent: str, tenant: uuid.UUID = TENANT_A, **kwargs: float) -> str:
    return wsclient.token(tenant, agent, **kwargs)


def cluster_env(tandem: Tandem, **extra: str) -> dict[str, str]:
    return server_env(DATABASE_URL=tandem.db.admin_url, TANDEM_JWT_SECRET=wsclient.SECRET, **UNLIMITED_RATE, **extra)


async def shared(client: tandem_client.Client, title: str = "spec") -> tuple[str, str]:
    """A team workspace with one document; returns (workspace_id, doc_id)."""
    info = await client.create_workspace("SDK", visibility="team")
    ws = await client.join(info.workspace_id)
    doc = await ws.create_document(title)
    return info.workspace_id, doc.doc_id


def miscounted(text: str, markers: list[str]) -> dict[str, int]:
    """The markers that do not appear exactly once in `text`, with their counts."""
    return {m: text.count(m) for m in markers if text.count(m) != 1}


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    """One node for the module, with the documented rate limit: the SDK must pace itself under it."""
    module_tandem.start(TANDEM_MAX_MESSAGES_PER_S="100.0", TANDEM_MAX_MESSAGE_BURST="200")
    yield module_tandem


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


async def test_two_clients_edit_one_document_both_ways_and_flushed_means_acknowledged(server: Tandem) -> None:
    tandem, node = server, server.server
    assert node is not None
    async with (
        tandem_client.connect(url_of(node), token("alice"), **FAST) as alice,
        tandem_client.connect(url_of(node), token("bob"), **FAST) as bob,
    ):
        assert alice.agent_id == "alice" and alice.connected
        info = await alice.create_workspace("SDK", visibility="team")
        a_ws = await alice.join(info.workspace_id)
        a = await a_ws.open("spec")  # created, since there is none
        b = await (await bob.join(info.workspace_id)).open("spec")  # found by title
        assert a.doc_id == b.doc_id and a.seq == b.seq == 0

        a.text.insert(0, "Hello")
        await a.flushed()
        assert a.pending == 0 and a.seq == 1
        await b.wait_for(lambda d: str(d.text) == "Hello", timeout_s=10)
        with b.ydoc.transaction():  # one transaction, one update
            b.text.insert(5, ", world")
            b.text.insert(len(b.text), "!")
        await b.flushed()
        await a.wait_for(lambda d: str(d.text) == "Hello, world!", timeout_s=10)
        assert a.seq == b.seq == 2

        # Many quick edits from both sides: batched, paced, all acknowledged, same text everywhere.
        for i in range(100):
            a.text.insert(len(a.text), f"<a{i}>")
            b.text.insert(0, f"<b{i}>")
        await asyncio.gather(a.flushed(10), b.flushed(10))
        await a.wait_for(lambda d: d.seq == b.seq, timeout_s=10)
        await b.wait_for(lambda d: d.seq == a.seq, timeout_s=10)
        assert str(a.text) == str(b.text) == await replayed_text(tandem.db, a.doc_id)
        assert a.seq == len(await operation_rows(tandem.db, a.doc_id))
        markers = [f"<a{i}>" for i in range(100)] + [f"<b{i}>" for i in range(100)]
        assert miscounted(str(a.text), markers) == {}
        assert (await a_ws.open(a.doc_id)) is a  # opening again returns the same document
        assert [d.doc_id for d in await a_ws.list_documents()] == [a.doc_id]
        # 300 requests at once, over the server's burst of 200: paced, none refused `rate_limited`.
        assert len(await asyncio.gather(*(alice.ping() for _ in range(300)))) == 300


async def test_errors_are_typed_exceptions_carrying_code_and_message(server: Tandem) -> None:
    assert server.server is not None
    url = url_of(server.server)
    async with tandem_client.connect(url, token("alice"), **FAST) as alice:
        with pytest.raises(tandem_client.NotFound) as missing:
            await alice.join(str(uuid.uuid4()))
        assert missing.value.code == "not_found" and missing.value.message == "Not found."
        assert isinstance(missing.value, tandem_client.TandemError)

        private = await alice.create_workspace("Private")  # private by default
        ws = await alice.join(private.workspace_id)
        with pytest.raises(tandem_client.NotFound):
            await ws.open(str(uuid.uuid4()))
        with pytest.raises(tandem_client.NotFound):
            await ws.open("no such title", create=False)
        async with tandem_client.connect(url, token("mallory"), **FAST) as mallory:
            with pytest.raises(tandem_client.Forbidden) as forbidden:
                await mallory.join(private.workspace_id)
            assert forbidden.value.code == "forbidden"

    # Refused sessions are not retried: the same token would be refused again.
    with pytest.raises(tandem_client.Unauthorized) as refused:
        await tandem_client.connect(url, "not-a-token", **FAST).start()
    assert refused.value.close_code == 4401
    assert "malformed: the token is not a JWT" in str(refused.value), "the refusal says why"
    with pytest.raises(tandem_client.TokenExpired):
        await tandem_client.connect(url, token("alice", ttl_s=-60), **FAST).start()
    # A token source is asked again at each connect: an expired one is replaced by a fresh one.
    tokens = iter([token("alice", ttl_s=-60), token("alice")])
    async with tandem_client.connect(url, lambda: next(tokens), **FAST) as client:
        assert client.agent_id == "alice"


async def test_presence_and_awareness_are_kept_as_a_view_and_an_event_stream(server: Tandem) -> None:
    assert server.server is not None
    url = url_of(server.server)
    async with tandem_client.connect(url, token("alice"), **FAST) as alice:
        ws_id, doc_id = await shared(alice)
        a_ws = alice._workspaces[ws_id]
        assert [m.agent_id for m in a_ws.presence.members.values()] == ["alice"] and a_ws.presence.others() == []
        async with a_ws.presence.events() as events:
            await a_ws.set_awareness({"here": True})  # her own change: in a batch, never in her stream
            async with tandem_client.connect(url, token("bob"), **FAST) as bob:
                b_ws = await bob.join(ws_id)
                assert b_ws.presence.agents() == {"alice", "bob"}  # listed at join
                b = await b_ws.open(doc_id)
                await b.set_awareness({"cursor": 3})
                await a_ws.presence.wait_for(
                    lambda p: [(m.agent_id, m.doc_ids, m.awareness, m.awareness_doc_id) for m in p.others()]
                    == [("bob", (doc_id,), {"cursor": 3}, doc_id)],
                    timeout_s=10,
                )
                with pytest.raises(tandem_client.AwarenessTooLarge):
                    await b_ws.set_awareness({"blob": "x" * 100_000})
                await b_ws.set_awareness(None)
                await a_ws.presence.wait_for(lambda p: p.others()[0].awareness is None, timeout_s=10)
            await a_ws.presence.wait_for(lambda p: p.others() == [], timeout_s=10)
            seen, about = [], set()
            async for event in events:
                seen.append(event.type)
                about.add(event.conn_id)
                if event.type == "presence.left":
                    break
        # Coalesced per server window (docs/protocol.md#57): bob's join comes first (it may carry
        # his document and cursor already), his leaving last; in between only changes of him.
        assert seen[0] == "presence.joined" and seen[-1] == "presence.left" and seen.count("presence.joined") == 1
        assert set(seen[1:-1]) <= {"presence.changed", "awareness.changed"}
        assert alice.hello is not None and alice.hello.session_id not in about  # never about herself
        assert await a_ws.presence.refresh() == a_ws.presence.members


async def test_client_of_a_killed_node_reconnects_to_the_next_and_offline_edits_land_exactly_once(tandem: Tandem) -> None:
    node_a = tandem.servers.start(env=cluster_env(tandem, TANDEM_NODE_ID="node-a"))
    node_b = tandem.servers.start(env=cluster_env(tandem, TANDEM_NODE_ID="node-b"))
    async with (
        tandem_client.connect([url_of(node_a), url_of(node_b)], token("writer"), **FAST) as writer,
        tandem_client.connect([url_of(node_b), url_of(node_a)], token("reader"), **FAST) as reader,
    ):
        assert (writer.node_id, reader.node_id) == ("node-a", "node-b")
        ws_id, doc_id = await shared(writer)
        w_ws = await writer.join(ws_id)
        w = await w_ws.open(doc_id)
        r = await (await reader.join(ws_id)).open(doc_id)
        await r.set_awareness({"cursor": 1})  # dies with each session; the client publishes it again

        # 1. Kill the writer's node while it types: it goes on with node-b, losing nothing.
        typed: list[str] = []
        killed = asyncio.Event()

        async def type_markers() -> None:
            after_kill = 0
            while after_kill < 100 and len(typed) < 5000:  # types until 100 markers after the kill
                marker = f"<{len(typed)}>"
                w.text.insert(len(w.text) if len(typed) % 2 else 0, marker)
                typed.append(marker)
                after_kill += killed.is_set()
                await asyncio.sleep(0.002)  # a typist's pace (not a wait for a condition)

        typing = asyncio.create_task(type_markers())
        await w.wait_for(lambda d: (d.seq or 0) >= 10 and d.in_flight > 0, timeout_s=20)
        node_a.kill()  # with edits in flight: sent, not acknowledged
        killed.set()
        await typing
        await writer.wait_for(lambda: writer.connected and writer.node_id == "node-b", timeout_s=30)
        await w.flushed(timeout_s=30)
        await r.wait_for(lambda d: str(d.text) == str(w.text), timeout_s=30)
        assert writer.sessions == 2 and reader.sessions == 1

        # 2. Kill node-b too: both are offline; the writer keeps typing. Node-a comes back on its
        # address, both reconnect to it, and the offline edits are delivered.
        node_b.kill()
        await writer.wait_for(lambda: not writer.connected and not reader.connected, timeout_s=10)
        offline = [f"<offline {i}>" for i in range(20)]
        for marker in offline:
            w.text.insert(len(w.text), marker)
        assert w.pending > 0 and not w.synced
        tandem.servers.start(env=cluster_env(tandem, TANDEM_NODE_ID="node-a2"), port=node_a.port)
        await w.flushed(timeout_s=60)
        await r.wait_for(lambda d: str(d.text) == str(w.text), timeout_s=30)
        assert (writer.node_id, reader.node_id) == ("node-a2", "node-a2")
        await w_ws.presence.wait_for(
            lambda p: [(m.agent_id, m.awareness) for m in p.others()] == [("reader", {"cursor": 1})], timeout_s=20
        )

    text = await replayed_text(tandem.db, doc_id)
    assert text == str(w.text) == str(r.text)
    assert miscounted(text, typed + offline) == {}, "an edit is missing or doubled"
    assert len(text) == sum(len(m) for m in typed + offline)


def test_fresh_venv_installs_the_sdk_alone_and_runs_the_example_against_the_embedded_server(
    servers: Servers, tmp_path: Path
) -> None:
    # The embedded PostgreSQL takes a while to start: let it, while pip works.
    data_dir = servers.data_dir()
    node = servers.start(env=server_env(TANDEM_DATA_DIR=str(data_dir), TANDEM_JWT_SECRET=wsclient.SECRET), ready=False)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--quiet", "./clients"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    python = str(venv / "bin" / "python")
    probe = (
        "import importlib.util, json, tandem_client;"
        f"print(json.dumps([tandem_client.__file__, [m for m in {SERVER_DEPENDENCIES!r} if importlib.util.find_spec(m)]]))"
    )
    found = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    location, server_modules = json.loads(found.stdout)
    assert location.startswith(str(venv)), location
    assert server_modules == [], f"the SDK pulled in server dependencies: {server_modules}"

    node.wait_ready(timeout_s=180)
    tenant = uuid.uuid4()
    run = subprocess.run(
        [python, str(EXAMPLES / "cowrite.py"), "--url", url_of(node), "--lines", "5",
         "--token-a", token("agent-a", tenant), "--token-b", token("agent-b", tenant)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["converged"] is True
    lines = result["text"].splitlines()
    assert sorted(lines) == sorted([f"A: line {i}" for i in range(1, 6)] + [f"B: line {i}" for i in range(1, 6)])
