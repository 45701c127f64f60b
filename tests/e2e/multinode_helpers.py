"""Helpers for multi-node end-to-end tests: several `tandem serve` nodes on one database, clients
that write with a small window of unacknowledged updates and move to another node when theirs
dies (docs/protocol.md#63), and what the admin sees of the nodes (health, metrics, LISTEN
backends). The protocol client itself is tests/wsclient.py; this module only drives it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import string
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import psutil
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Text

from tests import wsclient
from tests.conftest import TestDatabase
from tests.e2e.conftest import UNLIMITED_RATE
from tests.serverproc import ServerProcess, Servers, server_env

# An empty Yjs update: no structs, no deletions (what `get_update` gives when nothing is missing).
EMPTY_UPDATE = b"\x00\x00"


# --- nodes -----------------------------------------------------------------------------------


class Nodes:
    """The `tandem serve` nodes of one test, all on the test's database, named node-1, node-2, ..."""

    def __init__(self, servers: Servers, db: TestDatabase) -> None:
        self.servers = servers
        self.db = db
        self.nodes: list[ServerProcess] = []

    def start(self, count: int, **env: str) -> list[ServerProcess]:
        """Start `count` more nodes side by side (settings as TANDEM_* variables) and wait until
        each answers /healthz."""
        started = []
        for _ in range(count):
            node_id = f"node-{len(self.nodes) + 1}"
            server = self.servers.start(
                env=server_env(
                    DATABASE_URL=self.db.admin_url,
                    TANDEM_JWT_SECRET=wsclient.SECRET,
                    TANDEM_NODE_ID=node_id,
                    **{**UNLIMITED_RATE, **env},
                ),
                ready=False,
            )
            self.nodes.append(server)
            started.append(server)
        for server in started:
            server.wait_ready()
        return started

    def __getitem__(self, index: int) -> ServerProcess:
        return self.nodes[index]

    def url(self, index: int) -> str:
        node = self.nodes[index]
        return f"ws://{node.host}:{node.port}/ws"


def kill_9(node: ServerProcess) -> None:
    """SIGKILL the node, as a crash would, then end by pid the processes it started: its
    update checker dies with it (PR_SET_PDEATHSIG), and is ended here too, in case it did not."""
    assert node.server_pid is not None
    children = psutil.Process(node.server_pid).children(recursive=True)
    node.kill()
    for child in children:  # psutil checks the pid still names the same process
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


async def get_json(node: ServerProcess, path: str, timeout_s: float = 5.0) -> Any:
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        response = await http.get(node.base_url + path)
    return response.json()


async def health(node: ServerProcess) -> dict[str, Any]:
    return await get_json(node, "/healthz")


async def metric(node: ServerProcess, sample_name: str, **labels: str) -> float:
    """The value of one sample of the node's /metrics (0.0 when it has no such sample yet)."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        text = (await http.get(node.base_url + "/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# --- the LISTEN connections, as the admin sees them --------------------------------------------


async def listen_backends(db: TestDatabase, app_role: str = "tandem_app") -> set[int]:
    """Backend pids of the fan-out LISTEN connections on the test database: the application
    role's connections whose last statement is the LISTEN or the fan-out's `SELECT 1` probe
    (pooled connections end with asyncpg's reset query instead)."""
    conn = await asyncpg.connect(db.admin_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2"
            " AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')",
            db.name,
            app_role,
        )
    finally:
        await conn.close()
    return {r["pid"] for r in rows}


async def terminate_backend(db: TestDatabase, pid: int) -> bool:
    conn = await asyncpg.connect(db.admin_url)
    try:
        return bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
    finally:
        await conn.close()


# --- clients ---------------------------------------------------------------------------------


def random_edit(rng: random.Random, tag: str) -> Callable[[Text], None]:
    """Insert a few letters, or delete a short range (ASCII: one unit a character)."""

    def edit(text: Text) -> None:
        length = len(text)
        if length > 0 and rng.random() < 0.35:
            start = rng.randrange(length)
            del text[start : min(length, start + rng.randint(1, 4))]
        else:
            letters = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 5)))
            text.insert(rng.randint(0, length), tag + letters)

    return edit


class Disconnected(Exception):
    """The client's connection was lost while it wrote."""


@dataclass(frozen=True)
class Acked:
    """An update the server acknowledged, and the seq it gave it (None: it held nothing new)."""

    update: bytes
    seq: int | None
    node_id: str


@dataclass(frozen=True)
class PastSubscription:
    """What one finished session of a client received for the document."""

    node_id: str
    synced_seq: int | None
    seqs: list[int]
    early: list[dict[str, Any]]


@dataclass
class Client:
    """One agent with one open document, able to move to another node (docs/protocol.md#63)."""

    name: str
    tenant_id: uuid.UUID
    agent: wsclient.Agent | None = None
    doc: wsclient.SyncedDoc | None = None
    ws_id: str | None = None
    acked: list[Acked] = field(default_factory=list)
    past: list[PastSubscription] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        assert self.agent is not None and self.agent.hello is not None
        return str(self.agent.hello["node_id"])

    async def connect(self, url: str) -> Client:
        self.agent = await wsclient.Agent(url, wsclient.token(self.tenant_id, self.name)).connect()
        return self

    async def open(self, ws_id: str, doc_id: str) -> wsclient.SyncedDoc:
        assert self.agent is not None
        self.ws_id = ws_id
        await self.agent.request("workspace.join", workspace_id=ws_id)
        self.doc = await self.agent.open(doc_id, self.doc)
        return self.doc

    async def write(
        self,
        rng: random.Random,
        count: int,
        *,
        window: int = 4,
        keep_going: Callable[[], bool] = lambda: True,
        timeout_s: float = 60.0,
    ) -> None:
        """Make up to `count` random edits (fewer once `keep_going()` is false), with at most
        `window` unacknowledged; returns once all are acknowledged. Every ack is recorded in
        `acked`. Raises Disconnected when the connection is lost (acks received before it are
        recorded; the unacknowledged edits stay in the local document)."""
        assert self.agent is not None and self.doc is not None
        agent, doc = self.agent, self.doc
        inflight: deque[tuple[bytes, asyncio.Future[dict[str, Any]]]] = deque()
        tag = self.name[0].upper()
        try:
            async with asyncio.timeout(timeout_s):
                for _ in range(count):
                    if not keep_going():
                        break
                    while len(inflight) >= window:
                        await self._settle(agent, *inflight.popleft())
                    _, update, fut = await doc.send_edit(random_edit(rng, tag))
                    inflight.append((update, fut))
                while inflight:
                    await self._settle(agent, *inflight.popleft())
        except (ConnectionError, websockets.ConnectionClosed) as exc:
            for update, fut in inflight:  # replies that arrived before the connection went
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._record(update, fut.result(), agent)
            raise Disconnected(f"{self.name}: {exc!r}") from exc

    async def _settle(self, agent: wsclient.Agent, update: bytes, fut: asyncio.Future[dict[str, Any]]) -> None:
        assert agent.closed is not None
        # A future whose request went out after the reader ended is never resolved: the
        # connection's end settles it.
        await asyncio.wait([fut, agent.closed], return_when=asyncio.FIRST_COMPLETED)
        if not fut.done():
            raise ConnectionError("connection closed before the reply")
        self._record(update, fut.result(), agent)  # raises ConnectionError if it failed so

    def _record(self, update: bytes, reply: dict[str, Any], agent: wsclient.Agent) -> None:
        assert reply["type"] == "doc.update.ok", f"{self.name}: {reply}"
        assert agent.hello is not None
        self.acked.append(Acked(update, reply["seq"], str(agent.hello["node_id"])))

    async def move_to(self, url: str) -> None:
        """Reconnect on another node and resync (docs/protocol.md#63): join, open with the local
        state vector, then send what the server lacks (from the reply's `state_vector`)."""
        assert self.doc is not None and self.ws_id is not None and self.agent is not None
        old = self.agent
        if old.closed is not None:
            await old.wait_closed(timeout_s=10)
        # The reader failed every request left unanswered; those failures are expected.
        for fut in old._pending.values():
            if fut.done() and not fut.cancelled():
                fut.exception()
        self.past.append(PastSubscription(str(old.hello["node_id"]) if old.hello else "?",
                                          self.doc.synced_seq, list(self.doc.seqs), list(self.doc.early)))
        await self.connect(url)
        doc = await self.open(self.ws_id, self.doc.doc_id)
        assert doc.open_reply is not None
        missing = doc.doc.get_update(base64.b64decode(doc.open_reply["state_vector"]))
        if missing != EMPTY_UPDATE:
            reply = await self.agent.request("doc.update", doc_id=doc.doc_id, update=wsclient.b64(missing))  # type: ignore[union-attr]
            self._record(missing, reply, self.agent)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.agent is not None:
            await self.agent.close()


def assert_in_order(name: str, synced_seq: int | None, seqs: list[int], early: list[dict[str, Any]], head: int | None) -> None:
    """docs/protocol.md#62: after the open reply at S, every later seq exactly once, in order
    (up to `head`; None: up to wherever the subscription ended), and nothing before the reply."""
    assert synced_seq is not None, f"{name}: no open reply"
    # Frames that overtook the reply are counted here, so a gap or a duplicate is told apart
    # from an overtaking (checked next).
    stream = [f["seq"] for f in early if f["seq"] is not None] + seqs
    end = synced_seq + len(stream) if head is None else head
    expected = list(range(synced_seq + 1, end + 1))
    assert stream == expected, (
        f"{name}: stream after seq {synced_seq} is not {synced_seq + 1}..{end}: "
        f"missing {sorted(set(expected) - set(stream))[:20]}, "
        f"duplicates {sorted({s for s in stream if stream.count(s) > 1})[:20]}, first {stream[:10]}"
    )
    assert early == [], (
        f"{name}: {len(early)} events arrived before the open reply (seq {synced_seq}) they follow: "
        f"{[(f['type'], f['seq']) for f in early][:20]}"
    )
