"""Delivery to editors (docs/protocol.md section 11): a frame is written at once while nothing
waits before it for that editor, and through its bounded outbox while its socket is backed up;
either way every editor gets every committed update, once, in commit order."""

from __future__ import annotations

import asyncio

import websockets
from pycrdt import Doc, Text

from server.wire.y_protocols import SyncUpdate, parse, update_message
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, eventually, operation_count, shared_doc
from tests.e2e.editors import base_url, tok

UPDATES = 300
CHUNK_CHARS = 100_000  # 15 MB while the reader does not read: more than loopback's socket buffers hold
MIB = 1 << 20


def chunk(i: int) -> str:
    return f"<{i:04d}>".ljust(CHUNK_CHARS, "abcdefghij"[i % 10])


async def test_an_editor_that_pauses_reading_gets_every_update_in_commit_order_when_it_reads_again(
    tandem: Tandem,
) -> None:
    # Updates this large are timed against the room's state (update_room_check_bytes), which
    # takes longer as the document grows to 30 MB; this test is about delivery, not that bound.
    tandem.start(
        TANDEM_MAX_MESSAGES_PER_S="100000", TANDEM_MAX_MESSAGE_BURST="100000", TANDEM_UPDATE_ROOM_CHECK_BYTES=str(MIB)
    )
    async with tandem.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    url = f"{base_url(tandem)}/yjs/{ws_id}/{doc_id}"
    reader = await websockets.connect(f"{url}?token={tok('reader')}", max_size=None, ping_interval=None)
    writer = await websockets.connect(f"{url}?token={tok('writer')}", max_size=None, ping_interval=None)
    try:
        await reader.recv()  # the server's sync step 1: the reader is in the room
        reader.transport.pause_reading()  # from here the server's writes to it back up
        doc = Doc()
        text = doc.get("content", type=Text)

        async def write(numbers: range) -> None:
            for i in numbers:
                before = doc.get_state()
                text.insert(len(text), chunk(i))
                await writer.send(update_message(doc.get_update(before)))
                await asyncio.sleep(0)

        await write(range(UPDATES // 2))
        await eventually(lambda: _counted(tandem, doc_id, UPDATES // 2), timeout_s=60, interval_s=0.2)
        assert reader.close_code is None  # still within max_send_queue_bytes: not a slow consumer

        # The reader reads again while its backlog goes out and the second half comes in.
        reader.transport.resume_reading()
        writing = asyncio.create_task(write(range(UPDATES // 2, UPDATES)))
        seen = Doc()
        seen_text = seen.get("content", type=Text)
        applied = 0
        async with asyncio.timeout(60):
            while applied < UPDATES:
                message = parse(await reader.recv(), 64 * MIB, MIB)
                if not isinstance(message, SyncUpdate) or message.update == b"\x00\x00":
                    continue  # the opening's sync step 2 (the empty document)
                seen.apply_update(message.update)
                applied += 1
                # In commit order: each update extends exactly the text of those before it (an
                # update ahead of its predecessor would stay pending and leave the text short).
                assert len(str(seen_text)) == applied * CHUNK_CHARS, applied
        await writing
        assert str(seen_text) == "".join(chunk(i) for i in range(UPDATES))
        await asyncio.wait_for(await reader.ping(), 10)  # nothing more was queued behind them
    finally:
        for ws in (reader, writer):
            ws.transport.abort()


async def _counted(tandem: Tandem, doc_id: str, count: int) -> bool:
    return await operation_count(tandem.db, doc_id) == count
