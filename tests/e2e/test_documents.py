"""Real-time documents end to end (docs/protocol.md sections 5.5 and 6): concurrent writers
converge on the log's content, every session sees one ordered stream per document, rooms load
once and leave memory when idle."""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import string
import uuid
from dataclasses import dataclass
from typing import Any

from pycrdt import Text

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import (
    Tandem,
    admin_fetch,
    eventually,
    insert_history,
    log_events,
    operation_rows,
    replay,
    replayed_text,
    shared_doc,
    text_of,
    typed_history,
)


def random_edit(rng: random.Random, tag: str) -> Any:
    """An edit of a Text: insert a few letters, or delete a short range (ASCII: one unit a char)."""

    def edit(text: Text) -> None:
        length = len(text)
        if length > 0 and rng.random() < 0.4:
            start = rng.randrange(length)
            del text[start : min(length, start + rng.randint(1, 5))]
        else:
            letters = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 6)))
            text.insert(rng.randint(0, length), tag + letters)

    return edit


@dataclass
class Sent:
    update: bytes
    reply: dict[str, Any]


async def write_randomly(doc: wsclient.SyncedDoc, rng: random.Random, count: int, tag: str) -> list[Sent]:
    """Send `count` random edits without waiting for replies (or for anyone else's ops)."""
    sent = []
    for _ in range(count):
        _, update, fut = await doc.send_edit(random_edit(rng, tag))
        sent.append((update, fut))
    async with asyncio.timeout(60):
        return [Sent(update, await fut) for update, fut in sent]


def assert_acked(sent: list[Sent], rows: list[Any]) -> int:
    """Every edit was acknowledged, the seqs given are the log's 1..N (N returned), and each
    acknowledged update is its row. A delete of text someone else deleted first holds nothing new:
    its ack has seq null (docs/protocol.md#55), and the log must already hold what it does."""
    bad = [s.reply for s in sent if s.reply["type"] != "doc.update.ok"]
    assert bad == []
    by_seq = {r["sequence_number"]: bytes(r["update"]) for r in rows}
    seqs = sorted(s.reply["seq"] for s in sent if s.reply["seq"] is not None)
    assert seqs == list(range(1, len(seqs) + 1)) == sorted(by_seq)
    for s in sent:
        if s.reply["seq"] is not None:
            assert by_seq[s.reply["seq"]] == s.update
    logged = replay(list(by_seq.values()))
    before = (logged.get_state(), text_of(logged))
    for s in sent:
        if s.reply["seq"] is None:
            logged.apply_update(s.update)
            assert (logged.get_state(), text_of(logged)) == before, "an update acknowledged with seq null was new"
    return len(seqs)


def assert_one_ordered_stream(doc: wsclient.SyncedDoc, head: int) -> None:
    """docs/protocol.md#62: after the open reply at S, every seq S+1..head exactly once, in order."""
    early = [(f["type"], f["seq"]) for f in doc.early]
    assert early == [], (
        f"{len(early)} events overtook the open reply (seq {doc.synced_seq}): {early[:3]}...{early[-2:]},"
        f" then {doc.seqs[:3]}"
    )
    assert doc.synced_seq is not None
    assert doc.seqs == list(range(doc.synced_seq + 1, head + 1))


async def test_two_agents_random_concurrent_edits_converge_to_the_replayed_log(tandem: Tandem) -> None:
    tandem.start()
    edits_each = 300
    async with tandem.agent(TENANT_A, "alice") as alice, tandem.agent(TENANT_A, "bob") as bob:
        _, doc_id = await shared_doc(alice, bob)
        a, b = await alice.open(doc_id), await bob.open(doc_id)

        from_a, from_b = await asyncio.gather(
            write_randomly(a, random.Random(1), edits_each, "A"),
            write_randomly(b, random.Random(2), edits_each, "B"),
        )

        rows = await operation_rows(tandem.db, doc_id)
        total = assert_acked(from_a + from_b, rows)
        await a.wait_for(lambda d: d.last_seq == total)
        await b.wait_for(lambda d: d.last_seq == total)
        assert str(a.text) == str(b.text)
        assert "A" in str(a.text) and "B" in str(a.text)
        assert {r["agent_id"] for r in rows} == {"alice", "bob"}
        assert text_of(replay([bytes(r["update"]) for r in rows])) == str(a.text)
        assert_one_ordered_stream(a, total)
        assert_one_ordered_stream(b, total)


async def test_five_concurrent_writers_each_receive_every_seq_once_in_order(tandem: Tandem) -> None:
    tandem.start()
    writers, readers = 5, 5
    edits_each = 100
    agents = [tandem.agent(TENANT_A, f"writer-{i}") for i in range(writers)]
    agents += [tandem.agent(TENANT_A, f"reader-{i}") for i in range(readers)]
    for agent in agents:
        await agent.connect()
    try:
        _, doc_id = await shared_doc(*agents)

        async def open_and_write(i: int) -> list[Sent]:
            doc = await agents[i].open(doc_id)
            return await write_randomly(doc, random.Random(100 + i), edits_each, str(i))

        # Staggered: later writers, then readers, open while the others are writing, so their
        # open replies land in the middle of the stream, with commits in flight.
        tasks = []
        for i in range(writers):
            tasks.append(asyncio.create_task(open_and_write(i)))
            await agents[0].request("ping")  # a round trip between openings
        first = await eventually(lambda: agents[0].docs.get(doc_id))
        for k, reader in enumerate(agents[writers:], start=1):
            await first.wait_for(lambda d, k=k: len(d.acked) >= k * edits_each // (readers + 2))
            await reader.open(doc_id)
        sent = [s for batch in await asyncio.gather(*tasks) for s in batch]

        rows = await operation_rows(tandem.db, doc_id)
        total = assert_acked(sent, rows)

        docs = [agent.docs[doc_id] for agent in agents]
        for doc in docs:
            await doc.wait_for(lambda d: d.last_seq >= total)
        for doc in docs:
            assert_one_ordered_stream(doc, total)
            # Its own updates came back as acks: every ack's seq is in its stream.
            assert set(doc.acked.values()) - {None} <= set(doc.seqs)
            assert str(doc.text) == str(docs[0].text)
        assert text_of(replay([bytes(r["update"]) for r in rows])) == str(docs[0].text)
    finally:
        for agent in agents:
            await agent.close()


async def test_batched_frames_carry_the_same_ordered_stream_and_only_to_clients_that_asked(tandem: Tandem) -> None:
    """docs/protocol.md section 3: a client whose hello asked for batches gets JSON arrays of
    messages under load; the stream in them is the same (every seq once, in order, acks
    matched); a client that did not ask never gets an array."""
    tandem.start()
    writer = tandem.agent(TENANT_A, "batch-writer")
    writer.batch = True
    batched_reader = tandem.agent(TENANT_A, "batch-reader")
    batched_reader.batch = True
    plain_reader = tandem.agent(TENANT_A, "plain-reader")
    agents = [writer, batched_reader, plain_reader]
    for agent in agents:
        await agent.connect()
    try:
        _, doc_id = await shared_doc(*agents)
        docs = [await agent.open(doc_id) for agent in agents]
        sent = await write_randomly(docs[0], random.Random(7), 300, "b")
        total = assert_acked(sent, await operation_rows(tandem.db, doc_id))
        for doc in docs[1:]:
            await doc.wait_for(lambda d: d.last_seq >= total)
            assert_one_ordered_stream(doc, total)
            assert str(doc.text) == str(docs[0].text)
        assert writer.batched_frames > 0 and batched_reader.batched_frames > 0
        assert plain_reader.batched_frames == 0
    finally:
        for agent in agents:
            await agent.close()


async def test_a_client_frame_may_batch_messages_and_each_is_handled_as_if_alone(tandem: Tandem) -> None:
    """docs/protocol.md section 3: a client whose hello asked for batches may send a JSON array
    of messages in one frame. Each gets its own reply, in order: valid updates are committed
    and acknowledged with consecutive seqs, a corrupt one gets `invalid_update` and nothing is
    stored for it, a ping is answered; the other subscriber sees the committed ones."""
    tandem.start()
    writer = tandem.agent(TENANT_A, "batching-sender")
    writer.batch = True
    reader = tandem.agent(TENANT_A, "plain-watcher")
    for agent in (writer, reader):
        await agent.connect()
    try:
        _, doc_id = await shared_doc(writer, reader)
        doc, watching = await writer.open(doc_id), await reader.open(doc_id)
        first = doc.local_update(lambda t: t.insert(0, "one "))
        second = doc.local_update(lambda t: t.insert(len(t), "two"))
        futures = await writer.send_batch([
            {"type": "doc.update", "doc_id": doc_id, "update": wsclient.b64(first)},
            {"type": "doc.update", "doc_id": doc_id, "update": wsclient.b64(b"\xff\xff\xff\xff")},
            {"type": "ping"},
            {"type": "doc.update", "doc_id": doc_id, "update": wsclient.b64(second)},
        ])  # fmt: skip
        replies = [await asyncio.wait_for(future, 30) for future in futures]
        assert [r["type"] for r in replies] == ["doc.update.ok", "error", "pong", "doc.update.ok"]
        assert replies[1]["code"] == "invalid_update"
        assert (replies[0]["seq"], replies[3]["seq"]) == (1, 2)
        await watching.wait_for(lambda d: d.last_seq == 2)
        assert str(watching.text) == "one two"
        assert [row["sequence_number"] for row in await operation_rows(tandem.db, doc_id)] == [1, 2]
    finally:
        for agent in (writer, reader):
            await agent.close()


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer_and_resyncs_on_reconnect(tandem: Tandem) -> None:
    """docs/protocol.md section 8, `send_queue_len`: a session whose outgoing queue is full is
    closed with `slow_consumer` (4408); the writer is not held up, nothing is lost, and the slow
    client gets what it missed when it reconnects with its state vector."""
    server = tandem.start(TANDEM_SEND_QUEUE_LEN="8")
    # The slow client stops reading its socket; with a small receive buffer the server's writes
    # back up after a few megabytes (the server's socket buffer).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    slow = wsclient.Agent(tandem.url, wsclient.token(TENANT_A, "slow"), connect_options={"sock": sock})
    async with tandem.agent(TENANT_A, "writer") as writer, slow:
        ws_id, doc_id = await shared_doc(writer, slow)
        doc, lagging = await writer.open(doc_id), await slow.open(doc_id)
        await slow.stop_reading()

        rng = random.Random(7)
        for sent in range(1, 301):  # bounded: the queue fills long before
            # ~44 KB of base64 per doc.op that permessage-deflate cannot shrink much
            chunk = "".join(rng.choices(string.ascii_letters, k=32_768))
            ack = await doc.edit(lambda t: t.insert(len(t), chunk))
            assert ack["seq"] == sent  # the writer is served throughout
            if sent % 10 == 0 and log_events(server, "session.closing", reason="slow_consumer"):
                break
        (closing,) = log_events(server, "session.closing", reason="slow_consumer")
        assert closing["code"] == 4408
        assert 'tandem_slow_consumers_total 1.0' in server.get("/metrics").text

        # Reading again, the slow client finds its session over (the error and the close frame
        # are best effort: they wait behind everything its socket had not taken).
        assert await slow.read_until_closed() in (4408, 1006)
        assert len(str(lagging.text)) < len(str(doc.text))

        async with tandem.agent(TENANT_A, "slow") as again:
            await again.request("workspace.join", workspace_id=ws_id)
            caught_up = await again.open(doc_id, lagging)  # its state vector: only what it missed
            assert str(caught_up.text) == str(doc.text) == await replayed_text(tandem.db, doc_id)
            assert (await writer.request("ping"))["type"] == "pong"


async def test_open_without_a_state_vector_gets_the_whole_document(tandem: Tandem) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice, tandem.agent(TENANT_A, "bob") as bob:
        _, doc_id = await shared_doc(alice, bob)
        a = await alice.open(doc_id)
        await a.edit(lambda t: t.insert(0, "hello"))
        await a.edit(lambda t: t.insert(5, " world"))
        # docs/protocol.md#55: state_vector is optional; empty or absent means "I have nothing".
        for fields in ({}, {"state_vector": ""}):
            reply = await bob.request("doc.open", doc_id=doc_id, **fields)
            assert reply["seq"] == 2
            assert text_of(replay([base64.b64decode(reply["update"])])) == "hello world"
        # A resync from an up-to-date copy brings nothing new (docs/protocol.md#63).
        reply = await alice.request("doc.resync", doc_id=doc_id, state_vector=wsclient.b64(a.doc.get_state()))
        assert reply["seq"] == 2
        assert base64.b64decode(reply["update"])[:1] == b"\x00"
        assert str(a.text) == "hello world"


async def test_two_clients_opening_a_cold_document_share_one_load(tandem: Tandem) -> None:
    server = tandem.start()
    history = 3000  # enough that the load takes a while: both opens arrive during it
    async with tandem.agent(TENANT_A, "alice") as one, tandem.agent(TENANT_A, "bob") as two:
        _, doc_id = await shared_doc(one, two)
        await insert_history(tandem.db, TENANT_A, doc_id, typed_history(history))
        expected = await replayed_text(tandem.db, doc_id)

        first, second = await asyncio.gather(one.open(doc_id), two.open(doc_id))
        assert str(first.text) == str(second.text) == expected
        assert first.synced_seq == second.synced_seq == history
    loads = log_events(server, "room.loaded", doc_id=doc_id)
    assert len(loads) == 1, loads
    assert (loads[0]["tenant_id"], loads[0]["ops"]) == (str(TENANT_A), history)


async def test_document_without_subscribers_is_unloaded_and_its_content_stored(tandem: Tandem) -> None:
    server = tandem.start(TANDEM_ROOM_IDLE_TIMEOUT_S="1", TANDEM_CONTENT_DEBOUNCE_S="3600")
    async with tandem.agent(TENANT_A, "alice") as alice:
        _, doc_id = await shared_doc(alice)
        (before,) = await admin_fetch(
            tandem.db, "SELECT content, version FROM shared_documents WHERE id = $1", uuid.UUID(doc_id)
        )
        doc = await alice.open(doc_id)
        await doc.edit(lambda t: t.insert(0, "hello world"))
        await doc.edit(lambda t: t.insert(5, ","))
        assert log_events(server, "room.unloaded", doc_id=doc_id) == []  # a subscriber keeps it
        await alice.request("doc.close", doc_id=doc_id)

        unloaded = await eventually(lambda: log_events(server, "room.unloaded", doc_id=doc_id), timeout_s=15)
        assert unloaded[0]["head_seq"] == 2
        (after,) = await admin_fetch(
            tandem.db, "SELECT content, version FROM shared_documents WHERE id = $1", uuid.UUID(doc_id)
        )
        assert after["content"] == "hello, world" == await replayed_text(tandem.db, doc_id)
        assert after["version"] > before["version"]

        # Opening it again loads it again, from the database.
        again = await alice.open(doc_id, wsclient.SyncedDoc(doc_id))
        assert str(again.text) == "hello, world"
        assert len(log_events(server, "room.loaded", doc_id=doc_id)) == 2
