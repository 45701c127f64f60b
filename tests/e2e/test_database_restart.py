"""Two nodes outlive their database (docs/operations.md, "When the database is away"): PostgreSQL
stopped and started again under two SDK agents and a Yjs editor, and separately every connection
of one node ended by PostgreSQL. Writes go on once the database answers, nothing acknowledged is
lost, nothing is stored twice, /healthz says what happened, and SIGTERM still stops the nodes.

PostgreSQL here is a cluster of the test's own (the session's is shared by every test)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import tandem_client

from server.db.pgcluster import Cluster, find_bin_dir, free_port
from tests.conftest import TestDatabase
from tests.e2e.conftest import Tandem, operation_rows, replayed_text
from tests.e2e.editors import Editors, YClient, base_url, tok
from tests.e2e.multinode_helpers import Nodes
from tests.e2e.test_drain import redundant_rows
from tests.e2e.test_sdk import FAST, miscounted
from tests.serverproc import ServerProcess

DEADLINE_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0


@pytest.fixture
def own_cluster() -> Iterator[tuple[Cluster, TestDatabase]]:
    workdir = Path(tempfile.mkdtemp(prefix="tandem-restart-pg-"))
    workdir.chmod(0o755)
    cluster = Cluster(workdir, bin_dir=find_bin_dir(), port=free_port(), fsync=False)
    cluster.start()
    try:
        url = cluster.url("postgres")
        yield cluster, TestDatabase("postgres", url, url)
    finally:
        cluster.destroy()


async def health(node: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            return (await http.get(f"{node.base_url}/healthz")).status_code
        except httpx.TransportError:
            return 0


async def until(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll `check` until it is true (AssertionError naming `what` after DEADLINE_S); returns
    the seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE_S} s: {what}") from None
    return time.monotonic() - started


async def writer(doc: tandem_client.Document | YClient, name: str, count: int) -> list[str]:
    tokens = [f"<{name}{i}>" for i in range(count)]
    for token in tokens:
        if isinstance(doc, YClient):
            await doc.insert(token)
        else:
            doc.text.insert(len(doc.text), token)
        await asyncio.sleep(0.02)
    return tokens


async def test_two_nodes_write_on_through_a_postgresql_restart(
    own_cluster: tuple[Cluster, TestDatabase], tandem: Tandem, editors: Editors
) -> None:
    cluster, db = own_cluster
    nodes = Nodes(tandem.servers, db)
    one, two = nodes.start(2, TANDEM_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S))
    url = [f"ws://{n.host}:{n.port}/ws" for n in (one, two)]
    async with (
        tandem_client.connect(url[0], tok("sdk-1"), **FAST) as first,
        tandem_client.connect(url[1], tok("sdk-2"), **FAST) as second,
    ):
        info = await first.create_workspace("restart", visibility="team")
        docs = [await (await c.join(info.workspace_id)).open("spec") for c in (first, second)]
        doc_id = docs[0].doc_id
        editor = await editors.start(base_url(tandem, two), info.workspace_id, doc_id, tok("editor"))
        writing = [
            asyncio.create_task(writer(docs[0], "a", 100)),
            asyncio.create_task(writer(docs[1], "b", 100)),
            asyncio.create_task(writer(editor, "e", 100)),
        ]
        await asyncio.sleep(0.5)

        await asyncio.to_thread(cluster.stop)  # pg_ctl stop -m fast, mid-stream
        await until(lambda: _all_equal([health(one), health(two)], 503), "both nodes report the outage")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start)

        # Every client's next update is committed and acknowledged once the database answers.
        for i, d in enumerate(docs):
            d.text.insert(len(d.text), f"<probe{i}>")
        resumed_s = await until(lambda: _flushed(docs), "the agents' writes resume")
        await editor.insert("<probe-e>")
        await until(lambda: _logged(db, doc_id, "<probe-e>"), "the editor's write resumes")
        print(f"writes resumed {resumed_s:.2f} s after PostgreSQL answered")
        assert await health(one) == await health(two) == 200

        tokens = [t for batch in await asyncio.gather(*writing) for t in batch] + ["<probe0>", "<probe1>", "<probe-e>"]
        await asyncio.gather(*(d.flushed(DEADLINE_S) for d in docs))
        await docs[0].wait_for(lambda d: all(t in str(d.text) for t in tokens), timeout_s=DEADLINE_S)
        final = str(docs[0].text)
        await docs[1].wait_for(lambda d: str(d.text) == final, timeout_s=DEADLINE_S)
        await editor.wait_for(lambda c: c.text == final, timeout_s=DEADLINE_S)
        assert miscounted(final, tokens) == {}
        assert await replayed_text(db, doc_id) == final
        assert redundant_rows(await operation_rows(db, doc_id)) == []

    for node in (one, two):  # SIGTERM afterwards still stops each node in time
        assert await asyncio.to_thread(node.stop, SHUTDOWN_TIMEOUT_S + 5) == 0, node.log_tail()


async def test_a_node_whose_connections_postgresql_ends_writes_on(
    own_cluster: tuple[Cluster, TestDatabase], tandem: Tandem
) -> None:
    _, db = own_cluster
    one, two = Nodes(tandem.servers, db).start(2)
    async with (
        tandem_client.connect(f"ws://{one.host}:{one.port}/ws", tok("sdk-1"), **FAST) as first,
        tandem_client.connect(f"ws://{two.host}:{two.port}/ws", tok("sdk-2"), **FAST) as second,
    ):
        info = await first.create_workspace("terminate", visibility="team")
        docs = [await (await c.join(info.workspace_id)).open("spec") for c in (first, second)]
        writing = [asyncio.create_task(writer(d, n, 60)) for d, n in zip(docs, "ab")]
        await asyncio.sleep(0.4)
        ended = await _terminate(db, "tandem node-1%")
        assert ended >= 2, "the node's pool, its writers' and its LISTEN connection"
        docs[0].text.insert(len(docs[0].text), "<probe>")
        await until(lambda: _flushed(docs[:1]), "node 1's writes resume")
        tokens = [t for batch in await asyncio.gather(*writing) for t in batch] + ["<probe>"]
        await asyncio.gather(*(d.flushed(DEADLINE_S) for d in docs))
        await docs[1].wait_for(lambda d: all(t in str(d.text) for t in tokens), timeout_s=DEADLINE_S)
        assert miscounted(str(docs[1].text), tokens) == {}
        assert await replayed_text(db, docs[0].doc_id) == str(docs[1].text)
        assert redundant_rows(await operation_rows(db, docs[0].doc_id)) == []
    assert await health(one) == 200


async def _all_equal(checks: list, value: int) -> bool:
    return all(result == value for result in await asyncio.gather(*checks))


async def _flushed(docs: list[tandem_client.Document]) -> bool:
    return all(d.pending == 0 for d in docs)


async def _logged(db: TestDatabase, doc_id: str, token: str) -> bool:
    try:
        return token in await replayed_text(db, doc_id)
    except (OSError, asyncpg.PostgresError):
        return False


async def _terminate(db: TestDatabase, application_name: str) -> int:
    conn = await asyncpg.connect(db.admin_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE $1) ended",
                application_name,
            )
        )
    finally:
        await conn.close()
