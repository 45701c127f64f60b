"""Who does a workflow step (docs/protocol.md section 12.9): the least-loaded free agent with
a capability, from the agent registry (section 12.7), and the delegation that records the choice.
Called by server/workspaces/executions.py inside the engine's transaction.
"""

from __future__ import annotations

import asyncpg

from server.db.store import Q
from server.workspaces import tasks

ENGINE = "system"  # the from_agent_id of the engine's delegations


async def pick(
    conn: asyncpg.Connection, capability: str, seen_within_s: float, exclude: str | None = None
) -> tuple[str | None, str | None]:
    """The agent other than `exclude` to give a `capability` step to and the delegation type:
    `automatic` when it was the only free one, `load_balance` when chosen among several;
    (None, None): none is free. Picks of one tenant wait for each other's commit (a lock held
    to the end of the transaction), so a slot counted free is not filled twice."""
    await conn.execute(Q["execution_lock_agent_slots"])
    row = await conn.fetchrow(Q["execution_pick_agent"], seen_within_s, capability, exclude)
    if row is None:
        return None, None
    return row["agent_id"], "load_balance" if row["candidates"] > 1 else "automatic"


async def delegate(
    conn: asyncpg.Connection, task: tasks.Task, to: str | None, kind: str, reason: str
) -> tasks.Delegation:
    row = await conn.fetchrow(
        Q["task_insert_delegation"], task.task_id, ENGINE, to, kind, reason
    )
    return tasks.Delegation(**dict(row))
