"""The shared connection lifecycle (server/transport/connection.py), with the app served in process by
uvicorn against this test's database so a fault can be put inside a node: a failure of one
connection's update pipeline ends that connection with `internal_error` (1011, after the
closing sequence), the node goes on serving the others, and nothing of the failed connection
is left behind (docs/protocol.md#44)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
import websockets

from server.app import create_app
from server.db.pgcluster import free_port
from server.transport import websocket as transport
from server.transport.connection import Connection
from server.transport.node import Node
from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.test_yjs import awareness_message

if TYPE_CHECKING:
    from tests.conftest import Postgres, TestDatabase

DEADLINE_S = 30.0


class _InProcess(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the test runner keeps its own signal handlers
        yield


@contextlib.asynccontextmanager
async def serving(
    postgres: Postgres, db: TestDatabase, data_dir: Path, uvicorn_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[str, Node]]:
    """The app on a free loopback port in this event loop, on Tandem's WebSocket transport:
    (its /ws URL, its node). `overrides`: settings."""
    settings = postgres.settings.model_copy(
        update={
            "database_url": db.admin_url, "data_dir": data_dir, "node_id": "node-inproc", "validate_in_worker": False,
            "jwt_secret": wsclient.SECRET, **overrides,
        }
    )  # fmt: skip
    app = create_app(settings)
    port = free_port()
    options = {**transport.configure(settings), **(uvicorn_options or {})}
    server = _InProcess(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_config=None, **options))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not server.started:
                assert not task.done(), "the server did not start"
                await asyncio.sleep(0.02)
        yield f"ws://127.0.0.1:{port}/ws", app.state.tandem.node
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE_S)


async def test_a_failing_update_pipeline_ends_only_its_connection_with_internal_error(
    postgres: Postgres, db: TestDatabase, tmp_path: Path, monkeypatch: Any
) -> None:
    async with serving(postgres, db, tmp_path) as (url, node):
        alice = await wsclient.Agent(url, wsclient.token(TENANT_A, "alice")).connect()
        bob = await wsclient.Agent(url, wsclient.token(TENANT_A, "bob")).connect()
        ws = (await alice.request("workspace.create", name="w", visibility="team"))["workspace"]
        for agent in (alice, bob):
            await agent.request("workspace.join", workspace_id=ws["workspace_id"])
        doc_id = (await alice.request("doc.create", workspace_id=ws["workspace_id"], title="d"))["document"]["doc_id"]
        a, b = await alice.open(doc_id), await bob.open(doc_id)
        await a.edit(lambda t: t.insert(0, "before "))
        failing = next(c for c in node.connections if c.principal.agent_id == "alice")

        check = Connection._check
        faults = []

        async def fails_once(self: Connection[Any], updates: list[bytes]) -> list[str | None]:
            if self is failing and not faults:
                faults.append(len(updates))
                raise RuntimeError("injected pipeline fault")
            return await check(self, updates)

        monkeypatch.setattr(Connection, "_check", fails_once)
        _, _, reply = await a.send_edit(lambda t: t.insert(len(t), "lost "))
        assert (await reply)["code"] == "internal_error"  # the update's own refusal
        assert await alice.wait_closed(DEADLINE_S) == (1011, "internal_error")
        frames = [alice.events.get_nowait() for _ in range(alice.events.qsize())]
        assert frames[-1] == {
            "type": "session.closing", "code": 1011, "reason": "internal_error", "message": "Internal server error.",
        }  # fmt: skip

        # The node serves on: bob writes and is acknowledged, a newcomer reads what was committed.
        assert (await b.edit(lambda t: t.insert(len(t), "after")))["seq"] == 2
        carol = await wsclient.Agent(url, wsclient.token(TENANT_A, "carol")).connect()
        await carol.request("workspace.join", workspace_id=ws["workspace_id"])
        assert str((await carol.open(doc_id)).text) == "before after" == str(b.text)

        # Nothing of the failed connection is left: not in the node, not in the room, no task.
        assert failing.finished.is_set() and failing not in node.connections
        assert (failing.unsettled, failing.received_bytes, len(failing.outbox), len(failing.inbox)) == (0, 0, 0, 0)
        room = node.rooms.rooms[uuid.UUID(doc_id)]
        assert failing.conn_id not in room.subscriptions and len(room.subscriptions) == 2
        assert not failing.tasks
        for agent in (bob, carol, alice):
            await agent.close()


async def never_reading_peer(url: str) -> asyncio.StreamWriter:
    """A WebSocket client that completes the handshake and then never reads: the server's writes
    to it back up in the kernel's buffers and its own."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = "/" + url.split("//")[1].split("/", 1)[1]
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    async with asyncio.timeout(DEADLINE_S):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.transport.pause_reading()
    return writer


async def team_document(url: str) -> tuple[wsclient.Agent, str]:
    """Agent alice, joined to a new team workspace with one document; that document's /yjs URL
    up to its token."""
    alice = await wsclient.Agent(url, wsclient.token(TENANT_A, "alice")).connect()
    ws = (await alice.request("workspace.create", name="w", visibility="team"))["workspace"]["workspace_id"]
    await alice.request("workspace.join", workspace_id=ws)
    doc = (await alice.request("doc.create", workspace_id=ws, title="d"))["document"]["doc_id"]
    return alice, url.removesuffix("/ws") + f"/yjs/{ws}/{doc}?token="


async def connection_of(node: Node, agent_id: str) -> weakref.ref[Connection[Any]]:
    """A weak reference to the agent's connection once the node has it."""
    async with asyncio.timeout(DEADLINE_S):
        while not any(c.principal.agent_id == agent_id for c in node.connections):
            await asyncio.sleep(0.02)
    return weakref.ref(next(c for c in node.connections if c.principal.agent_id == agent_id))


async def test_a_slow_consumer_is_freed_at_its_end_without_the_garbage_collector(
    postgres: Postgres, db: TestDatabase, tmp_path: Path
) -> None:
    """docs/protocol.md#7 `max_send_queue_bytes`: a peer that never reads is closed as
    `slow_consumer` and nothing keeps its connection (and what was queued for it) alive, although
    its TCP connection stays open: reference counting frees it, without waiting for a collection
    of cycles (the node collects rarely, server/app.py `tune_gc`)."""
    settings = {"max_awareness_bytes": 1 << 20, "max_messages_per_s": 1e6, "max_message_burst": 1_000_000}
    async with serving(postgres, db, tmp_path, **settings) as (url, node):
        alice, yjs = await team_document(url)
        peer = await never_reading_peer(yjs + wsclient.token(TENANT_A, "slow"))
        writer = await websockets.connect(yjs + wsclient.token(TENANT_A, "writer"), max_size=None)
        gc.disable()
        try:
            slow = await connection_of(node, "slow")
            blob = "x" * 900_000
            deadline = time.monotonic() + DEADLINE_S
            for clock in range(1, 200):  # bounded: 16 MiB is reached after about 18
                await writer.send(awareness_message(1, clock, {"blob": blob}))
                if (conn := slow()) is None or conn.ending is not None or time.monotonic() > deadline:
                    break
            async with asyncio.timeout(DEADLINE_S):  # the states sent are still being relayed
                while (conn := slow()) is not None and conn.ending is None:
                    await asyncio.sleep(0.02)
            assert conn is not None and conn.ending is not None and conn.ending[0].value == "slow_consumer"
            assert len(conn.outbox) == 0  # dropped at once, before the connection has ended
            finished = conn.finished
            del conn
            async with asyncio.timeout(DEADLINE_S):
                await finished.wait()
            for _ in range(10):  # the tasks it cancelled finish
                await asyncio.sleep(0.05)
            assert slow() is None, gc.get_referrers(slow())
            assert not peer.transport.is_closing()  # the peer never closed its side
        finally:
            gc.enable()
            peer.transport.abort()
            await writer.close()
            await alice.close()


async def test_a_peer_that_never_reads_nor_answers_pings_is_let_go(
    postgres: Postgres, db: TestDatabase, tmp_path: Path
) -> None:
    """uvicorn closes a connection whose peer misses a keepalive pong, gracefully: for a peer that
    never reads, that close never completes and the application never hears of it. The transport
    is aborted `ABORT_AFTER_S` later (server/transport/websocket.py): the connection ends and is freed."""
    settings = {
        "max_awareness_bytes": 1 << 20, "max_send_queue_bytes": 1 << 30, "max_messages_per_s": 1e6,
        "max_message_burst": 1_000_000,
    }  # fmt: skip
    # A ping every 0.5 s, each to be answered within 3 s: the peer that never reads answers none
    # and is let go; the writer must answer in time on a loaded machine too.
    pings = {"ws_ping_interval": 0.5, "ws_ping_timeout": 3.0}
    async with serving(postgres, db, tmp_path, pings, **settings) as (url, node):
        alice, yjs = await team_document(url)
        peer = await never_reading_peer(yjs + wsclient.token(TENANT_A, "slow"))
        writer = await websockets.connect(yjs + wsclient.token(TENANT_A, "writer"), max_size=None)
        gc.disable()
        try:
            slow = await connection_of(node, "slow")
            blob = "x" * 900_000
            for clock in range(1, 21):  # 18 MB: more than the sockets' buffers take, under the bounds
                await writer.send(awareness_message(1, clock, {"blob": blob}))
            async with asyncio.timeout(DEADLINE_S):
                while (conn := slow()) is not None and not conn.finished.is_set():
                    del conn
                    await asyncio.sleep(0.1)
            del conn
            for _ in range(10):  # the tasks it cancelled finish
                await asyncio.sleep(0.05)
            assert slow() is None, gc.get_referrers(slow())
            assert writer.close_code is None  # it answers pings
        finally:
            gc.enable()
            peer.transport.abort()
            await writer.close()
            await alice.close()
