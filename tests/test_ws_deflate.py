"""permessage-deflate on Tandem's WebSocket transport (server/transport/websocket.py): with
`ws_compression` a message shorter than `ws_compression_min_bytes` goes out uncompressed (RSV1
clear, RFC 7692 section 6) and a longer one compressed, and a peer reads both, in any order, on
one connection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import BINARY, TEXT, Frame
from websockets.typing import ExtensionParameter

from server.transport.websocket import ThresholdDeflateFactory
from tests import wsclient
from tests.conftest import TENANT_A
from tests.test_connection import serving

if TYPE_CHECKING:
    from tests.conftest import Postgres, TestDatabase


class Recording(PerMessageDeflate):
    """A client's permessage-deflate that notes, for each data message it reads, its size on the
    wire and whether it came compressed."""

    def __init__(self, negotiated: PerMessageDeflate) -> None:
        super().__init__(
            negotiated.remote_no_context_takeover, negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits, negotiated.local_max_window_bits, negotiated.compress_settings,
        )  # fmt: skip
        self.read: list[tuple[int, bool]] = []

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in (TEXT, BINARY):
            self.read.append((len(frame.data), frame.rsv1))
        return super().decode(frame, max_size=max_size)


class RecordingFactory(ClientPerMessageDeflateFactory):
    def __init__(self) -> None:
        super().__init__(client_max_window_bits=True)
        self.negotiated: Recording | None = None

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        self.negotiated = Recording(super().process_response_params(params, accepted_extensions))
        return self.negotiated


def negotiate(min_bytes: int) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """(server side, client side) of one connection's permessage-deflate, as a handshake makes them."""
    client = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    response, server = ThresholdDeflateFactory(min_bytes).process_request_params(client.get_request_params(), [])
    return server, client.process_response_params(response, [])


def test_a_message_under_the_threshold_goes_out_as_it_is_and_a_larger_one_compressed() -> None:
    server, client = negotiate(1024)
    small = b'{"type":"doc.op","update":"AQHS4dUBAAQ"}'
    large = b'{"type":"doc.opened","state":"' + b"QUJD" * 600 + b'"}'
    for data in (large, small, large, small, small, large):  # the compressor's context survives the skips
        sent = server.encode(Frame(TEXT, data))
        if len(data) < 1024:
            assert not sent.rsv1 and sent.data == data
        else:
            assert sent.rsv1 and len(sent.data) < len(data) / 4
        assert client.decode(sent).data == data


def test_a_threshold_of_zero_compresses_every_message() -> None:
    server, client = negotiate(0)
    sent = server.encode(Frame(BINARY, b"\x00\x01\x02"))
    assert sent.rsv1
    assert client.decode(sent).data == b"\x00\x01\x02"


async def test_a_compressing_client_gets_small_messages_plain_and_a_document_compressed(
    postgres: Postgres, db: TestDatabase, tmp_path: Path
) -> None:
    async with serving(postgres, db, tmp_path, ws_compression=True, ws_compression_min_bytes=1024) as (url, _node):
        alice = await wsclient.Agent(url, wsclient.token(TENANT_A, "alice")).connect()
        recording = RecordingFactory()
        options = {"compression": None, "extensions": [recording]}
        bob = await wsclient.Agent(url, wsclient.token(TENANT_A, "bob"), connect_options=options).connect()
        try:
            ws = (await alice.request("workspace.create", name="w", visibility="team"))["workspace"]
            for agent in (alice, bob):
                await agent.request("workspace.join", workspace_id=ws["workspace_id"])
            doc_id = (await alice.request("doc.create", workspace_id=ws["workspace_id"], title="d"))["document"]["doc_id"]
            text = "".join(f"line {i} of a document long enough to be worth compressing\n" for i in range(100))
            await (await alice.open(doc_id)).edit(lambda t: t.insert(0, text))
            opened = await bob.open(doc_id)
            assert str(opened.text) == text  # read through the compressed reply
            assert recording.negotiated is not None
            read = recording.negotiated.read
            assert any(compressed for _, compressed in read)
            assert all(size < 1024 for size, compressed in read if not compressed)
            assert any(not compressed for _, compressed in read)  # the hello and the small replies
        finally:
            await bob.close()
            await alice.close()
