"""Shared by the coordination end-to-end tests (tests/e2e/test_coordination_*.py): one server per
module, started with a fast task sweep and a short lock release grace period so those tests stay
quick, and connected agents (`Peer`) that keep every event until a check takes it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from pycrdt import Doc, Text

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import (
    Tandem,
)

Frame = dict[str, Any]

SWEEP_INTERVAL_S = 0.2
RELEASE_GRACE_S = 0.5


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start(
        TANDEM_TASK_SWEEP_INTERVAL_S=str(SWEEP_INTERVAL_S),
        TANDEM_LOCK_RELEASE_GRACE_S=str(RELEASE_GRACE_S),
    )
    yield module_tandem


# --- agents that keep every event --------------------------------------------------------------


class Peer:
    """A connected agent, its id, and the events it received but no check has taken yet.

    `take` consumes the first matching event and keeps the others, so checks made in any order
    never drop an event another check needs (wsclient's `Agent.event` drops what it skips).
    """

    def __init__(self, agent: wsclient.Agent) -> None:
        assert agent.hello is not None
        self.agent = agent
        self.id: str = agent.hello["agent_id"]
        self.session_id: str = agent.hello["session_id"]
        self.kept: list[Frame] = []

    async def reply(self, type_: str, **fields: Any) -> Frame:
        """The reply to a request, error or not. Sent through `send_request` because
        `Agent.request` takes `timeout_s` as its own argument, and task.create has that field."""
        _, future = await self.agent.send_request(type_, **fields)
        return await asyncio.wait_for(future, 30)

    async def request(self, type_: str, **fields: Any) -> Frame:
        frame = await self.reply(type_, **fields)
        if frame["type"] == "error":
            raise wsclient.ReplyError(frame)
        return frame

    async def error(self, type_: str, **fields: Any) -> Frame:
        frame = await self.reply(type_, **fields)
        assert frame["type"] == "error", f"{type_} succeeded: {frame}"
        return frame

    def _drain(self) -> None:
        while not self.agent.events.empty():
            self.kept.append(self.agent.events.get_nowait())

    async def take(self, predicate: Callable[[Frame], bool], timeout_s: float = 10) -> Frame:
        self._drain()
        for i, frame in enumerate(self.kept):
            if predicate(frame):
                return self.kept.pop(i)
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.agent.events.get()
                if predicate(frame):
                    return frame
                self.kept.append(frame)

    def received(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """What arrived so far and matches (not consumed)."""
        self._drain()
        return [f for f in self.kept if predicate(f)]


Connect = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def connect(server: Tandem) -> AsyncIterator[Connect]:
    """`await connect("name", tenant=TENANT_A)`: a connected Peer with an agent id unique to this
    test (`agent_id="..."` to choose one); all closed at teardown."""
    tag = uuid.uuid4().hex[:8]
    agents: list[wsclient.Agent] = []

    async def make(name: str, tenant: uuid.UUID = TENANT_A, agent_id: str | None = None) -> Peer:
        agent = await server.agent(tenant, agent_id or f"{name}-{tag}").connect()
        agents.append(agent)
        return Peer(agent)

    yield make
    for agent in agents:
        await agent.close()


async def workspace(owner: Peer, *others: Peer, visibility: str = "team") -> str:
    """`owner` creates a workspace; it and `others` join it."""
    ws_id = (await owner.request("workspace.create", name="Coordination", visibility=visibility))["workspace"]["workspace_id"]
    for peer in (owner, *others):
        await peer.request("workspace.join", workspace_id=ws_id)
    return ws_id


# --- edits ---------------------------------------------------------------------------------------


def scratch_update(doc: wsclient.SyncedDoc, fn: Callable[[Text], Any]) -> str:
    """An edit made on a copy of `doc` (b64): when the server refuses it, `doc` stays exactly
    what the server holds, so later edits from it are sound."""
    copy = Doc()
    copy.apply_update(doc.doc.get_update())
    text = copy.get("content", type=Text)
    before = copy.get_state()
    fn(text)
    return wsclient.b64(copy.get_update(before))
