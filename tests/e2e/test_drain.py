"""Nothing received is ever lost (docs/protocol.md#44): every update a node read from a socket
is committed, or refused with a reason, however the connection ends."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
import termios
import time

import pytest
import tandem_client
import websockets
from pycrdt import Doc, Text, get_update
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import (
    Tandem,
    eventually,
    log_events,
    operation_rows,
    replayed_text,
    shared_doc,
)
from tests.e2e.editors import Editors, YClient, base_url, tok
from tests.e2e.test_sdk import FAST, miscounted
from tests.serverproc import server_env


def typed_updates(count: int) -> tuple[list[bytes], str]:
    """`count` one-character inserts at the end of the content text, and the text they make."""
    doc = Doc()
    text = doc.get("content", type=Text)
    updates = []
    for i in range(count):
        before = doc.get_state()
        text.insert(len(text), chr(ord("a") + i % 26))
        updates.append(doc.get_update(before))
    return updates, str(text)


async def flushed(sock: socket.socket, writer_buffer: int, timeout_s: float = 30) -> None:
    """Until the kernel has handed everything written to the peer (its send queue is empty)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if unsent == 0 and writer_buffer == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the client's data did not reach the server")


async def test_a_client_that_sends_2000_updates_and_resets_the_connection_loses_none(tandem: Tandem) -> None:
    tandem.start()
    count = 2000
    updates, expected = typed_updates(count)
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        ws = await websockets.connect(f"{tandem.url}?token={alice.token}", max_size=None)
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "workspace.join", "id": 0, "workspace_id": ws_id}))
        assert (await next_reply(ws))["type"] == "workspace.join.ok"
        await ws.send(json.dumps({"type": "doc.open", "id": 1, "doc_id": doc_id}))
        assert (await next_reply(ws))["type"] == "doc.open.ok"
        # Every update without waiting for an ack, then a reset: no close frame, and the acks the
        # server sent meanwhile are never read.
        for i, update in enumerate(updates):
            await ws.send(json.dumps({"type": "doc.update", "id": 10 + i, "doc_id": doc_id, "update": wsclient.b64(update)}))
        transport = ws.transport
        sock = transport.get_extra_info("socket")
        await flushed(sock, transport.get_write_buffer_size())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

        rows = await eventually(lambda: _rows_when(tandem, doc_id, count), timeout_s=60)
        assert [bytes(r["update"]) for r in rows] == updates  # each once, in the order sent
        assert await replayed_text(tandem.db, doc_id) == expected


async def next_reply(ws: websockets.ClientConnection) -> dict:
    """The next reply, past events (presence of the agent's other session may come first)."""
    while "re" not in (frame := json.loads(await ws.recv())):
        pass
    return frame


async def _rows_when(tandem: Tandem, doc_id: str, count: int) -> list | None:
    rows = await operation_rows(tandem.db, doc_id)
    return rows if len(rows) >= count else None


def letters(count: int, offset: int = 0) -> str:
    return "".join(chr(ord("a") + (offset + i) % 26) for i in range(count))


async def test_an_editor_that_closes_right_after_typing_3000_characters_loses_none(tandem: Tandem, editors: Editors) -> None:
    # A tab closed 300 ms after the last keystroke (y-websocket has no acks): five rounds.
    tandem.start()
    typed = letters(3000)
    async with tandem.agent(TENANT_A, "alice") as alice:
        for _ in range(5):
            ws_id, doc_id = await shared_doc(alice)
            typist = await editors.start(base_url(tandem), ws_id, doc_id, tok("typist"))
            await typist.type(typed)
            await asyncio.sleep(0.3)
            await typist.stop()
            reader = await editors.start(base_url(tandem), ws_id, doc_id, tok("reader"))
            await reader.wait_for(lambda c: c.text == typed, timeout_s=60)
            rows = await eventually(lambda: _rows_when(tandem, doc_id, len(typed)), timeout_s=30)
            assert len(rows) == len(typed)
            assert await replayed_text(tandem.db, doc_id) == typed
            await reader.stop()


async def test_the_rate_limit_paces_an_editor_without_losing_what_it_sent_before_closing(
    tandem: Tandem, editors: Editors
) -> None:
    # The bucket holds 50: the other 550 updates are read at once and handled at 500/s, after
    # the editor is gone.
    tandem.start(TANDEM_MAX_MESSAGES_PER_S="500", TANDEM_MAX_MESSAGE_BURST="50")
    typed = letters(600)
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
        typist = await editors.start(base_url(tandem), ws_id, doc_id, tok("typist"))
        await typist.type(typed)
        await asyncio.sleep(0.3)
        await typist.stop()
        rows = await eventually(lambda: _rows_when(tandem, doc_id, len(typed)), timeout_s=30)
        assert len(rows) == len(typed)
        assert await replayed_text(tandem.db, doc_id) == typed


async def test_two_editors_typing_and_one_leaving_once_it_has_everything_lose_nothing(
    tandem: Tandem, editors: Editors
) -> None:
    tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        for _ in range(5):
            ws_id, doc_id = await shared_doc(alice)
            one, two = await asyncio.gather(
                editors.start(base_url(tandem), ws_id, doc_id, tok("one")),
                editors.start(base_url(tandem), ws_id, doc_id, tok("two")),
            )
            await asyncio.gather(one.type(letters(300)), two.type(letters(300, 13).upper()))
            await one.wait_for(lambda c: len(c.text) == 600, timeout_s=30)
            await one.stop()  # leaves as soon as it has seen all 600
            await two.wait_for(lambda c: len(c.text) == 600, timeout_s=30)
            rows = await eventually(lambda: _rows_when(tandem, doc_id, 600), timeout_s=30)
            assert len(rows) == 600
            assert await replayed_text(tandem.db, doc_id) == two.text
            await two.stop()


def redundant_rows(rows: list) -> list[int]:
    """Sequence numbers of rows whose every struct the rows before them already hold: an update
    stored twice. (A row whose structs wait for a later one is not redundant: y-websocket sends
    what it types right after reconnecting on its own and again inside its sync answer.)"""
    doc, redundant = Doc(), []
    for row in rows:
        update = bytes(row["update"])
        has_structs = update[0] != 0  # v1 updates start with the number of clients with structs
        if has_structs and get_update(update, doc.get_state())[0] == 0:
            redundant.append(row["sequence_number"])
        doc.apply_update(update)
    return redundant


async def test_sigterm_settles_what_was_received_then_closes_with_1012_and_everyone_converges(
    tandem: Tandem, editors: Editors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem_client")
    server = tandem.start()
    url, count = tandem.url, 120
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    watcher = await tandem.agent(TENANT_A, "watcher").connect()
    await watcher.request("workspace.join", workspace_id=ws_id)
    async with (
        tandem_client.connect(url, tok("sdk-1"), **FAST) as one,
        tandem_client.connect(url, tok("sdk-2"), **FAST) as two,
    ):
        docs = [await (await c.join(ws_id)).open(doc_id) for c in (one, two)]
        yjs = [await editors.start(base_url(tandem), ws_id, doc_id, tok(f"editor-{i}")) for i in (1, 2)]

        async def sdk_writer(name: str, doc: tandem_client.Document) -> None:
            for i in range(count):
                doc.text.insert(len(doc.text), f"<{name}{i}>")
                await asyncio.sleep(0.01)

        async def editor_writer(name: str, editor: YClient) -> None:
            for i in range(count):
                await editor.insert(f"<{name}{i}>")
                await asyncio.sleep(0.01)

        writers = [asyncio.create_task(sdk_writer(f"s{i}", d)) for i, d in enumerate(docs)]
        writers += [asyncio.create_task(editor_writer(f"e{i}", e)) for i, e in enumerate(yjs)]
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(server.stop) == 0, server.log_tail()  # SIGTERM, mid-stream
        closed = log_events(server, "connections.closed")
        assert closed and closed[0]["still_open"] == 0, server.log_tail()
        assert await watcher.wait_closed() == (1012, "server_shutdown")
        frames = [watcher.events.get_nowait() for _ in range(watcher.events.qsize())]
        assert {"type": "session.closing", "code": 1012, "reason": "server_shutdown"}.items() <= frames[-1].items()

        tandem.servers.start(env=server_env(**server.env), port=server.port)  # the same address again
        await asyncio.gather(*writers)
        await asyncio.gather(*(d.flushed(30) for d in docs))
        markers = [f"<{w}{i}>" for w in ("s0", "s1", "e0", "e1") for i in range(count)]
        await docs[0].wait_for(lambda d: all(m in str(d.text) for m in markers), timeout_s=30)
        final = str(docs[0].text)
        await docs[1].wait_for(lambda d: str(d.text) == final, timeout_s=30)
        for editor in yjs:
            await editor.wait_for(lambda c: c.text == final, timeout_s=30)
            assert (1012, "server_shutdown") in editor.closes, (editor.closes, server.log_tail())
        assert miscounted(final, markers) == {}
        rows = await operation_rows(tandem.db, doc_id)
        assert await replayed_text(tandem.db, doc_id) == final
        redundant = redundant_rows(rows)
        assert redundant == [], [(r["sequence_number"], r["agent_id"]) for r in rows if r["sequence_number"] in redundant]
        sdk_closes = [r.close_code for r in caplog.records if r.getMessage() == "tandem_client.disconnected"]
        assert sdk_closes.count(1012) == 2, sdk_closes
    await watcher.close()


async def test_sigterm_commits_and_acknowledges_what_was_read_of_a_burst_before_closing(tandem: Tandem) -> None:
    # Reading stops at SIGTERM: what the node had read is committed and acknowledged before the
    # close; what it had not is neither (the client sends it again after reconnecting).
    server = tandem.start()
    updates, _ = typed_updates(2000)
    async with tandem.agent(TENANT_A, "alice") as alice:
        _, doc_id = await shared_doc(alice)
        await alice.request("doc.open", doc_id=doc_id)
        acks = [(await alice.send_request("doc.update", doc_id=doc_id, update=wsclient.b64(u)))[1] for u in updates]
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))  # SIGTERM while they are processed
        assert await alice.wait_closed(30) == (1012, "server_shutdown")
        assert await stopping == 0, server.log_tail()
        replies = [a.result() for a in acks if a.done() and a.exception() is None]
    stored = [bytes(r["update"]) for r in await operation_rows(tandem.db, doc_id)]
    assert stored == updates[: len(stored)]  # in the order sent, each once
    assert [r["type"] for r in replies] == ["doc.update.ok"] * len(stored)  # every one stored was acknowledged
    assert sorted(r["seq"] for r in replies) == list(range(1, len(stored) + 1))
    (closed,) = log_events(server, "connections.closed")
    assert closed["still_open"] == 0 and closed["unsettled"] == 0
    print(f"read before SIGTERM: {len(stored)} of {len(updates)}; settled after reading stopped: {closed['updates']}")


def slow_closing_client(url: str, reply_after_s: float, deadline_s: float = 30) -> dict:
    """A client like an editor on a busy machine: it keeps writing (a ping every 10 ms) and
    answers the server's close frame only `reply_after_s` later. Returns what it saw."""
    uri = parse_uri(url)
    proto = ClientProtocol(uri)
    sock = socket.create_connection((uri.host, uri.port), timeout=10)
    proto.send_request(proto.connect())
    sock.sendall(b"".join(proto.data_to_send()))
    ping = Frame(Opcode.PING, b"").serialize(mask=True, extensions=[])  # websockets masks as a client must
    seen: dict = {"close": None, "write_error": None, "end": None}
    closed_at = None
    sock.setblocking(False)
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            data = None
        except OSError as exc:
            seen["end"] = type(exc).__name__
            return seen
        if data == b"":
            seen["end"] = "eof"
            return seen
        if data:
            proto.receive_data(data)
            for event in proto.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    seen["close"] = proto.close_rcvd.code if proto.close_rcvd else None
                    closed_at = time.monotonic()
        try:
            if closed_at is None or time.monotonic() - closed_at < reply_after_s:
                sock.send(ping)
            elif (reply := b"".join(proto.data_to_send())):  # the close reply, sent once
                sock.send(reply)
        except BlockingIOError:
            pass
        except OSError as exc:
            seen["write_error"] = type(exc).__name__
        time.sleep(0.01)
    return seen


async def test_sigterm_waits_for_a_slow_client_s_close_reply_before_closing_its_connection(tandem: Tandem) -> None:
    # A node that closed the TCP connection right after its close frame, while the client was
    # still writing, reset it: a browser (or Node) editor that had not yet read the close frame
    # lost it and saw 1006 instead of 1012, so it could not tell a restart from a crash.
    server = tandem.start()
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    url = f"{base_url(tandem)}/yjs/{ws_id}/{doc_id}?token={tok('editor')}"
    client = asyncio.create_task(asyncio.to_thread(slow_closing_client, url, reply_after_s=0.5))
    await eventually(lambda: log_events(server, "yws.joined") != [])
    assert await asyncio.to_thread(server.stop) == 0, server.log_tail()
    seen = await client
    assert seen == {"close": 1012, "write_error": None, "end": "eof"}, server.log_tail()
