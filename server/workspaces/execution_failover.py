"""Failover of workflow step tasks (docs/protocol.md section 12.9).

A step task held by an agent that is gone (no node's heartbeat stamped its registry entry for
`agent_failover_grace_s`, server/workspaces/agent_liveness.py) or whose status is `error` or
`maintenance` goes back to `assigned`, to another agent with the step's capability chosen as
the engine chooses (server/workspaces/execution_agents.py), recorded as a `failover` delegation
from the holder. Every node's sweep runs it (server/workspaces/coordination.py); the tasks are
read `FOR UPDATE SKIP LOCKED`, so two nodes never fail one task over twice. A task with no free
capable agent stays where it is and is tried again on the next sweep.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from server.db.store import Q
from server.workspaces import execution_agents, tasks
from server.workspaces.task_rules import Action, Actor, check

KIND = "failover"


@dataclass(frozen=True, slots=True)
class Failover:
    """One task moved: the task now, its delegation, and the agent it was taken from."""

    task: tasks.Task
    delegation: tasks.Delegation
    previous: str


async def open_step_tenants(
    conn: asyncpg.Connection, after: uuid.UUID | None, max_tenants: int
) -> list[uuid.UUID]:
    """At most `max_tenants` tenants with step tasks held or waiting, in id order after `after` (None: from
    the first). On a plain pooled connection, outside `tenant_transaction`: the sweep's one step
    across tenants (ids only); which tasks to move is decided in each tenant's transaction."""
    rows = await conn.fetch(Q["execution_open_step_tenants"], after, max_tenants)
    return [r["tenant_id"] for r in rows]


async def fail_over(
    conn: asyncpg.Connection, grace_s: float, seen_within_s: float, max_rows: int
) -> list[Failover]:
    """Fail over at most `max_rows` of the current tenant's orphaned step tasks, in the caller's
    tenant transaction; returns those moved (the caller publishes their `task.changed`)."""
    moved: list[Failover] = []
    for row in await conn.fetch(Q["execution_orphaned_tasks"], grace_s, max_rows):
        values = dict(row)
        holder_status, capability = (
            values.pop("holder_status"),
            values.pop("capability"),
        )
        task = tasks._task(values)
        # The query takes only held tasks of steps given by capability.
        assert capability is not None and task.assigned_to is not None
        status = check(task.status, Action.DELEGATE, {Actor.SYSTEM}, retries_left=False)
        agent, _ = await execution_agents.pick(
            conn, capability, seen_within_s, exclude=task.assigned_to
        )
        if agent is None:
            continue  # nobody free: the next sweep tries again
        why = (
            holder_status
            if holder_status in ("error", "maintenance")
            else f"gone for over {grace_s:g} s"
        )
        reason = f"{task.assigned_to} is {why}; step {task.step_id} needs {capability}"
        after, _ = tasks._moved(
            await conn.fetchrow(
                Q["task_apply_transition"], task.task_id, status, agent, task.retry_count, None, task.error,
                *tasks._STAMPS[status], None, False, None,
            )
        )  # fmt: skip
        delegation = tasks.Delegation(
            **dict(
                await conn.fetchrow(
                    Q["task_insert_delegation"],
                    task.task_id,
                    task.assigned_to,
                    agent,
                    KIND,
                    reason,
                )
            )
        )
        moved.append(Failover(after, delegation, task.assigned_to))
    return moved
