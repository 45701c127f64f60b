"""Clients that stop reading (docs/protocol.md section 7, `max_send_queue_bytes`): what the
server queues for them is bounded in bytes, and once they are closed as `slow_consumer` the node
holds nothing of theirs, although their TCP connections stay open and unread."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time
from pathlib import Path

import psutil
import websockets

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, eventually, log_events, shared_doc
from tests.e2e.editors import base_url, tok
from tests.e2e.test_yjs import awareness_message
from tests.serverproc import ServerProcess

MIB = 1 << 20
STATE_BYTES = 900_000  # one editor's awareness state: under max_frame_bytes (1 MiB)
STATES = 300  # bounded: 270 MB sent in all
SLOW_PEERS = 3
RSS_MARGIN = 150 * MIB  # what the node may keep above its baseline (allocator slack, buffers)


def rss(server: ServerProcess) -> int:
    """The server process's resident set (VmRSS), in bytes."""
    assert server.server_pid is not None
    for line in Path(f"/proc/{server.server_pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_sessions(server: ServerProcess) -> int:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("tandem_sessions "):
            return int(float(line.split()[1]))
    raise AssertionError("no tandem_sessions gauge")


def client_sockets(server: ServerProcess) -> int:
    """The clients' TCP connections the server process holds open."""
    assert server.server_pid is not None
    held = psutil.Process(server.server_pid).net_connections(kind="tcp")
    return sum(1 for c in held if c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED)


async def test_editors_that_never_read_are_closed_by_the_byte_bound_and_the_node_frees_their_queues(
    tandem: Tandem,
) -> None:
    # Awareness states this large are refused by default (max_awareness_bytes); allowed here to
    # flood the peers without a database write, as large document updates would too.
    server = tandem.start(TANDEM_MAX_AWARENESS_BYTES=str(MIB))
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    url = f"{base_url(tandem)}/yjs/{ws_id}/{doc_id}"

    # The peers connect, then never read again: the server's writes to them back up.
    peers = []
    for i in range(SLOW_PEERS):
        peer = await websockets.connect(f"{url}?token={tok(f'slow-{i}')}", max_size=None, ping_interval=None)
        peer.transport.pause_reading()
        peers.append(peer)
    writer = await websockets.connect(f"{url}?token={tok('writer')}", max_size=None, ping_interval=None)
    try:
        await eventually(lambda: open_sessions(server) == SLOW_PEERS + 1)
        baseline = peak = rss(server)
        blob = "x" * STATE_BYTES
        started = time.monotonic()
        for clock in range(1, STATES + 1):
            await writer.send(awareness_message(4242, clock, {"user": {"name": "writer"}, "blob": blob}))
            if clock % 10 == 0:
                peak = max(peak, rss(server))
                await asyncio.sleep(0)

        async def peers_gone() -> bool:
            nonlocal peak
            peak = max(peak, rss(server))
            return open_sessions(server) == 1

        try:
            await eventually(peers_gone, timeout_s=30, interval_s=0.2)
        finally:
            after = rss(server)
            print(
                f"\nRSS baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, after the close"
                f" {after / MIB:.0f} MiB ({SLOW_PEERS} peers never reading, {STATES} states of"
                f" {STATE_BYTES / 1000:.0f} KB sent in {time.monotonic() - started:.1f} s)"
            )
        closings = log_events(server, "yws.closing", reason="slow_consumer")
        assert len(closings) == SLOW_PEERS and {c["code"] for c in closings} == {1013}
        # Nothing of theirs is held once they are closed, whatever their sockets do: the server
        # lets go of their connections too (the peers never close theirs).
        await eventually(lambda: rss(server) < baseline + RSS_MARGIN, timeout_s=20, interval_s=0.5)
        assert peak < baseline + RSS_MARGIN, (baseline, peak)
        await eventually(lambda: client_sockets(server) == 1, timeout_s=20, interval_s=0.2)
        # The writer is served throughout.
        assert writer.close_code is None
        await asyncio.wait_for(await writer.ping(), 10)
    finally:
        for ws in [writer, *peers]:
            ws.transport.abort()


async def test_an_agent_that_stops_reading_is_closed_by_the_byte_bound_with_slow_consumer(tandem: Tandem) -> None:
    """Far fewer frames than `send_queue_len`, but more bytes than `max_send_queue_bytes`: the
    session is closed with `slow_consumer` (4408) and the writer is served throughout."""
    server = tandem.start(TANDEM_MAX_SEND_QUEUE_BYTES=str(256 * 1024))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its writes back up sooner
    sock.connect((server.host, server.port))
    slow = wsclient.Agent(tandem.url, wsclient.token(TENANT_A, "slow"), connect_options={"sock": sock})
    async with tandem.agent(TENANT_A, "writer") as writer, slow:
        ws_id, doc_id = await shared_doc(writer, slow)
        doc = await writer.open(doc_id)
        await slow.open(doc_id)
        await slow.stop_reading()

        rng = random.Random(7)
        for sent in range(1, 301):  # bounded: far below send_queue_len (1024) frames
            chunk = "".join(rng.choices(string.ascii_letters, k=32_768))  # a doc.op of ~44 KB
            ack = await doc.edit(lambda t: t.insert(len(t), chunk))
            assert ack["seq"] == sent
            if sent % 10 == 0 and log_events(server, "session.closing", reason="slow_consumer"):
                break
        (closing,) = log_events(server, "session.closing", reason="slow_consumer")
        assert closing["code"] == 4408
        await eventually(lambda: open_sessions(server) == 1, timeout_s=20)
        assert (await writer.request("ping"))["type"] == "pong"
        # Reading again, the slow client finds its session over: the closing sequence if it got
        # through, or a dropped connection.
        assert await slow.read_until_closed() in (4408, 1006)
    assert slow.hello is not None and slow.hello["limits"]["max_send_queue_bytes"] == 256 * 1024
