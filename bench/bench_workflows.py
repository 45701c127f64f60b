"""Workflow benchmark: executions of a 5-step workflow done by 10 SDK agents on two nodes.

Starts its own PostgreSQL (fsync on) and two `tandem serve` nodes on it. The workflow:
`a`, then `b` and `c` in parallel, then `d` (joins them), then `e`; every step needs the
capability `work`. Ten SDK agents (five per node) register it and work through
`ws.tasks.assigned_to_me()`, joined with `task_events="own"` (as are the drivers): start (accepting it too) and complete each task given to them, concurrently up to
their slots. A driver on each node keeps `--in-flight` executions running (starts one when one
ends) until `--count` executions completed or `--time-limit-s` passed. Measured:
- executions completed per second (and step transitions per second: 5 per execution);
- step-advance latency: from sending `task.complete` of a step's task (the last of a join's)
  until the next step's task arrives at the agent it was assigned to (its `task.changed`), in
  milliseconds, p50/p95/p99 over every advance.
All clients run in this one process (the client side shares the machine's cores with the nodes
and PostgreSQL). Prints the figures; asserts nothing; stops what it started, by pid.

`--analyze` runs ANALYZE after the warm-up: the tables start empty, and until autovacuum first
analyzes them (a minute or more) the planner reads single rows of `tasks` by id through an index
on another column, filtering hundreds of rows; a deployment that has run a while has statistics.
`--statements` loads pg_stat_statements into the benchmark's own cluster (a restart before the
nodes start) and prints, for the measured window, the statements, round trips and transactions
per step transition, the row updates of tasks, workflow_executions and agents (HOT or not)
and where PostgreSQL's execution time went.

    .venv/bin/python bench/bench_workflows.py [--count 300] [--in-flight 10] [--time-limit-s 120]
        [--analyze] [--statements]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "clients"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import tandem_client

from bench.common import (
    Postgres,
    cleanup_dir,
    cpu_percent,
    cpu_seconds,
    jwt_secret,
    machine,
    machine_busy_seconds,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from server.core.auth import issue_token

SERVER_ENV = {
    "TANDEM_MAX_MESSAGES_PER_S": "100000",
    "TANDEM_MAX_MESSAGE_BURST": "100000",
}
AGENTS, SLOTS = 10, 8
STEPS = [
    {"id": "a", "task": {"title": "A"}, "capability": "work"},
    {"id": "b", "task": {"title": "B"}, "capability": "work", "depends_on": ["a"]},
    {"id": "c", "task": {"title": "C"}, "capability": "work", "depends_on": ["a"]},
    {"id": "d", "task": {"title": "D"}, "capability": "work", "depends_on": ["b", "c"]},
    {"id": "e", "task": {"title": "E"}, "capability": "work", "depends_on": ["d"]},
]
DEPENDS = {s["id"]: s.get("depends_on", []) for s in STEPS}
WAIT_S = 60.0  # one execution's deadline
TOP_STATEMENTS = 25  # statements listed by --statements


class Statements:
    """pg_stat_statements and pg_stat_database over the measured window (`--statements`)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.commits = 0
        self.updates: dict[str, tuple[int, int]] = {}

    async def _updates(self, conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
        """Row updates and HOT ones (no index entry written) of each table the engine updates."""
        rows = await conn.fetch(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname IN ('tasks', 'workflow_executions', 'agents')"
        )
        return {r["relname"]: (r["n_tup_upd"], r["n_tup_hot_upd"]) for r in rows}

    async def _xacts(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ))  # fmt: skip

    async def reset(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute("SELECT pg_stat_statements_reset()")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            self.commits = await self._xacts(conn)
            self.updates = await self._updates(conn)
        finally:
            await conn.close()

    async def report(self, transitions: int) -> str:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            xacts = await self._xacts(conn) - self.commits
            rows = await conn.fetch(
                "SELECT calls, total_exec_time, shared_blks_hit + shared_blks_read AS blocks, toplevel, query FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " ORDER BY calls DESC"
            )
            updates = await self._updates(conn)
        finally:
            await conn.close()
        per = max(transitions, 1)
        calls = sum(r["calls"] for r in rows if r["toplevel"])
        nested = sum(r["calls"] for r in rows if not r["toplevel"])
        # Nested statements' time is inside their top-level statement's.
        total_ms = sum(r["total_exec_time"] for r in rows if r["toplevel"])
        lines = [
            (
                f"per step transition ({transitions}): {calls / per:.1f} statements (each a round trip) "
                f"running {nested / per:.1f} more inside (functions, triggers), {xacts / per:.2f} transactions, "
                f"{total_ms / per:.2f} ms of statement execution"
            ),
        ]
        moved = []
        for table, (upd, hot) in sorted(updates.items()):
            upd0, hot0 = self.updates.get(table, (0, 0))
            moved.append(
                f"{table} {(upd - upd0) / per:.2f} ({hot - hot0} of {upd - upd0} HOT)"
            )
        lines += ["  row updates per transition: " + ", ".join(moved),
                  "  calls/transition  mean ms  % time  blocks/call  top  statement"]  # fmt: skip
        for r in rows[:TOP_STATEMENTS]:
            query = " ".join(r["query"].split())[:110]
            lines.append(
                f"  {r['calls'] / per:16.2f} {r['total_exec_time'] / max(r['calls'], 1):8.3f} "
                f"{100 * r['total_exec_time'] / max(total_ms, 1e-9):7.1f}  {r['blocks'] / max(r['calls'], 1):11.1f}"
                f"  {'yes' if r['toplevel'] else ' no'}  {query}"
            )
        return "\n".join(lines)


async def load_statements(pg: Postgres) -> None:
    """Preload pg_stat_statements in the benchmark's cluster (a restart before the nodes start)."""
    conn = await asyncpg.connect(pg.admin_url)
    try:
        await conn.execute(
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
        )
    finally:
        await conn.close()
    pg.stop()
    pg.start()
    conn = await asyncpg.connect(pg.admin_url)
    try:  # statements run by functions and triggers too (the audit trail), apart from the top level
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def create_statements(pg: Postgres) -> None:
    conn = await asyncpg.connect(pg.admin_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


class Clock:
    """When each step task's completion was sent, and the advances measured from them."""

    def __init__(self) -> None:
        self.completed: dict[tuple[str, str], float] = {}
        self.advances: list[float] = []
        self.measuring = False

    def arrived(self, task: tandem_client.Task, now: float) -> None:
        deps = DEPENDS.get(task.step_id or "", [])
        sent = [self.completed.get((task.execution_id or "", d)) for d in deps]
        if self.measuring and deps and all(t is not None for t in sent):
            self.advances.append((now - max(t for t in sent if t is not None)) * 1000)


async def worker(
    client: tandem_client.Client, ws_id: str, clock: Clock, stop: asyncio.Event
) -> None:
    ws = await client.join(ws_id, task_events="own")  # it only works its own tasks
    running: set[asyncio.Task[None]] = set()

    async def do(task: tandem_client.Task) -> None:
        with contextlib.suppress(tandem_client.InvalidTransition):
            await ws.tasks.start(task)  # from assigned: accepted and started at once
            clock.completed[(task.execution_id or "", task.step_id or "")] = (
                time.perf_counter()
            )
            await ws.tasks.complete(task, {"by": client.agent_id})

    async with ws.tasks.assigned_to_me() as mine:
        async for task in mine:
            clock.arrived(task, time.perf_counter())
            if stop.is_set():
                break
            job = asyncio.create_task(do(task))
            running.add(job)
            job.add_done_callback(running.discard)


async def driver(ws: tandem_client.Workspace, flow: tandem_client.Workflow, in_flight: int, quota: list[int],
                 deadline: float, done: list[float]) -> None:  # fmt: skip
    async def one() -> None:
        while quota[0] > 0 and time.monotonic() < deadline:
            quota[0] -= 1
            run = await ws.workflows.start(flow, input={})
            final = await run.wait(timeout_s=WAIT_S)
            if final.status == "completed":
                done.append(time.perf_counter())

    await asyncio.gather(*(one() for _ in range(in_flight)))


class Cpu:
    """CPU used in the measured window by the nodes, PostgreSQL, this process and the rest."""

    def __init__(self, node_pids: list[int], pg_pid: int) -> None:
        self.groups = {
            "nodes": lambda: node_pids,
            "postgres": lambda: tree_pids(pg_pid),
            "client": lambda: [os.getpid()],
        }
        self.before = {name: cpu_seconds(pids()) for name, pids in self.groups.items()}
        self.busy, self.started = machine_busy_seconds(), time.perf_counter()

    def report(self) -> str:
        wall = time.perf_counter() - self.started
        used = {
            name: cpu_percent(self.before[name], cpu_seconds(pids()), wall)
            for name, pids in self.groups.items()
        }
        other = 100.0 * (machine_busy_seconds() - self.busy) / wall - sum(used.values())
        return "cpu % of one core: " + "  ".join(
            f"{k} {v:.0f}" for k, v in {**used, "other": other}.items()
        )


async def run(
    urls: list[str], secret: str, count: int, in_flight: int, warmup: int, time_limit_s: float,
    pids: tuple[list[int], int], statements: Statements | None, analyze_url: str | None,
) -> None:  # fmt: skip
    tenant = uuid.uuid4()

    def connect(agent: str, node: int) -> tandem_client.Client:
        return tandem_client.connect(
            urls[node], issue_token(secret, tenant, agent, 3600)
        )

    async with contextlib.AsyncExitStack() as stack:
        owners = [
            await stack.enter_async_context(connect(f"owner-{n}", n)) for n in range(2)
        ]
        info = await owners[0].create_workspace("bench", visibility="team")
        # A driver follows its own runs (their step tasks are its own: it started them).
        spaces = [await o.join(info.workspace_id, task_events="own") for o in owners]
        agents = [
            await stack.enter_async_context(connect(f"agent-{i}", i % 2))
            for i in range(AGENTS)
        ]
        for agent in agents:
            await agent.agents.register(
                agent.agent_id or "", capabilities=["work"], max_concurrent_tasks=SLOTS
            )
        flow = await spaces[0].workflows.define("bench", "parallel", STEPS)
        clock, stop = Clock(), asyncio.Event()
        workers = [
            asyncio.create_task(worker(a, info.workspace_id, clock, stop))
            for a in agents
        ]
        try:
            warm: list[float] = []
            await driver(
                spaces[0],
                flow,
                in_flight,
                [warmup],
                time.monotonic() + time_limit_s,
                warm,
            )
            if analyze_url is not None:
                conn = await asyncpg.connect(analyze_url)
                try:
                    await conn.execute("ANALYZE")
                finally:
                    await conn.close()
            if statements is not None:
                await statements.reset()
            clock.measuring = True
            done: list[float] = []
            quota = [count]
            started = time.perf_counter()
            cpu = Cpu(*pids)
            deadline = time.monotonic() + time_limit_s
            shares = [in_flight - in_flight // 2, in_flight // 2]  # drivers per node
            await asyncio.gather(
                *(
                    driver(s, flow, n, quota, deadline, done)
                    for s, n in zip(spaces, shares, strict=True)
                    if n
                )
            )
            wall = time.perf_counter() - started
            used = cpu.report()
        finally:
            stop.set()
            for job in workers:
                job.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    per_s = len(done) / wall if wall else 0.0
    lat = summarize(clock.advances)
    print(
        f"executions completed: {len(done)} in {wall:.1f} s ({in_flight} in flight, over 2 nodes, {AGENTS} agents)"
    )
    print(f"executions/s: {per_s:.1f}   step transitions/s: {per_s * len(STEPS):.0f}")
    print(
        f"step advance (complete sent -> next task at its agent), ms, n={len(clock.advances)}: "
        f"p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}"
    )
    print(used)
    if statements is not None:
        print(await statements.report(len(done) * len(STEPS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=300, help="executions measured (at most)"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=10,
        help="executions running at once, over both nodes",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="executions run before measuring"
    )
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=120.0,
        help="bound on the warm-up and on the measurement",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE after the warm-up (statistics as a running deployment has them)",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="count statements per step transition (pg_stat_statements)",
    )
    args = parser.parse_args()
    for key, value in machine().items():
        print(f"{key}: {value}")
    work = workdir("tandem-bench-workflows-")
    pg = Postgres(work).start()
    nodes = []
    try:
        statements = None
        if args.statements:
            asyncio.run(load_statements(pg))
        print(
            f"postgres: {pg.version()} (fsync on); server rate limit raised: {SERVER_ENV}"
        )
        secret = jwt_secret()
        nodes = start_nodes(2, pg.admin_url, secret, work, SERVER_ENV)
        urls = [n.ws_url for n in nodes]
        if args.statements:
            asyncio.run(create_statements(pg))
            statements = Statements(pg.admin_url)
        pids = ([n.pid for n in nodes], pg.postmaster_pid)
        asyncio.run(
            run(
                urls,
                secret,
                args.count,
                args.in_flight,
                args.warmup,
                args.time_limit_s,
                pids,
                statements,
                pg.admin_url if args.analyze else None,
            )
        )
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
