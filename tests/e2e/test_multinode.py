"""Fan-out across nodes end to end (docs/protocol.md sections 6.1-6.3, server/cluster/fanout.py): clients
on several `tandem serve` nodes sharing one PostgreSQL converge on the log's content and each
receive one ordered stream per document, through a node killed with SIGKILL and through a lost
LISTEN connection; an update sent on one node reaches a client of another."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import TENANT_A
from tests.e2e.conftest import eventually, operation_rows, replay, shared_doc, text_of
from tests.e2e.multinode_helpers import (
    Client,
    Disconnected,
    Nodes,
    assert_in_order,
    health,
    kill_9,
    listen_backends,
    metric,
    terminate_backend,
)

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestDatabase


async def connect_spread(nodes: Nodes, count: int, nodes_used: int) -> list[Client]:
    """`count` clients, client i on node i % nodes_used (checked against its hello)."""
    clients = [Client(f"agent-{i}", TENANT_A) for i in range(count)]
    for i, client in enumerate(clients):
        await client.connect(nodes.url(i % nodes_used))
        assert client.node_id == f"node-{i % nodes_used + 1}"
    return clients


def assert_acknowledged_in_log(clients: Sequence[Client], rows: Sequence[Any]) -> int:
    """The log's seqs are 1..N (N returned); every seq given in a doc.update.ok is one row
    holding exactly the acknowledged update, and no seq was given twice (docs/protocol.md#61)."""
    by_seq = {r["sequence_number"]: bytes(r["update"]) for r in rows}
    head = len(rows)
    assert sorted(by_seq) == list(range(1, head + 1))
    acked = [a for c in clients for a in c.acked if a.seq is not None]
    seqs = [a.seq for a in acked]
    assert len(seqs) == len(set(seqs)), "a seq was acknowledged twice"
    for a in acked:
        assert by_seq.get(a.seq) == a.update, f"acknowledged seq {a.seq} (on {a.node_id}) is not that update in the log"
    return head


async def assert_converged(db: TestDatabase, doc_id: str, clients: Sequence[Client], head: int) -> None:
    """Every client reached `head`, holds the same text, and that text is the log replayed."""
    for c in clients:
        assert c.doc is not None
        await c.doc.wait_for(lambda d: d.last_seq >= head, timeout_s=30)
    texts = {c.name: str(c.doc.text) for c in clients if c.doc is not None}
    rows = await operation_rows(db, doc_id)
    assert len(rows) == head
    logged = text_of(replay([bytes(r["update"]) for r in rows]))
    assert set(texts.values()) == {logged}, {name: t == logged for name, t in texts.items()}


async def test_clients_on_three_nodes_converge_and_each_sees_every_seq_once_in_order(nodes: Nodes, db: TestDatabase) -> None:
    nodes.start(3)
    clients = await connect_spread(nodes, 6, 3)
    edits_each = 50
    try:
        owner = clients[0]
        ws_id, doc_id = await shared_doc(owner.agent)  # type: ignore[arg-type]
        for c in clients[:5]:
            await c.open(ws_id, doc_id)

        async def open_late_and_write(late: Client) -> None:
            # Opens on node 3 while the others are writing: its reply lands mid-stream.
            await owner.doc.wait_for(lambda d: d.last_seq >= 60)  # type: ignore[union-attr]
            await late.open(ws_id, doc_id)
            await late.write(random.Random(105), edits_each)

        await asyncio.gather(
            *(c.write(random.Random(100 + i), edits_each) for i, c in enumerate(clients[:5])),
            open_late_and_write(clients[5]),
        )

        rows = await operation_rows(db, doc_id)
        head = assert_acknowledged_in_log(clients, rows)
        acked = sorted(a.seq for c in clients for a in c.acked if a.seq is not None)
        assert acked == list(range(1, head + 1)), "a logged operation was never acknowledged"
        assert {a.node_id for c in clients for a in c.acked} == {"node-1", "node-2", "node-3"}
        assert {r["agent_id"] for r in rows} == {c.name for c in clients}

        await assert_converged(db, doc_id, clients, head)
        assert clients[5].doc.synced_seq >= 60  # type: ignore[union-attr]
        for node in nodes.nodes:
            assert await metric(node, "tandem_fanout_notifications_total", kind="ops") > 0
            assert await metric(node, "tandem_catch_up_reads_total") > 0
        for c in clients:
            assert c.doc is not None
            assert_in_order(c.name, c.doc.synced_seq, c.doc.seqs, c.doc.early, head)
            # Its own updates came back as acks, in the same stream.
            assert set(c.doc.acked.values()) - {None} <= set(c.doc.seqs)
    finally:
        for c in clients:
            await c.close()


async def test_kill_9_of_a_node_mid_stream_loses_no_acknowledged_update_and_its_clients_move(
    nodes: Nodes, db: TestDatabase
) -> None:
    nodes.start(3)
    clients = await connect_spread(nodes, 6, 3)
    doomed = [c for c in clients if c.node_id == "node-3"]
    survivors = [c for c in clients if c not in doomed]
    killed = asyncio.Event()
    acks_after_kill: dict[str, int] = {}
    try:
        ws_id, doc_id = await shared_doc(clients[0].agent)  # type: ignore[arg-type]
        for c in clients:
            await c.open(ws_id, doc_id)

        async def survive(c: Client, rng: random.Random) -> None:
            # Writes without pause until the kill, then 40 more: its node keeps serving.
            await c.write(rng, 2000, keep_going=lambda: not killed.is_set())
            before = len(c.acked)
            await c.write(rng, 40)
            acks_after_kill[c.name] = len(c.acked) - before

        async def fail_over(c: Client, rng: random.Random, fallback_url: str) -> None:
            with pytest.raises(Disconnected):
                await c.write(rng, 1000)  # killed long before the end
            await c.move_to(fallback_url)
            await c.write(rng, 30)

        async def kill_node_3() -> None:
            for c in doomed:  # they keep writing with updates in flight
                await c.doc.wait_for(lambda d: len(d.acked) >= 30)  # type: ignore[union-attr]
            kill_9(nodes[2])
            killed.set()

        await asyncio.gather(
            *(survive(c, random.Random(200 + i)) for i, c in enumerate(survivors)),
            *(fail_over(c, random.Random(300 + i), nodes.url(i)) for i, c in enumerate(doomed)),
            kill_node_3(),
        )

        assert acks_after_kill == {c.name: 40 for c in survivors}
        for c in doomed:
            assert c.node_id in ("node-1", "node-2")
            assert len(c.past) == 1 and c.past[0].node_id == "node-3"
            assert any(a.seq is not None for a in c.acked if a.node_id == "node-3")

        rows = await operation_rows(db, doc_id)
        head = assert_acknowledged_in_log(clients, rows)
        await assert_converged(db, doc_id, clients, head)
        for node in nodes.nodes[:2]:
            assert (await health(node))["status"] == "ok"
        for c in clients:
            assert c.doc is not None
            for past in c.past:  # the session on the killed node, up to where it ended
                assert_in_order(f"{c.name}@{past.node_id}", past.synced_seq, past.seqs, past.early, None)
            assert_in_order(c.name, c.doc.synced_seq, c.doc.seqs, c.doc.early, head)
    finally:
        for c in clients:
            await c.close()


async def test_terminated_listen_connection_reconnects_and_its_clients_miss_nothing(nodes: Nodes, db: TestDatabase) -> None:
    # One node at a time, so the second node's LISTEN backend is the one that appears with it.
    (node_1,) = nodes.start(1)
    await eventually(lambda: _listening(node_1), timeout_s=10)
    before = await eventually(lambda: listen_backends(db), timeout_s=10)
    (node_2,) = nodes.start(1)
    await eventually(lambda: _listening(node_2), timeout_s=10)
    (listener,) = await eventually(lambda: _new_backends(db, before), timeout_s=10)

    writer = await Client("writer", TENANT_A).connect(nodes.url(0))
    reader = await Client("reader", TENANT_A).connect(nodes.url(1))  # learns only through fan-out
    reconnected = asyncio.Event()
    try:
        ws_id, doc_id = await shared_doc(writer.agent)  # type: ignore[arg-type]
        await writer.open(ws_id, doc_id)
        r = await reader.open(ws_id, doc_id)

        async def cut_node_2s_listen() -> None:
            await r.wait_for(lambda d: d.last_seq >= 40)
            assert await terminate_backend(db, listener)
            body = await eventually(lambda: _listening(node_2, min_reconnects=1), timeout_s=20)
            assert body["listen"]["reconnects"] == 1
            reconnected.set()

        # The writer writes on until node 2 listens again: the cut falls mid-stream.
        await asyncio.gather(
            writer.write(random.Random(400), 1000, keep_going=lambda: not reconnected.is_set()),
            cut_node_2s_listen(),
        )
        assert reconnected.is_set(), "the writer ran out of edits before node 2 listened again"
        assert listener not in await listen_backends(db)
        written = max(a.seq for a in writer.acked if a.seq is not None)
        await r.wait_for(lambda d: d.last_seq >= written, timeout_s=30)

        # Hints flow again: new updates reach node 2 by NOTIFY.
        hints = await metric(node_2, "tandem_fanout_notifications_total", kind="ops")
        await writer.write(random.Random(401), 30)
        rows = await operation_rows(db, doc_id)
        head = assert_acknowledged_in_log([writer], rows)
        await assert_converged(db, doc_id, [writer, reader], head)
        assert_in_order("reader", r.synced_seq, r.seqs, r.early, head)
        assert await metric(node_2, "tandem_fanout_notifications_total", kind="ops") > hints
        assert await metric(node_2, "tandem_listen_up") == 1
        assert (await health(node_1))["listen"] == {"up": True, "reconnects": 0}
    finally:
        await writer.close()
        await reader.close()


async def test_update_sent_on_one_node_reaches_a_client_of_another_by_notify(nodes: Nodes) -> None:
    # No periodic head check within the test: only the NOTIFY hint can bring the update over.
    nodes.start(2, TANDEM_FANOUT_CHECK_INTERVAL_S="3600")
    alice, bob = await connect_spread(nodes, 2, 2)
    try:
        ws_id, doc_id = await shared_doc(alice.agent)  # type: ignore[arg-type]
        a, b = await alice.open(ws_id, doc_id), await bob.open(ws_id, doc_id)
        ack = await a.edit(lambda t: t.insert(0, "from node 1"))
        op = await bob.agent.event(lambda f: f["type"] == "doc.op" and f["seq"] == ack["seq"], timeout_s=10)  # type: ignore[union-attr]
        assert op["agent_id"] == "agent-0" and str(b.text) == "from node 1"

        ack = await b.edit(lambda t: t.insert(len(t), ", from node 2"))
        op = await alice.agent.event(lambda f: f["type"] == "doc.op" and f["seq"] == ack["seq"], timeout_s=10)  # type: ignore[union-attr]
        assert op["agent_id"] == "agent-1" and str(a.text) == "from node 1, from node 2"
        for node in nodes.nodes:
            assert await metric(node, "tandem_fanout_notifications_total", kind="ops") >= 1
            assert await metric(node, "tandem_fanout_lag_seconds_count") >= 1
        # Small updates ride in the hint: node 2 applied alice's without reading the log. A large
        # one does not fit a NOTIFY payload: node 2 reads it back from the log.
        reads = await metric(nodes[1], "tandem_catch_up_reads_total")
        ack = await a.edit(lambda t: t.insert(0, "x" * 3000))
        await bob.agent.event(lambda f: f["type"] == "doc.op" and f["seq"] == ack["seq"], timeout_s=10)  # type: ignore[union-attr]
        assert await metric(nodes[1], "tandem_catch_up_reads_total") == reads
        ack = await a.edit(lambda t: t.insert(0, "y" * 9000))
        await bob.agent.event(lambda f: f["type"] == "doc.op" and f["seq"] == ack["seq"], timeout_s=10)  # type: ignore[union-attr]
        assert await metric(nodes[1], "tandem_catch_up_reads_total") > reads
        assert str(b.text) == str(a.text)
    finally:
        await alice.close()
        await bob.close()


async def _listening(node: Any, min_reconnects: int = 0) -> dict[str, Any] | None:
    body = await health(node)
    listen = body["listen"]
    return body if listen["up"] and listen["reconnects"] >= min_reconnects else None


async def _new_backends(db: TestDatabase, before: set[int]) -> set[int]:
    return await listen_backends(db) - before
