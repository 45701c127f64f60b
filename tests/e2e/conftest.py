"""End-to-end fixtures: real `tandem serve` processes on a test database, and what tests read back.

`tandem` starts servers on the test's own database (`db`) with the test secret of
`tests/wsclient.py`; it depends on `db`, so servers stop before the database is dropped. Helpers
here read the database as admin (the operation log, replayed with pycrdt) and the servers' JSON
log lines, and poll under deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import pytest
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import Postgres, TestDatabase, _create_database, _drop_database
from tests.e2e.editors import Editors
from tests.nodejs import install_node_clients
from tests.serverproc import ServerProcess, Servers, server_env, servers_for

if TYPE_CHECKING:
    from tests.e2e.multinode_helpers import Nodes

T = TypeVar("T")

# Fast writers would hit the default rate limit (100 frames/s, burst 200); most tests are not
# about it. Tests of the limits pass the defaults back.
UNLIMITED_RATE = {"TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000"}


class Tandem:
    """The servers of one test, all on the test's database."""

    def __init__(self, servers: Servers, db: TestDatabase) -> None:
        self.servers = servers
        self.db = db
        self.server: ServerProcess | None = None
        self.env: dict[str, str] = {}

    def start(self, **env: str) -> ServerProcess:
        """Start a server (settings as TANDEM_* variables); it becomes `self.server`."""
        self.env = {**UNLIMITED_RATE, **env}
        self.server = self.servers.start(
            env=server_env(DATABASE_URL=self.db.admin_url, TANDEM_JWT_SECRET=wsclient.SECRET, **self.env)
        )
        return self.server

    def restart(self, kill: bool = False) -> ServerProcess:
        """Stop the server (SIGTERM, or SIGKILL with `kill`) and start a new one, same settings."""
        assert self.server is not None
        if kill:
            self.server.kill()
        elif self.server.running:
            assert self.server.stop() == 0, self.server.log_tail()
        return self.start(**self.env)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://{self.server.host}:{self.server.port}/ws"

    def agent(self, tenant_id: uuid.UUID, agent_id: str, **token_args: Any) -> wsclient.Agent:
        """An unconnected agent (`async with` connects it)."""
        return wsclient.Agent(self.url, wsclient.token(tenant_id, agent_id, **token_args))


@pytest.fixture
def tandem(db: TestDatabase, tmp_path: Path) -> Iterator[Tandem]:
    for servers in servers_for(tmp_path):
        yield Tandem(servers, db)


@pytest.fixture
def nodes(db: TestDatabase, tmp_path: Path) -> Iterator[Nodes]:
    """Nodes started one by one on the test's database (tests/e2e/multinode_helpers.py)."""
    from tests.e2e.multinode_helpers import Nodes  # it imports this module

    for servers in servers_for(tmp_path):
        yield Nodes(servers, db)


@pytest.fixture(scope="module")
async def module_db(postgres: Postgres) -> AsyncIterator[TestDatabase]:
    """A migrated database shared by one module's tests (each makes its own workspaces)."""
    name = await _create_database(postgres, postgres.template)
    try:
        yield TestDatabase(name, postgres.url(name), postgres.url(name, postgres.settings.app_role))
    finally:
        await _drop_database(postgres, name)


@pytest.fixture(scope="module")
def module_tandem(module_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tandem]:
    """Servers shared by one module's tests: the module starts its server once."""
    for servers in servers_for(tmp_path_factory.mktemp("servers")):
        yield Tandem(servers, module_db)


@pytest.fixture(scope="session")
def node_clients() -> Path:
    return install_node_clients()


@pytest.fixture
async def editors(node_clients: Path) -> AsyncIterator[Editors]:
    """Stock Yjs editors (Node processes) of one test, stopped at its end."""
    started = Editors(node_clients)
    try:
        yield started
    finally:
        await started.stop()


# --- setup through the protocol --------------------------------------------------------------


async def shared_doc(owner: wsclient.Agent, *others: wsclient.Agent, visibility: str = "team") -> tuple[str, str]:
    """`owner` creates a workspace and a document in it; everyone joins. Returns (workspace_id, doc_id)."""
    ws = (await owner.request("workspace.create", name="Shared", visibility=visibility))["workspace"]
    ws_id = ws["workspace_id"]
    for agent in (owner, *others):
        await agent.request("workspace.join", workspace_id=ws_id)
    doc = (await owner.request("doc.create", workspace_id=ws_id, title="Doc"))["document"]
    return ws_id, doc["doc_id"]


# --- reading the database as admin -----------------------------------------------------------


async def admin_fetch(db: TestDatabase, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db.admin_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def operation_rows(db: TestDatabase, doc_id: str) -> list[asyncpg.Record]:
    """The document's log, ordered by sequence number."""
    return await admin_fetch(
        db,
        'SELECT sequence_number, agent_id, "update" FROM document_operations'
        " WHERE document_id = $1 ORDER BY sequence_number",
        uuid.UUID(doc_id),
    )


async def operation_count(db: TestDatabase, doc_id: str | None = None) -> int:
    if doc_id is None:
        rows = await admin_fetch(db, "SELECT count(*) FROM document_operations")
    else:
        query = "SELECT count(*) FROM document_operations WHERE document_id = $1"
        rows = await admin_fetch(db, query, uuid.UUID(doc_id))
    return int(rows[0][0])


def typed_history(count: int) -> list[bytes]:
    """`count` updates of one writer typing (and every tenth time deleting) in the content text."""
    doc = Doc()
    text = doc.get("content", type=Text)
    updates = []
    for i in range(count):
        before = doc.get_state()
        if i % 10 == 9:
            del text[0:2]
        else:
            text.insert(len(text), f"w{i} ")
        updates.append(doc.get_update(before))
    return updates


async def insert_history(db: TestDatabase, tenant_id: uuid.UUID, doc_id: str, updates: list[bytes]) -> None:
    """Append `updates` to an empty document's log as admin, behind the server's back (writing a
    long history through a server takes long). The document must not be loaded anywhere."""
    doc = uuid.UUID(doc_id)
    conn = await asyncpg.connect(db.admin_url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "document_operations",
                records=[(tenant_id, doc, seq, "typist", "insert", u) for seq, u in enumerate(updates, 1)],
                columns=["tenant_id", "document_id", "sequence_number", "agent_id", "operation_type", "update"],
            )
            await conn.execute("UPDATE shared_documents SET head_seq = $2 WHERE id = $1", doc, len(updates))
    finally:
        await conn.close()


def replay(updates: list[bytes]) -> Doc:
    """A fresh pycrdt Doc with `updates` applied in order."""
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def text_of(doc: Doc) -> str:
    return str(doc.get("content", type=Text))


async def replayed_text(db: TestDatabase, doc_id: str) -> str:
    return text_of(replay([bytes(r["update"]) for r in await operation_rows(db, doc_id)]))


# --- server logs -----------------------------------------------------------------------------


def log_events(server: ServerProcess, event: str, **match: Any) -> list[dict[str, Any]]:
    """The server's JSON log lines with this `event` whose fields equal `match`."""
    found = []
    for line in server.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and all(record.get(k) == v for k, v in match.items()):
            found.append(record)
    return found


# --- waiting ---------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T] | T], timeout_s: float = 10, interval_s: float = 0.05) -> T:
    """Call `check` until it returns something truthy (returned) or the deadline passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {check}")
        await asyncio.sleep(interval_s)  # the pause between polls, under the deadline above
