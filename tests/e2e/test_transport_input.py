"""Hostile input at the transport, before the JSON or y-protocols layer (docs/protocol.md sections
2.2, 7, 8 and 11): a token longer than `max_token_bytes` in the handshake, a handshake line past
the transport's limit, and a text frame that is not UTF-8, on both endpoints.

One server serves the module; tests that need a document make their own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import websockets

from server.core.settings import Settings
from server.transport.websocket import HANDSHAKE_HEADROOM_BYTES
from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, log_events, shared_doc

MAX_TOKEN_BYTES = Settings().max_token_bytes  # the documented default, 8192
NOT_UTF8 = b'{"type": "ping", "id": "\xff\xfe"}'


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


def base(server: Tandem) -> str:
    assert server.server is not None
    return f"ws://{server.server.host}:{server.server.port}"


def signed_token(size: int) -> str:
    """A token signed with the server's secret, valid but for its size: `size` to `size + 3`
    bytes long (base64 grows in steps of 4)."""
    now = int(time.time())

    def sign(pad: int) -> str:
        claims = {"tenant": str(TENANT_A), "sub": "big", "iat": now, "exp": now + 3600, "pad": "x" * pad}
        return jwt.encode(claims, wsclient.SECRET, algorithm="HS256")

    pad = (size - len(sign(0))) * 3 // 4 - 4  # a little short of `size`, then a byte at a time
    for pad in range(pad, pad + 16):
        if len(token := sign(pad)) >= size:
            break
    assert size <= len(token) <= size + 3, len(token)
    return token


@dataclass
class Outcome:
    """What a connection attempt got: an HTTP refusal (`status`), or frames and a close."""

    status: int | None = None
    frames: list[Any] = field(default_factory=list)
    code: int | None = None
    reason: str | None = None


async def attempt(
    url: str, headers: dict[str, str] | None = None, send: tuple[bytes, ...] = (), timeout_s: float = 10
) -> Outcome:
    """Connect, send each of `send` as a text frame, and read until the server closes."""
    outcome = Outcome()
    async with asyncio.timeout(timeout_s):
        try:
            async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
                try:
                    for frame in send:
                        await ws.send(frame, text=True)
                    async for message in ws:
                        outcome.frames.append(json.loads(message) if isinstance(message, str) else message)
                except websockets.ConnectionClosed:
                    pass
                outcome.code, outcome.reason = ws.close_code, ws.close_reason
        except websockets.InvalidStatus as exc:
            outcome.status = exc.response.status_code
    return outcome


def assert_unauthorized_sequence(outcome: Outcome) -> None:
    """docs/protocol.md#22 and #44: error, session.closing, close 4401 `unauthorized: too_long`."""
    assert [f["type"] for f in outcome.frames] == ["error", "session.closing"], outcome
    assert outcome.frames[0]["code"] == "unauthorized"
    assert (outcome.frames[1]["code"], outcome.frames[1]["reason"]) == (4401, "unauthorized")
    assert (outcome.code, outcome.reason) == (4401, "unauthorized: too_long")


# --- tokens longer than max_token_bytes ------------------------------------------------------------

# Just past the limit, and as far past it as the handshake's headroom leaves room for.
OVERSIZED = (MAX_TOKEN_BYTES + 1, MAX_TOKEN_BYTES + HANDSHAKE_HEADROOM_BYTES - 512)


@pytest.mark.parametrize("size", OVERSIZED)
async def test_oversized_token_on_ws_is_accepted_then_refused_with_4401(server: Tandem, size: int) -> None:
    token = signed_token(size)
    assert_unauthorized_sequence(await attempt(f"{base(server)}/ws?token={token}"))
    assert_unauthorized_sequence(await attempt(f"{base(server)}/ws", {"Authorization": f"Bearer {token}"}))
    # The same token within the limit would have been fine: the size alone refused it.
    async with server.agent(TENANT_A, "after-big-token") as agent:
        assert (await agent.request("ping"))["type"] == "pong"


@pytest.mark.parametrize("size", OVERSIZED)
async def test_oversized_token_on_yjs_is_accepted_then_refused_with_4401(server: Tandem, size: int) -> None:
    token = signed_token(size)
    url = f"{base(server)}/yjs/{uuid.uuid4()}/{uuid.uuid4()}"
    for outcome in (await attempt(f"{url}?token={token}"), await attempt(url, {"Authorization": f"Bearer {token}"})):
        assert (outcome.status, outcome.frames, outcome.code, outcome.reason) == (None, [], 4401, "unauthorized: too_long")


async def test_handshake_line_past_the_transport_limit_is_refused_with_414_or_431(server: Tandem) -> None:
    # docs/protocol.md#7: past max_token_bytes + the headroom, the HTTP layer refuses the upgrade.
    token = "x" * (MAX_TOKEN_BYTES + HANDSHAKE_HEADROOM_BYTES + 1)
    assert (await attempt(f"{base(server)}/ws?token={token}")).status == 414
    assert (await attempt(f"{base(server)}/ws", {"Authorization": f"Bearer {token}"})).status == 431
    async with server.agent(TENANT_A, "after-long-line") as agent:
        assert (await agent.request("ping"))["type"] == "pong"


# --- text frames that are not UTF-8 -----------------------------------------------------------------


def assert_logged_once_without_traceback(server: Tandem, event: str, count_before: int) -> None:
    assert server.server is not None
    closings = log_events(server.server, event, reason="invalid_utf8")
    assert len(closings) == count_before + 1, closings
    assert closings[-1]["level"] == "info" and "exception" not in closings[-1]
    text = server.server.log_text()
    assert "Traceback" not in text and "Invalid UTF-8" not in text


async def test_invalid_utf8_text_frame_on_ws_gets_invalid_utf8_and_closes_1007(server: Tandem) -> None:
    assert server.server is not None
    before = len(log_events(server.server, "session.closing", reason="invalid_utf8"))
    token = wsclient.token(TENANT_A, "mangler")
    outcome = await attempt(f"{base(server)}/ws?token={token}", send=(NOT_UTF8,))
    # hello, then the closing sequence of docs/protocol.md#44 for invalid_utf8.
    assert [f["type"] for f in outcome.frames] == ["hello", "error", "session.closing"], outcome
    error, closing = outcome.frames[1:]
    assert (error["code"], error["re"], error["message"]) == ("invalid_utf8", None, "Text frames must be valid UTF-8.")
    assert (closing["code"], closing["reason"]) == (1007, "invalid_utf8")
    assert (outcome.code, outcome.reason) == (1007, "invalid_utf8")
    assert_logged_once_without_traceback(server, "session.closing", before)
    async with server.agent(TENANT_A, "bystander") as agent:
        assert (await agent.request("ping"))["type"] == "pong"


async def test_invalid_utf8_text_frame_on_yjs_closes_1007(server: Tandem) -> None:
    assert server.server is not None
    before = len(log_events(server.server, "yws.closing", reason="invalid_utf8"))
    async with server.agent(TENANT_A, "yjs-owner") as owner:
        ws_id, doc_id = await shared_doc(owner)
        url = f"{base(server)}/yjs/{ws_id}/{doc_id}?token={wsclient.token(TENANT_A, 'yjs-mangler')}"
        outcome = await attempt(url, send=(NOT_UTF8,))
        assert (outcome.status, outcome.code, outcome.reason) == (None, 1007, "invalid_utf8")
        assert_logged_once_without_traceback(server, "yws.closing", before)
        assert (await owner.request("ping"))["type"] == "pong"
