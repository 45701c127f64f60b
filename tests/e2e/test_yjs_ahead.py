"""An editor's update that builds on edits the server has not seen (docs/protocol.md#114): a
viewer promoted while it kept refused edits, an editor typing on before its answer to sync step
1. y-websocket would hold it pending; the server, which cannot hold it exactly, asks the editor
for what it lacks (sync step 1) instead of closing, and stores everything once it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import websockets
from pycrdt import Doc, Text

from server.wire.y_protocols import sync_step2_message, update_message
from tests.conftest import TENANT_A
from tests.e2e.conftest import (
    Tandem,
    eventually,
    operation_count,
    replayed_text,
    shared_doc,
)
from tests.e2e.editors import base_url, tok

SYNC_STEP1 = b"\x00\x00"  # message sync, step 1: the server's state vector follows


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


async def frames_until(ws: websockets.ClientConnection, predicate, timeout_s: float = 10) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(timeout_s):
        while not any(predicate(f) for f in got):
            got.append(await ws.recv())  # type: ignore[arg-type]
    return got


async def test_an_update_past_what_the_server_holds_gets_sync_step_1_not_a_close(server: Tandem) -> None:
    async with server.agent(TENANT_A, "alice") as alice:
        ws_id, doc_id = await shared_doc(alice)
    editor = Doc(client_id=4711)
    editor["content"] = text = Text()
    text += "abc"
    before = editor.get_state()
    text.insert(0, "X")
    later = editor.get_update(before)  # clock 3, before `a`: the server has not seen 0..2
    url = f"{base_url(server)}/yjs/{ws_id}/{doc_id}?token={tok('editor')}"
    async with websockets.connect(url) as ws:
        await frames_until(ws, lambda f: f.startswith(SYNC_STEP1))  # the server's own, at connect
        await ws.send(update_message(later))
        await frames_until(ws, lambda f: f.startswith(SYNC_STEP1))  # asked again: what it lacks
        assert ws.close_code is None and await operation_count(server.db, doc_id) == 0
        await ws.send(update_message(later))  # typing on meanwhile: dropped, asked once only
        await ws.send(sync_step2_message(editor.get_update()))
        await eventually(lambda: operation_count(server.db, doc_id))
        await asyncio.sleep(0.2)
        assert ws.close_code is None
    assert await replayed_text(server.db, doc_id) == "Xabc"
