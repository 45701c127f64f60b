"""The y-websocket endpoint end to end (docs/protocol.md section 11): real Yjs editors
(y-websocket's WebsocketProvider in Node, tests/node/yclient.mjs) and JSON-protocol agents edit
the same documents, through one durable log, across restarts and nodes; awareness is relayed;
refusals close with a code and a reason and store nothing."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import websockets
from pycrdt import Doc, Encoder, Text, create_awareness_message, create_update_message

from server.wire.y_protocols import sync_step1_message
from tests import wsclient
from tests.conftest import TENANT_A, TENANT_B
from tests.e2e.conftest import (
    Tandem,
    eventually,
    operation_count,
    operation_rows,
    replayed_text,
    shared_doc,
)
from tests.e2e.editors import Editors, base_url, tok
from tests.serverproc import server_env


async def raw_session(url: str, frames: list[bytes | str], timeout_s: float = 15) -> tuple[int | None, str | None, list[bytes]]:
    """Connect, send `frames`, read until the server closes: (close code, reason, frames received)."""
    received: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        async with websockets.connect(url, max_size=None) as ws:
            try:
                for frame in frames:
                    await ws.send(frame)
                async for message in ws:
                    received.append(message)  # type: ignore[arg-type]
            except websockets.ConnectionClosed:
                pass
            return ws.close_code, ws.close_reason, received


def boundaries(text: str) -> list[int]:
    """Where a token may go without splitting another: the start, and after each `>`."""
    return [0] + [i + 1 for i, c in enumerate(text) if c == ">"]


# --- editing together --------------------------------------------------------------------------


async def test_editors_and_an_agent_converge_and_the_content_survives_a_restart(tandem: Tandem, editors: Editors) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        a = await alice.open(doc_id)
        await a.edit(lambda t: t.insert(0, "agent was here. "))
        one, two = await asyncio.gather(
            editors.start(base_url(tandem), ws_id, doc_id, tok("editor-1")),
            editors.start(base_url(tandem), ws_id, doc_id, tok("editor-2")),
        )
        assert one.text == two.text == "agent was here. "

        # All three type at once, each token at a random token boundary, without waiting for
        # each other.
        rounds = 30
        rng = random.Random(8)
        sent = []
        for i in range(rounds):
            await one.insert(f"<1:{i}>", "boundary")
            await two.insert(f"<2:{i}>", "boundary")
            sent.append(await a.send_edit(lambda t, i=i: t.insert(rng.choice(boundaries(str(t))), f"<a:{i}>")))
        acks = [await asyncio.wait_for(fut, 30) for _, _, fut in sent]
        assert all(ack["type"] == "doc.update.ok" and ack["seq"] is not None for ack in acks)

        def complete(text: str) -> bool:
            return all(f"<{who}:{i}>" in text for who in "12a" for i in range(rounds))

        await a.wait_for(lambda d: complete(str(d.text)))
        await one.wait_for(lambda c: c.text == str(a.text))
        await two.wait_for(lambda c: c.text == str(a.text))
        expected = str(a.text)
        assert complete(expected) and expected.count("<") == 3 * rounds and "agent was here. " in expected

    # Every edit is one operation in the log, attributed to its author, and the log replays to it.
    rows = await operation_rows(tandem.db, doc_id)
    assert [r["sequence_number"] for r in rows] == list(range(1, len(rows) + 1))
    authors = [r["agent_id"] for r in rows]
    assert {a: authors.count(a) for a in set(authors)} == {"alice": rounds + 1, "editor-1": rounds, "editor-2": rounds}
    assert await replayed_text(tandem.db, doc_id) == expected

    await one.stop()
    await two.stop()
    tandem.restart()
    three = await editors.start(base_url(tandem), ws_id, doc_id, tok("editor-3"))
    assert three.text == expected
    assert await operation_count(tandem.db, doc_id) == len(rows)  # a fresh editor adds nothing


async def test_editors_on_two_nodes_converge(tandem: Tandem, editors: Editors) -> None:
    first = tandem.start()
    second = tandem.servers.start(env=server_env(DATABASE_URL=tandem.db.admin_url, TANDEM_JWT_SECRET=wsclient.SECRET, **tandem.env))
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    one, two = await asyncio.gather(
        editors.start(base_url(tandem, first), ws_id, doc_id, tok("editor-1")),
        editors.start(base_url(tandem, second), ws_id, doc_id, tok("editor-2")),
    )
    for i in range(20):
        await one.insert(f"<one {i}>", "boundary")
        await two.insert(f"<two {i}>", "boundary")
    await one.wait_for(lambda c: all(f"<two {i}>" in c.text for i in range(20)))
    await two.wait_for(lambda c: all(f"<one {i}>" in c.text for i in range(20)))
    await two.wait_for(lambda c: c.text == one.text)
    await one.wait_for(lambda c: c.text == two.text)
    assert await operation_count(tandem.db, doc_id) == 40
    assert await replayed_text(tandem.db, doc_id) == one.text


async def test_an_editor_that_vanishes_while_typing_breaks_nothing_for_the_others(tandem: Tandem, editors: Editors) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    watcher = await editors.start(base_url(tandem), ws_id, doc_id, tok("watcher"))
    # A raw client sends a burst of updates and leaves as soon as the first is stored, while
    # others are being committed: those commits finish, updates not yet checked are dropped.
    doc = Doc()
    text = doc.get("content", type=Text)
    burst = []
    for i in range(2000):
        before = doc.get_state()
        text.insert(len(text), f"<v{i}>")
        burst.append(create_update_message(doc.get_update(before)))
    async with websockets.connect(f"{base_url(tandem)}/yjs/{ws_id}/{doc_id}?token={tok('vanisher')}") as ws:
        for message in burst:
            await ws.send(message)
        await eventually(lambda: operation_count(tandem.db, doc_id))
    stored = await operation_count(tandem.db, doc_id)
    # The document goes on for everyone: a new editor's edit reaches the watcher, and both hold
    # exactly the log's content.
    late = await editors.start(base_url(tandem), ws_id, doc_id, tok("late"))
    await late.insert("<late>", 0)
    await watcher.wait_for(lambda c: c.text.startswith("<late>"))
    await late.wait_for(lambda c: c.text == watcher.text)
    logged = await replayed_text(tandem.db, doc_id)
    assert watcher.text == logged and logged.startswith("<late><v0>") and stored >= 1
    assert watcher.closes == [] and late.closes == []  # no stall and reconnect on a broken room


async def test_awareness_is_relayed_to_the_other_editors(tandem: Tandem, editors: Editors) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    one, two = await asyncio.gather(
        editors.start(base_url(tandem), ws_id, doc_id, tok("editor-1")),
        editors.start(base_url(tandem), ws_id, doc_id, tok("editor-2")),
    )
    one_id = str((await one.state())["clientID"])
    two_id = str((await two.state())["clientID"])

    await one.send(cmd="awareness", state={"user": {"name": "One", "color": "#f00"}, "cursor": 3})
    await two.wait_for(lambda c: c.awareness.get(one_id) == {"user": {"name": "One", "color": "#f00"}, "cursor": 3})
    await two.send(cmd="awareness", state={"user": {"name": "Zoë"}})
    await one.wait_for(lambda c: c.awareness.get(two_id) == {"user": {"name": "Zoë"}})

    # A newcomer gets the current states at once; a client that leaves is removed for the others.
    three = await editors.start(base_url(tandem), ws_id, doc_id, tok("editor-3"))
    await three.wait_for(lambda c: c.awareness.get(one_id, {}).get("cursor") == 3 and two_id in c.awareness)
    assert three.awareness[two_id] == {"user": {"name": "Zoë"}}
    await one.stop()
    await two.wait_for(lambda c: one_id not in c.awareness)
    await three.wait_for(lambda c: one_id not in c.awareness and two_id in c.awareness)
    assert await operation_count(tandem.db, doc_id) == 0  # awareness is not stored


# --- roles and refusals ------------------------------------------------------------------------


async def test_a_viewer_reads_but_its_edits_are_refused_and_not_stored(tandem: Tandem, editors: Editors) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice, visibility="private")
        conn = await asyncpg.connect(tandem.db.admin_url)
        try:
            await conn.execute(
                "INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role) VALUES ($1, 'vera', $2, 'viewer')",
                uuid.UUID(ws_id), TENANT_A,
            )
        finally:
            await conn.close()
        a = await alice.open(doc_id)
        await a.edit(lambda t: t.insert(0, "written by alice. "))

        viewer = await editors.start(base_url(tandem), ws_id, doc_id, tok("vera"))
        assert viewer.text == "written by alice. "
        before = await operation_count(tandem.db, doc_id)
        await viewer.insert("VIEWER EDIT ")
        await viewer.wait_for(lambda c: len(c.denied) == 1)
        assert viewer.denied == ["forbidden: read-only access (viewer)"]

        # The viewer stays connected and keeps reading; nobody else sees its edit.
        await a.edit(lambda t: t.insert(len(t), "more by alice."))
        await viewer.wait_for(lambda c: "more by alice." in c.text)
        assert viewer.closes == []
        assert await operation_count(tandem.db, doc_id) == before + 1
        assert "VIEWER" not in await replayed_text(tandem.db, doc_id)
        assert "VIEWER" not in str(a.text)


async def test_bad_expired_and_missing_tokens_and_unknown_documents_are_refused(tandem: Tandem, editors: Editors) -> None:
    tandem.start(TANDEM_JWT_LEEWAY_S="0")
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        private_ws, private_doc = await shared_doc(alice, visibility="private")
    base = base_url(tandem)

    # A real WebsocketProvider gets the code and reason, and does not reconnect (44xx).
    bad = await editors.start(base, ws_id, doc_id, "not-a-token", synced=False)
    await bad.wait_for(lambda c: c.closed is not None)
    closed = (4401, "unauthorized: malformed")
    assert bad.closed == closed and bad.closes == [closed]
    expired = await editors.start(base, ws_id, doc_id, tok("editor", ttl_s=-60), synced=False)
    await expired.wait_for(lambda c: c.closed is not None)
    assert expired.closed == (4440, "token_expired")
    # The documented recovery (docs/protocol.md#11): a fresh token in `params`, then connect().
    await expired.send(cmd="reconnect", token=tok("editor"))
    await expired.wait_for(lambda c: c.synced == 1)

    # A token that expires during the connection closes it then, with the same code.
    short = await editors.start(base, ws_id, doc_id, tok("editor", ttl_s=2))
    await short.wait_for(lambda c: c.closed is not None, timeout_s=15)
    assert short.closed == (4440, "token_expired")

    url = f"{base}/yjs/{ws_id}/{doc_id}"
    assert (await raw_session(url, []))[:2] == (4401, "unauthorized: missing")
    assert (await raw_session(f"{url}?token={tok('x', secret='another-secret-0123456789abcdef0123456789')}", []))[:2] == (4401, "unauthorized: bad_signature")
    assert (await raw_session(f"{base}/yjs/{ws_id}/{uuid.uuid4()}?token={tok('x')}", []))[:2] == (4404, "not_found")
    assert (await raw_session(f"{base}/yjs/{private_ws}/{doc_id}?token={tok('x')}", []))[:2] == (4404, "not_found")
    assert (await raw_session(f"{base}/yjs/{ws_id}/not-a-uuid?token={tok('x')}", []))[:2] == (4404, "not_found")
    assert (await raw_session(f"{url}?token={tok('x', tenant=TENANT_B)}", []))[:2] == (4404, "not_found")
    assert (await raw_session(f"{base}/yjs/{private_ws}/{private_doc}?token={tok('mallory')}", []))[:2] == (4403, "forbidden")
    assert await operation_count(tandem.db) == 0


def awareness_of(clients: int) -> bytes:
    """An awareness message setting a state for `clients` new client ids."""
    encoder = Encoder()
    encoder.write_var_uint(clients)
    for client_id in range(1, clients + 1):
        encoder.write_var_uint(client_id)
        encoder.write_var_uint(1)
        encoder.write_var_string('{"user":"x"}')
    return create_awareness_message(encoder.to_bytes())


def awareness_message(client_id: int, clock: int, state: dict[str, object]) -> bytes:
    """An awareness message setting one client's state, as compact JSON (as Yjs writes it)."""
    encoder = Encoder()
    encoder.write_var_uint(1)
    encoder.write_var_uint(client_id)
    encoder.write_var_uint(clock)
    encoder.write_var_string(json.dumps(state, separators=(",", ":")))
    return create_awareness_message(encoder.to_bytes())


def _update(fn: Callable[[Text], None]) -> bytes:
    doc = Doc()
    text = doc.get("content", type=Text)
    fn(text)
    return doc.get_update(b"\x00")


async def test_corrupt_malformed_and_oversized_messages_close_the_connection_and_store_nothing(tandem: Tandem) -> None:
    tandem.start(TANDEM_MAX_FRAME_BYTES="65536", TANDEM_FRAME_HARD_LIMIT_BYTES="200000")
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    url = f"{base_url(tandem)}/yjs/{ws_id}/{doc_id}?token={tok('editor')}"
    valid = _update(lambda t: t.insert(0, "hello world, this is a valid update"))
    cases: list[tuple[bytes | str, int, str]] = [
        (create_update_message(valid[:-4]), 4422, "invalid_update"),  # truncated Yjs update
        (create_update_message(b"\x01\x02garbage that is no update"), 4422, "invalid_update"),
        (b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 4400, "invalid_message"),  # endless length
        (b"\x00\x02\x10abc", 4400, "invalid_message"),  # length beyond the frame
        (create_update_message(valid) + b"\x00", 4400, "invalid_message"),  # trailing bytes
        (b"\x00\x07\x01\x00", 4400, "invalid_message"),  # unknown sync message type
        (b"\x09", 4400, "invalid_message"),  # unknown message type
        (sync_step1_message(b"\xff\xff\xff"), 4400, "invalid_message"),  # corrupt state vector
        (b"\x01\x05\x01\x01\x00\x01x", 4400, "invalid_message"),  # awareness state not JSON
        (awareness_of(33), 4400, "limit_exceeded"),  # one connection owning 33 client ids
        (awareness_message(7, 1, {"blob": "x" * 8200}), 4413, "awareness_too_large"),  # max_awareness_bytes
        ("a text frame", 4400, "unsupported_frame"),
        (create_update_message(b"\x00" * 70_000), 4413, "frame_too_large"),
    ]
    for frame, code, reason in cases:
        got = await raw_session(url, [frame])
        assert got[:2] == (code, reason), f"{frame[:40]!r}: {got[:2]}"
    # Above the transport's hard limit the WebSocket layer refuses the frame itself (1009).
    assert (await raw_session(url, [b"\x00\x02" + b"\x00" * 250_000]))[0] == 1009
    assert await operation_count(tandem.db, doc_id) == 0

    # After all that the endpoint serves a well-behaved client as usual.
    async with websockets.connect(url) as ws:
        await ws.send(awareness_of(32))  # at the limit
        await ws.send(create_update_message(valid))
        await eventually(lambda: operation_count(tandem.db, doc_id))
        assert ws.close_code is None
    assert await replayed_text(tandem.db, doc_id) == "hello world, this is a valid update"


# --- awareness bridged to agent presence (docs/protocol.md#113) --------------------------------


async def test_editor_awareness_reaches_agent_presence_and_agent_awareness_reaches_editors(
    tandem: Tandem, editors: Editors
) -> None:
    import sys

    from tests.serverproc import REPO

    if str(REPO / "clients") not in sys.path:
        sys.path.insert(0, str(REPO / "clients"))
    import tandem_client

    tandem.start()
    async with tandem_client.connect(tandem.url, tok("alice")) as alice:
        info = await alice.create_workspace("Bridge", visibility="team")
        ws = await alice.join(info.workspace_id)
        doc = await ws.create_document("spec")
        opened = await ws.open(doc.doc_id)
        editor = await editors.start(base_url(tandem), info.workspace_id, doc.doc_id, tok("editor-1"))

        # The editor is a presence member with the document open...
        await ws.presence.wait_for(
            lambda p: [(m.agent_id, m.doc_ids) for m in p.others()] == [("editor-1", (doc.doc_id,))], timeout_s=10
        )
        # ... and its awareness state is its presence awareness about the document.
        cursor = {"user": {"name": "Ed", "color": "#0a0"}, "cursor": {"anchor": 5}}
        await editor.send(cmd="awareness", state=cursor)
        await ws.presence.wait_for(
            lambda p: [(m.awareness, m.awareness_doc_id) for m in p.others()] == [(cursor, doc.doc_id)], timeout_s=10
        )

        # The agent's awareness about the document reaches the editor as one more client.
        await opened.set_awareness({"cursor": {"anchor": 2}, "status": "reviewing"})
        seen = {"user": {"name": "alice"}, "cursor": {"anchor": 2}, "status": "reviewing"}
        await editor.wait_for(lambda c: seen in c.awareness.values())
        # A newcomer gets it at once; clearing it removes it for the editors.
        late = await editors.start(base_url(tandem), info.workspace_id, doc.doc_id, tok("editor-2"))
        await late.wait_for(lambda c: seen in c.awareness.values() and cursor in c.awareness.values())
        await opened.set_awareness(None)
        await editor.wait_for(lambda c: all(s.get("status") != "reviewing" for s in c.awareness.values()))
        await late.wait_for(lambda c: all(s.get("status") != "reviewing" for s in c.awareness.values()))

        # An editor that leaves leaves presence too.
        await editor.stop()
        await ws.presence.wait_for(lambda p: [m.agent_id for m in p.others()] == ["editor-2"], timeout_s=10)
    assert await operation_count(tandem.db, doc.doc_id) == 0  # awareness is never stored


async def test_an_agent_state_at_the_awareness_limit_reaches_editors_and_their_echo_is_not_refused(
    tandem: Tandem, editors: Editors
) -> None:
    """Editors re-send every awareness change they receive, and a state over
    `max_awareness_bytes` from an editor is refused: a bridged state stays within it, shown
    without the agent's name when the name would not fit."""
    tandem.start(TANDEM_MAX_AWARENESS_BYTES="1024")
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        await alice.open(doc_id)
        editor = await editors.start(base_url(tandem), ws_id, doc_id, tok("editor-1"))
        full = {"note": "x" * (1024 - len('{"note":""}'))}  # exactly at the limit
        await alice.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state=full)
        await editor.wait_for(lambda c: full in c.awareness.values())
        # The editor's echo was read before its next message, which still reaches the agent.
        await editor.send(cmd="awareness", state={"user": {"name": "Ed"}})
        await alice.event(lambda f: f["type"] == "awareness.changed" and f["state"] == {"user": {"name": "Ed"}})
        assert editor.closes == []


async def test_awareness_bridge_crosses_nodes_through_redis(db, redis_url: str, tmp_path: Path, editors: Editors) -> None:
    """An editor on node 1 and an agent on node 2 see each other's awareness (presence in Redis)."""
    from tests.e2e.multinode_helpers import Nodes
    from tests.serverproc import servers_for

    for servers in servers_for(tmp_path):
        nodes = Nodes(servers, db)
        one, two = nodes.start(2, REDIS_URL=redis_url)
        async with wsclient.Agent(nodes.url(1), tok("alice")) as alice:
            ws_id, doc_id = await shared_doc(alice)
            await alice.open(doc_id)
            editor = await editors.start(f"ws://{one.host}:{one.port}", ws_id, doc_id, tok("editor-1"))
            await editor.send(cmd="awareness", state={"user": {"name": "Ed"}, "cursor": 7})
            event = await alice.event(
                lambda f: f["type"] == "awareness.changed" and f["agent_id"] == "editor-1" and f["state"] is not None
            )
            assert (event["doc_id"], event["state"]) == (doc_id, {"user": {"name": "Ed"}, "cursor": 7})
            await alice.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state={"status": "typing"})
            await editor.wait_for(lambda c: {"user": {"name": "alice"}, "status": "typing"} in c.awareness.values())
