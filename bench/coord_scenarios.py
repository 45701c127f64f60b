"""The scenarios of bench/bench_coordination.py: a node and its agents (`Ctx`), locks under
contention (polling or queued) and state updates (alone, apart, conflicting, merged), each with
a fresh workspace, a warm-up and a measured window; and the figures each comes to.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Postgres,
    ServerNode,
    cpu_percent,
    cpu_seconds,
    machine_busy_seconds,
    summarize,
    tree_pids,
)
from bench.coord_agents import (
    CONNECT_CONCURRENCY,
    END_TIMEOUT_S,
    JITTER_S,
    LOCK_WAIT_MS,
    SETUP_TIMEOUT_S,
    STATE_AGENTS,
    Client,
    Tally,
    current_state,
    increment_loop,
    lock_loop,
    merge_loop,
    replace_loop,
)
from bench.lean_client import Agent
from server.core.auth import issue_token

# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    node: ServerNode
    pg: Postgres
    secret: str
    tenant_id: uuid.UUID
    warmup_s: float
    duration_s: float
    pause_s: tuple[float, float] = JITTER_S
    n_workspaces: int = 0

    def token(self, agent_id: str) -> str:
        return issue_token(self.secret, self.tenant_id, agent_id, 7200)

    async def workspaces(self, count: int, with_doc: bool = False) -> tuple[list[str], str | None]:
        """`count` fresh team workspaces (room for 1000 members each); a document in the first if
        asked (its creator joins that one, then leaves with its connection)."""
        admin = await Agent.connect(self.node.ws_url, self.token("bench-admin"))
        try:
            ids = []
            for _ in range(count):
                self.n_workspaces += 1
                ws = await admin.request("workspace.create", name=f"coord-{self.n_workspaces}", visibility="team", max_members=1000)
                ids.append(ws["workspace"]["workspace_id"])
            if not with_doc:
                return ids, None
            await admin.request("workspace.join", workspace_id=ids[0])
            doc = await admin.request("doc.create", workspace_id=ids[0], title="locked")
            return ids, doc["document"]["doc_id"]
        finally:
            await admin.close()

    async def clients(self, agent_ids: Sequence[str], workspace_ids: Sequence[str]) -> list[Client]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(agent_id: str, workspace_id: str) -> Client:
            async with gate:
                agent = await Agent.connect(self.node.ws_url, self.token(agent_id))
                try:
                    await agent.request("workspace.join", workspace_id=workspace_id)
                except BaseException:
                    await agent.close()
                    raise
                return Client(agent, agent_id)

        async with asyncio.timeout(SETUP_TIMEOUT_S):
            out = await asyncio.gather(*(one(a, w) for a, w in zip(agent_ids, workspace_ids)), return_exceptions=True)
        made = [c for c in out if isinstance(c, Client)]
        failed = [e for e in out if isinstance(e, BaseException)]
        if failed:
            await asyncio.gather(*(c.agent.close() for c in made), return_exceptions=True)
            raise failed[0]
        return made

    async def run(
        self, clients: list[Client], loop: Callable[[Client, float, float, Tally], Awaitable[None]]
    ) -> tuple[Tally, dict[str, float], float]:
        """Runs `loop` for every client: warm-up, then the measured window (CPU read across it)."""
        tally = Tally()
        measure_from = time.monotonic() + self.warmup_s
        stop_at = measure_from + self.duration_s
        cpu: dict[str, float] = {}

        async def read_cpu() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))  # scheduling a reading
            procs = {"node": tree_pids(self.node.pid), "postgres": tree_pids(self.pg.postmaster_pid), "client": [os.getpid()]}
            before = {k: cpu_seconds(v) for k, v in procs.items()}
            busy0, t0 = machine_busy_seconds(), time.monotonic()
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            wall = time.monotonic() - t0
            procs["postgres"] = tree_pids(self.pg.postmaster_pid)
            cpu.update({k: cpu_percent(before[k], cpu_seconds(v), wall) for k, v in procs.items()})
            cpu["other"] = max(0.0, 100.0 * (machine_busy_seconds() - busy0) / wall - sum(cpu.values()))

        events0 = sum(c.events for c in clients)
        async with asyncio.timeout(self.warmup_s + self.duration_s + END_TIMEOUT_S):
            await asyncio.gather(read_cpu(), *(loop(c, measure_from, stop_at, tally) for c in clients))
        # Events arriving after the window are counted too: a small overestimate, said in the notes.
        events_per_s = (sum(c.events for c in clients) - events0) / (self.warmup_s + self.duration_s)
        return tally, cpu, events_per_s

    async def close(self, clients: list[Client]) -> None:
        await asyncio.gather(*(c.agent.close() for c in clients), return_exceptions=True)


def result(name: str, agents: int, tally: Tally, cpu: dict[str, float], events_per_s: float, duration_s: float,
           check: str = "") -> dict[str, Any]:  # fmt: skip
    return {
        "name": name,
        "agents": agents,
        "cycles_per_s": tally.cycles / duration_s,
        "attempts_per_s": tally.attempts / duration_s,
        "locked_per_s": tally.locked / duration_s,
        "conflicts_per_success": tally.conflicts / tally.cycles if tally.cycles else float("nan"),
        "merged": tally.merged,
        "merged_share": tally.merged / tally.cycles if tally.cycles else float("nan"),
        "first_ms": summarize(tally.first_ms),
        "cycle_ms": summarize(tally.cycle_ms),
        "events_per_s": events_per_s,
        "cpu": cpu,
        "gave_up": tally.gave_up,
        "errors": dict(tally.errors),
        "check": check,
    }


async def lock_scenario(ctx: Ctx, agents: int, kind: str) -> dict[str, Any]:
    """kind: `one` (every agent on one document's lock, polling), `one-wait` (the same, queued by
    the server with `wait_ms`), `own` (a named lock each, one workspace: every lock event still
    reaches all N sessions), `own-ws` (a named lock and a workspace each: no contention and no
    fan-out)."""
    wait_ms = LOCK_WAIT_MS if kind == "one-wait" else 0
    kind = "one" if kind == "one-wait" else kind
    workspace_ids, doc_id = await ctx.workspaces(agents if kind == "own-ws" else 1, with_doc=kind == "one")
    ids = [f"agent-{k}" for k in range(agents)]
    per_agent = [workspace_ids[k if kind == "own-ws" else 0] for k in range(agents)]
    targets = {
        a: {"workspace_id": w, **({"doc_id": doc_id} if kind == "one" else {"name": f"own-{a}"})} for a, w in zip(ids, per_agent)
    }
    clients = await ctx.clients(ids, per_agent)
    try:
        tally, cpu, events = await ctx.run(
            clients, lambda c, m, s, t: lock_loop(c, targets[c.agent_id], ctx.pause_s, m, s, t, wait_ms)
        )
    finally:
        await ctx.close(clients)
    name = {"one": "one lock" + (", wait" if wait_ms else ""), "own": "own locks", "own-ws": "own locks+ws"}[kind] + f", N={agents}"
    return result(name, agents, tally, cpu, events, ctx.duration_s)


async def state_scenario(ctx: Ctx, kind: str) -> dict[str, Any]:
    agents = 1 if kind == "solo" else STATE_AGENTS
    shared = kind in ("increment", "merge")
    workspaces, _ = await ctx.workspaces(1 if shared else agents)
    ids = [f"agent-{k}" for k in range(agents)]
    per_agent = [workspaces[0 if shared else k] for k in range(agents)]
    clients = await ctx.clients(ids, per_agent)
    try:
        loop = {"solo": replace_loop, "own": replace_loop, "increment": increment_loop, "merge": merge_loop}[kind]
        by_client = dict(zip((c.agent_id for c in clients), per_agent))
        tally, cpu, events = await ctx.run(clients, lambda c, m, s, t: loop(c, by_client[c.agent_id], m, s, t))
        check = ""
        if shared:  # the version advanced once per update; the counter lost no increment
            version, state = await current_state(clients[0], workspaces[0])
            ok = version - 1 == tally.total_ok and (kind != "increment" or state.get("counter") == tally.total_ok)
            check = f"{'ok' if ok else 'MISMATCH'} ({tally.total_ok} updates, version {version}" + (
                f", counter {state.get('counter')})" if kind == "increment" else ")")
    finally:
        await ctx.close(clients)
    name = {"solo": "1 agent, replace", "own": "10 agents, own ws", "increment": "10 on 1, retry",
            "merge": "10 on 1, merge"}[kind]  # fmt: skip
    return result(name, agents, tally, cpu, events, ctx.duration_s, check)
