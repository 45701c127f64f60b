"""Workflow executions end to end (docs/protocol.md section 12.9): two `tandem serve` nodes on one
database, SDK agents on both. A writer drafts, two reviewers on different nodes review in
parallel, an editor merges: every step runs once, its task is given by the step's rule, the run
completes with every step's result, and an observer on the other node follows it live. Then a
run is paused, resumed and cancelled through the SDK, and an inactive workflow is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid

import pytest

from tests import wsclient
from tests.e2e.conftest import admin_fetch
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import REPO

if (
    str(REPO / "clients") not in sys.path
):  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client

FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
WAIT_S = 30.0  # bound on every wait below, never a measurement
PIPELINE = [
    {"id": "draft", "task": {"title": "Draft"}, "capability": "write"},
    {
        "id": "review_a",
        "task": {"title": "Review A"},
        "agent": "reviewer-a",
        "depends_on": ["draft"],
    },
    {
        "id": "review_b",
        "task": {"title": "Review B"},
        "agent": "reviewer-b",
        "depends_on": ["draft"],
    },
    {
        "id": "merge",
        "task": {"title": "Merge"},
        "agent": "editor",
        "depends_on": ["review_a", "review_b"],
    },
]


async def work(
    client: tandem_client.Client, ws: tandem_client.Workspace, done: list[str]
) -> None:
    """Do every step task given to this agent: accept, start, complete with who did it."""
    me = client.agent_id
    seen: set[str] = set()
    async with client.task_events() as events:
        for task in await ws.tasks.mine(
            status="assigned"
        ):  # given before the stream opened
            seen.add(task.task_id)
            await _do(ws, task, me, done)
        async for event in events:
            task = event.task
            if (
                task.assigned_to == me
                and task.status == "assigned"
                and task.task_id not in seen
            ):
                seen.add(task.task_id)
                await _do(ws, task, me, done)


async def _do(
    ws: tandem_client.Workspace,
    task: tandem_client.Task,
    me: str | None,
    done: list[str],
) -> None:
    await ws.tasks.accept(task)
    await ws.tasks.start(task)
    done.append(f"{task.step_id}:{me}")
    await ws.tasks.complete(task, {"by": me, "step": task.step_id})


async def test_a_review_pipeline_runs_each_step_once_across_two_nodes(
    nodes: Nodes,
) -> None:
    nodes.start(2)
    tenant = uuid.uuid4()

    def connect(agent_id: str, node: int) -> tandem_client.Client:
        return tandem_client.connect(
            nodes.url(node), wsclient.token(tenant, agent_id), **FAST
        )

    names = {
        "owner": 0,
        "writer": 0,
        "reviewer-a": 0,
        "reviewer-b": 1,
        "editor": 1,
        "observer": 1,
    }
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            n: await stack.enter_async_context(connect(n, node))
            for n, node in names.items()
        }
        owner = clients["owner"]
        info = await owner.create_workspace("Pipeline", visibility="team")
        ws_owner = await owner.join(info.workspace_id)
        for name in names:
            if name != "owner":
                await ws_owner.members.add(name, "member")
        await clients["writer"].agents.register("Writer", capabilities=["write"])
        flow = await ws_owner.workflows.define("review", "parallel", PIPELINE)
        spaces = {
            n: await c.join(info.workspace_id)
            for n, c in clients.items()
            if n != "owner"
        }

        done: list[str] = []
        workers = [
            asyncio.create_task(work(clients[n], spaces[n], done))
            for n in ("writer", "reviewer-a", "reviewer-b", "editor")
        ]
        try:
            async with spaces["observer"].workflows.events() as followed:
                run = await ws_owner.workflows.start(flow, input={"topic": "cats"})
                final = await run.wait(timeout_s=WAIT_S)
                seen = []
                while not seen or not seen[-1].execution.finished:
                    seen.append(await followed.next(timeout_s=WAIT_S))
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

        assert final.status == "completed", final
        assert sorted(done) == [
            "draft:writer",
            "merge:editor",
            "review_a:reviewer-a",
            "review_b:reviewer-b",
        ]
        assert final.step_results == {
            step: {"by": by, "step": step}
            for step, by in (
                ("draft", "writer"),
                ("review_a", "reviewer-a"),
                ("review_b", "reviewer-b"),
                ("merge", "editor"),
            )
        }
        assert seen[0].action == "start" and seen[-1].action == "complete"
        assert all(e.execution.execution_id == run.execution_id for e in seen)
        execution, step_tasks = await ws_owner.workflows.execution(run.execution_id)
        assert execution == final and sorted(t.step_id for t in step_tasks) == [
            "draft",
            "merge",
            "review_a",
            "review_b",
        ]
        rows = await admin_fetch(
            nodes.db,
            "SELECT delegation_type::text AS t, to_agent_id FROM task_delegations WHERE tenant_id = $1",
            tenant,
        )
        assert [(r["t"], r["to_agent_id"]) for r in rows] == [("automatic", "writer")]

        # pause, resume, cancel; a finished run refuses; an inactive workflow does not start
        held = await ws_owner.workflows.start(flow, input={})
        assert (await held.pause()).status == "paused"
        assert (await held.resume()).status == "running"
        cancelled = await held.cancel()
        assert cancelled.status == "cancelled"
        _, open_tasks = await ws_owner.workflows.execution(held.execution_id)
        assert {t.status for t in open_tasks} == {"cancelled"}
        with pytest.raises(tandem_client.InvalidTransition):
            await held.resume()
        listed = await ws_owner.workflows.executions(flow)
        assert [e.execution_id for e in listed] == [held.execution_id, run.execution_id]
        await ws_owner.workflows.deactivate(flow)
        with pytest.raises(tandem_client.Conflict):
            await ws_owner.workflows.start(flow)
