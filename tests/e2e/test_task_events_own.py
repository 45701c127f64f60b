"""`workspace.join` with `task_events: "own"` (docs/protocol.md sections 5.4 and 12.6) on two
`tandem serve` nodes: a session that chose `own` gets the `task.changed` of the tasks its agent
created, is assigned or was assigned before the change (delegated away from it), wherever the
change was made, and none of the others'; a session that joined with the default gets them all;
the last join of a session decides; a bad value is `invalid_message` and changes nothing. The
SDK's `client.join(..., task_events="own")` keeps its choice across a reconnect to another node.

Absence is shown without waiting for nothing: each session's last expected event is one made
after every other change and carried the same way (the same node's NOTIFY, or this node), so
events of one origin arrive in commit order and nothing earlier can still be on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any


from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import eventually
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import REPO

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

Frame = dict[str, Any]
FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
WAIT_S = 15.0  # bound on every wait below, never a measurement


class Heard:
    """The `task.changed` events one session received, as (task title, action), kept in order."""

    def __init__(self, agent: wsclient.Agent) -> None:
        self.agent = agent
        self.seen: list[tuple[str, str]] = []

    def drain(self) -> list[tuple[str, str]]:
        while True:
            try:
                frame = self.agent.events.get_nowait()
            except asyncio.QueueEmpty:
                return self.seen
            if frame["type"] == "task.changed":
                self.seen.append((frame["task"]["title"], frame["action"]))

    async def until(self, *last: tuple[str, str]) -> list[tuple[str, str]]:
        """Every event heard once all of `last` arrived."""
        return await eventually(lambda: set(last) <= set(self.drain()) and self.seen, timeout_s=WAIT_S)


async def agent_on(nodes: Nodes, node: int, name: str) -> wsclient.Agent:
    agent = wsclient.Agent(nodes.url(node), wsclient.token(TENANT_A, name))
    await agent.connect()
    assert agent.hello is not None and agent.hello["node_id"] == f"node-{node + 1}"
    return agent


async def close_all(agents: Sequence[wsclient.Agent]) -> None:
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


async def create(agent: wsclient.Agent, ws_id: str, title: str, **fields: Any) -> Frame:
    return (await agent.request("task.create", workspace_id=ws_id, title=title, **fields))["task"]


async def test_own_sessions_get_only_their_tasks_events_on_both_nodes(nodes: Nodes) -> None:
    nodes.start(2)
    owner = await agent_on(nodes, 0, "te-owner")
    watcher = await agent_on(nodes, 1, "te-watcher")
    w1 = await agent_on(nodes, 0, "te-w1")
    w2 = await agent_on(nodes, 1, "te-w2")
    agents = [owner, watcher, w1, w2]
    try:
        ws_id = (await owner.request("workspace.create", name="Own", visibility="team"))["workspace"]["workspace_id"]
        await owner.request("workspace.join", workspace_id=ws_id)
        await watcher.request("workspace.join", workspace_id=ws_id, task_events="all")
        for worker in (w1, w2):
            await worker.request("workspace.join", workspace_id=ws_id, task_events="own")
        heard = {name: Heard(agent) for name, agent in (("watcher", watcher), ("w1", w1), ("w2", w2))}

        pending = await create(owner, ws_id, "pending")  # nobody's but the owner's
        t1 = await create(owner, ws_id, "t1", assign_to="te-w1")
        await create(owner, ws_id, "t3", assign_to="te-w2")
        await create(w2, ws_id, "t4")  # created by w2 on node 2, assigned to nobody
        moved = await owner.request("task.delegate", task_id=t1["task_id"], agent_id="te-w2")  # away from w1
        assert moved["task"]["assigned_to"] == "te-w2"
        await owner.request("task.assign", task_id=pending["task_id"], agent_id="te-absent")
        # Last of node 1's changes (w2 hears it through node 1's NOTIFY), then the last of
        # node 2's (w1 hears it through node 2's NOTIFY, after node 2's t4).
        await create(owner, ws_id, "m2", assign_to="te-w2")
        await create(w2, ws_id, "m1", assign_to="te-w1")

        assert await heard["w1"].until(("m1", "create")) == [("t1", "create"), ("t1", "delegate"), ("m1", "create")]
        got = await heard["w2"].until(("m1", "create"), ("m2", "create"))
        assert sorted(got) == sorted(
            [("t3", "create"), ("t4", "create"), ("t1", "delegate"), ("m2", "create"), ("m1", "create")]
        )
        everything = [("pending", "create"), ("t1", "create"), ("t3", "create"), ("t4", "create"),
                      ("t1", "delegate"), ("pending", "assign"), ("m2", "create"), ("m1", "create")]  # fmt: skip
        assert sorted(await heard["watcher"].until(*everything)) == sorted(everything)

        # Joining again: the last join decides, both ways.
        await w1.request("workspace.join", workspace_id=ws_id)  # the default: all
        await create(owner, ws_id, "for all")
        assert ("for all", "create") in await heard["w1"].until(("for all", "create"))
        await w1.request("workspace.join", workspace_id=ws_id, task_events="own")
        before = len(heard["w1"].drain())
        await create(owner, ws_id, "not for w1")
        await create(owner, ws_id, "m3", assign_to="te-w1")  # same node: after the one above
        assert (await heard["w1"].until(("m3", "create")))[before:] == [("m3", "create")]
    finally:
        await close_all(agents)


async def test_a_bad_task_events_value_is_invalid_message_and_changes_nothing(nodes: Nodes) -> None:
    nodes.start(1)
    owner = await agent_on(nodes, 0, "tb-owner")
    worker = await agent_on(nodes, 0, "tb-worker")
    try:
        ws_id = (await owner.request("workspace.create", name="Bad", visibility="team"))["workspace"]["workspace_id"]
        await owner.request("workspace.join", workspace_id=ws_id)
        for value in ("mine", "ALL", "", None, True, 1, ["own"]):
            error = await worker.error("workspace.join", workspace_id=ws_id, task_events=value)
            assert error["code"] == "invalid_message", (value, error)
            assert [e["field"] for e in error["details"]["errors"]] == ["task_events"], (value, error)
        # Not joined by any of them: not a member, not subscribed.
        assert (await worker.error("doc.list", workspace_id=ws_id))["code"] == "not_member"
        members = (await owner.request("workspace.join", workspace_id=ws_id))["members"]
        assert [m["agent_id"] for m in members] == ["tb-owner"]

        # Joined with `own`, a bad join again keeps that choice.
        await worker.request("workspace.join", workspace_id=ws_id, task_events="own")
        again = await worker.error("workspace.join", workspace_id=ws_id, task_events="none")
        assert again["code"] == "invalid_message"
        heard = Heard(worker)
        await create(owner, ws_id, "not for the worker")
        await create(owner, ws_id, "marker", assign_to="tb-worker")  # same node: after the one above
        assert await heard.until(("marker", "create")) == [("marker", "create")]
    finally:
        await close_all([owner, worker])


async def titles_until(events: tandem_client.EventStream[tandem_client.TaskEvent], last: str) -> list[str]:
    """The titles of the task events read from `events` up to the one of the task titled `last`."""
    seen: list[str] = []
    async with asyncio.timeout(WAIT_S):
        async for event in events:
            seen.append(event.task.title)
            if event.task.title == last:
                return seen
    raise AssertionError(f"the stream ended before {last!r}: {seen}")


async def test_the_sdk_joins_with_own_again_after_a_reconnect_and_switches_on_a_new_join(nodes: Nodes) -> None:
    nodes.start(2)
    tenant = uuid.uuid4()
    async with contextlib.AsyncExitStack() as stack:
        owner = await stack.enter_async_context(tandem_client.connect(nodes.url(1), wsclient.token(tenant, "owner")))
        worker = await stack.enter_async_context(
            tandem_client.connect([nodes.url(0), nodes.url(1)], wsclient.token(tenant, "worker"), **FAST)
        )
        assert worker.node_id == "node-1"
        info = await owner.create_workspace("Own", visibility="team")
        ws_owner = await owner.join(info.workspace_id)
        ws = await worker.join(info.workspace_id, task_events="own")
        assert ws.task_events == "own"

        async def round_(tag: str) -> list[str]:
            """Titles the worker's workspace stream gets of one task of nobody's, then one of its own
            (both made on node 2 one after the other: the second arrives after the first would)."""
            async with ws.tasks.events() as events:
                await ws_owner.tasks.create(f"other {tag}")
                await ws_owner.tasks.create(f"mine {tag}", assign_to="worker")
                return await titles_until(events, f"mine {tag}")

        assert await round_("1") == ["mine 1"]
        nodes.nodes[0].kill()  # the worker's node: it reconnects to node 2 and joins again
        await worker.wait_for(lambda: worker.node_id == "node-2", timeout_s=WAIT_S)
        await ws.tasks.list()  # requests wait for the restore (the join again) to finish
        assert await round_("2") == ["mine 2"]
        assert await worker.join(info.workspace_id) is ws  # the default again: every task event
        assert ws.task_events == "all"
        assert await round_("3") == ["other 3", "mine 3"]
