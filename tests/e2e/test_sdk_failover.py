"""Failover of workflow step tasks end to end (docs/protocol.md section 12.9): two `tandem serve`
nodes on one database, two SDK agents with the step's capability, one per node, each working
through `ws.tasks.assigned_to_me()`, joined with `task_events="own"` (only their own tasks'
events reach them). The agent holding the step task goes away mid-task (its
connection closes while the task is in progress): the sweep of one node gives the task to the
other agent once the grace period has passed (never before it; how soon after depends on the sweep
interval and the machine's load, so it is not asserted), recorded as one `failover` delegation; the other agent completes it and the run completes. The old holder,
back, cannot complete the task any more. Then an agent that sets itself `maintenance` loses its
assigned step task the same way (and hears of it), and a step waiting for a free agent is handed out when one
registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from datetime import datetime

import pytest

from tests import wsclient
from tests.conftest import TestDatabase
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
GRACE_S, SWEEP_S, TTL_S = (
    2.0,
    0.2,
    1.5,
)  # heartbeat every TTL_S / 3 = 0.5 s, well inside GRACE_S
ONE_STEP = [{"id": "work", "task": {"title": "Work"}, "capability": "work"}]


async def next_task(mine: tandem_client.AssignedTasks) -> tandem_client.Task:
    async with asyncio.timeout(WAIT_S):
        return await anext(mine)


async def delegations(
    db: TestDatabase, tenant: uuid.UUID
) -> list[tuple[str, str, str]]:
    rows = await admin_fetch(
        db,
        "SELECT delegation_type::text AS t, from_agent_id AS f, to_agent_id AS to_ FROM task_delegations"
        " WHERE tenant_id = $1 ORDER BY delegated_at",
        tenant,
    )
    return [(r["t"], r["f"], r["to_"]) for r in rows]


async def test_a_gone_agents_step_task_fails_over_to_another_capable_agent(
    nodes: Nodes,
) -> None:
    nodes.start(
        2,
        TANDEM_AGENT_FAILOVER_GRACE_S=str(GRACE_S),
        TANDEM_TASK_SWEEP_INTERVAL_S=str(SWEEP_S),
        TANDEM_PRESENCE_TTL_S=str(TTL_S),
    )
    tenant = uuid.uuid4()

    def connect(agent_id: str, node: int) -> tandem_client.Client:
        return tandem_client.connect(
            nodes.url(node), wsclient.token(tenant, agent_id), **FAST
        )

    async with contextlib.AsyncExitStack() as stack:
        owner = await stack.enter_async_context(connect("owner", 0))
        info = await owner.create_workspace("Failover", visibility="team")
        ws_owner = await owner.join(info.workspace_id)
        for name in ("worker-a", "worker-b", "worker-c"):
            await ws_owner.members.add(name, "member")
        a = await stack.enter_async_context(connect("worker-a", 0))
        b = await stack.enter_async_context(connect("worker-b", 1))
        await a.agents.register("A", capabilities=["work"], max_concurrent_tasks=1)
        await b.agents.register("B", capabilities=["work"], max_concurrent_tasks=1)
        flow = await ws_owner.workflows.define("one", "sequential", ONE_STEP)
        # Workers that only do their own tasks join with task_events="own" (protocol 5.4).
        ws_a = await a.join(info.workspace_id, task_events="own")
        ws_b = await b.join(info.workspace_id, task_events="own")
        mine_a = await stack.enter_async_context(ws_a.tasks.assigned_to_me())
        mine_b = await stack.enter_async_context(ws_b.tasks.assigned_to_me())

        # worker-a is chosen (least loaded, then by id), starts, and goes away mid-task
        run = await ws_owner.workflows.start(flow, input={})
        task = await next_task(mine_a)
        await ws_a.tasks.accept(task)
        assert (await ws_a.tasks.start(task)).status == "in_progress"
        await a.close()
        gone_at = time.time()

        moved = await next_task(mine_b)
        assert (
            moved.task_id == task.task_id
            and moved.status == "assigned"
            and moved.attempt == 1
        )
        _, history = await ws_owner.tasks.get(task)
        failover = history[-1]
        assert (failover.delegation_type, failover.from_agent_id, failover.to_agent_id) == (
            "failover", "worker-a", "worker-b",
        )  # fmt: skip
        assert "worker-a is gone" in (failover.reason or "")
        delay_s = datetime.fromisoformat(failover.delegated_at).timestamp() - gone_at
        # Not before the grace period (the last stamp may precede the close by one heartbeat).
        assert delay_s >= GRACE_S - TTL_S / 3 - 0.1, delay_s

        await ws_b.tasks.accept(moved)
        await ws_b.tasks.start(moved)
        await ws_b.tasks.complete(moved, {"by": "worker-b"})
        final = await run.wait(timeout_s=WAIT_S)
        assert final.status == "completed" and final.step_results == {
            "work": {"by": "worker-b"}
        }
        assert await delegations(nodes.db, tenant) == [
            ("load_balance", "system", "worker-a"),
            ("failover", "worker-a", "worker-b"),
        ]

        # a second run goes to worker-b, the only one left; worker-a comes back and cannot
        # complete the task it lost; worker-b goes into maintenance: its task goes to worker-a
        second = await ws_owner.workflows.start(flow, input={})
        given = await next_task(mine_b)
        assert given.execution_id == second.execution_id
        back = await stack.enter_async_context(connect("worker-a", 1))
        ws_back = await back.join(info.workspace_id, task_events="own")
        with pytest.raises(tandem_client.InvalidTransition):
            await ws_back.tasks.complete(task, {"by": "worker-a"})
        mine_back = await stack.enter_async_context(ws_back.tasks.assigned_to_me())
        await back.agents.register("A", capabilities=["work"], max_concurrent_tasks=1)
        async with ws_b.tasks.events() as b_events:
            await b.agents.set_status("maintenance")
            taken = await next_task(mine_back)
            assert taken.task_id == given.task_id
            # worker-b hears of the task taken from it
            async with asyncio.timeout(WAIT_S):
                async for event in b_events:
                    moved_away = event.task.task_id == given.task_id
                    if moved_away and event.action == "delegate":
                        break
            assert event.task.assigned_to == "worker-a" and event.delegation is not None
        _, history = await ws_owner.tasks.get(taken)
        assert (history[-1].delegation_type, history[-1].from_agent_id, history[-1].reason) == (
            "failover", "worker-b", "worker-b is maintenance; step work needs work",
        )  # fmt: skip
        await ws_back.tasks.accept(taken)
        await ws_back.tasks.start(taken)
        await ws_back.tasks.complete(taken, {"by": "worker-a"})
        assert (await second.wait(timeout_s=WAIT_S)).status == "completed"

        # a step waiting for a free agent is handed out when one registers
        await back.agents.set_status("maintenance")
        third = await ws_owner.workflows.start(flow, input={})
        _, waiting = await ws_owner.workflows.execution(third.execution_id)
        assert [(t.status, t.assigned_to) for t in waiting] == [("pending", None)]
        c = await stack.enter_async_context(connect("worker-c", 1))
        ws_c = await c.join(info.workspace_id, task_events="own")
        mine_c = await stack.enter_async_context(ws_c.tasks.assigned_to_me())
        await c.agents.register("C", capabilities=["work"], max_concurrent_tasks=1)
        handed = await next_task(mine_c)
        assert handed.execution_id == third.execution_id
