"""Every frame a running server sends is exactly its model's encoding (docs/protocol.md 5.1).

Two agents walk through documents, presence, locks, state, tasks, members and errors against a
real `tandem serve`; every text frame either receives is kept as sent and must decode into the
model of its `type` (server/wire/protocol.py, server/wire/protocol_coordination.py, the `error` message of
server/core/errors.py) and encode back to the same bytes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection

from server.core.errors import ErrorMessage
from server.wire import protocol as p
from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, eventually

MODELS: dict[str, Any] = {**p.SERVER_MESSAGES, "error": ErrorMessage}


class Recording(ClientConnection):
    """A client connection that keeps every frame it receives, as received."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[str | bytes] = []

    async def recv(self, decode: bool | None = None) -> Any:  # type: ignore[override]
        frame = await super().recv(decode)
        self.received.append(frame)
        return frame


def agent(tandem: Tandem, name: str) -> wsclient.Agent:
    found = tandem.agent(TENANT_A, f"{name}-{uuid.uuid4().hex[:8]}")
    found.connect_options = {"create_connection": Recording}
    return found


def an_update() -> str:
    doc = Doc()
    doc["text"] = text = Text()
    text += "hello"
    return wsclient.b64(doc.get_update())


async def test_every_frame_sent_is_its_models_encoding(tandem: Tandem) -> None:
    tandem.start()
    async with agent(tandem, "owner") as a, agent(tandem, "helper") as b:
        assert a.hello is not None and b.hello is not None
        await a.request("hello", protocol=1)
        await b.request("hello", protocol=1, presence_batch=True)
        a_id, b_id = a.hello["agent_id"], b.hello["agent_id"]
        await a.request("ping")
        ws_id = (await a.request("workspace.create", name="Frames", visibility="team"))["workspace"]["workspace_id"]
        await a.request("workspace.list")
        await a.request("workspace.join", workspace_id=ws_id)
        await b.request("workspace.join", workspace_id=ws_id)

        # Documents: the writer gets doc.update.ok, the reader doc.op.
        doc_id = (await a.request("doc.create", workspace_id=ws_id, title="Notes"))["document"]["doc_id"]
        await a.request("doc.list", workspace_id=ws_id)
        for peer in (a, b):
            await peer.request("doc.open", doc_id=doc_id)
        await a.request("doc.update", doc_id=doc_id, update=an_update())
        await b.event(lambda f: f["type"] == "doc.op")
        await a.request("doc.resync", doc_id=doc_id)
        await a.request("presence.list", workspace_id=ws_id)
        await b.request("awareness.set", workspace_id=ws_id, doc_id=doc_id, state={"cursor": 1})  # a: awareness.changed

        # Coordination: replies here, events to the other agent.
        lock = (await a.request("lock.acquire", workspace_id=ws_id, doc_id=doc_id))["lock"]
        lock = (await a.request("lock.renew", workspace_id=ws_id, doc_id=doc_id, fence=lock["fence"]))["lock"]
        await a.request("lock.list", workspace_id=ws_id)
        await a.request("lock.release", workspace_id=ws_id, doc_id=doc_id, fence=lock["fence"])
        version = (await a.request("state.get", workspace_id=ws_id))["version"]
        await a.request("state.update", workspace_id=ws_id, expected_version=version, value={"phase": "review"})
        _, created = await a.send_request("task.create", workspace_id=ws_id, title="Summarise", assign_to=a_id)
        task_id = (await created)["task"]["task_id"]
        await a.request("task.delegate", task_id=task_id, agent_id=b_id)
        await a.request("task.get", task_id=task_id)
        await a.request("task.list", workspace_id=ws_id)
        await a.request("task.stats", workspace_id=ws_id)
        await a.request("member.list", workspace_id=ws_id)
        await a.request("member.update", workspace_id=ws_id, agent_id=b_id, role="viewer")

        # Errors, with and without details.
        await a.send_raw("{not json")
        await a.send_raw('{"type": "ping", "id": 99, "extra": 1}')
        assert (await a.error("doc.close", doc_id=str(uuid.uuid4())))["code"] == "doc_not_open"

        await a.request("doc.close", doc_id=doc_id)
        await b.request("workspace.leave", workspace_id=ws_id)
        expected = {
            "hello", "hello.ok", "pong", "workspace.create.ok", "workspace.list.ok", "workspace.join.ok",
            "doc.create.ok", "doc.list.ok", "doc.open.ok", "doc.update.ok", "doc.op", "doc.resync.ok",
            "presence.list.ok", "awareness.set.ok", "presence.joined", "presence.batch", "awareness.changed",
            "lock.acquire.ok", "lock.renew.ok", "lock.list.ok", "lock.release.ok", "lock.acquired",
            "lock.renewed", "lock.released", "state.get.ok", "state.update.ok", "state.changed",
            "task.create.ok", "task.delegate.ok", "task.get.ok", "task.list.ok", "task.stats.ok",
            "task.changed", "member.list.ok", "member.update.ok", "member.changed", "error", "doc.close.ok",
            "workspace.leave.ok",
        }  # fmt: skip

        def seen() -> set[str]:
            return {json.loads(f)["type"] for peer in (a, b) for f in peer.ws.received}

        try:
            await eventually(lambda: expected <= seen(), timeout_s=10)
        except AssertionError:
            raise AssertionError(f"never received: {sorted(expected - seen())}") from None
        frames = [f for peer in (a, b) for f in peer.ws.received]

    for frame in frames:
        assert isinstance(frame, str), frame
        type_ = json.loads(frame)["type"]
        assert p.encode(MODELS[type_].model_validate_json(frame)) == frame, frame
