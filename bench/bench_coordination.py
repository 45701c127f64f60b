"""Coordination benchmark: lock round trips under contention, workspace-state updates.

Starts its own PostgreSQL (fsync on) and one `tandem serve` node, then, through the protocol
(docs/protocol.md section 12), with one connection per agent and one request in flight each:
- locks: N agents (2, 20, 100) contend for one document's lock, each looping {`lock.acquire`
  (ttl 5 s); on ok `lock.release` with its fence; on `locked` a jittered 1-5 ms pause, then
  again}; then the same N agents each on a named lock of its own (no contention), all in one
  workspace (every lock event still reaches the N sessions) and each in a workspace of its own
  (no fan-out either: the uncontended ceiling);
- state: `state.update` by one agent alone and by 10 agents each in a workspace of its own
  (`replace`, right `expected_version`: no conflicts); 10 agents incrementing one counter in one
  workspace (`replace`, retry from the `conflict` details); 10 agents merging into one workspace
  with `on_conflict: merge` (no retries).
Every scenario has a fresh workspace, a warm-up, a measured window and a count cap per agent.
Prints tables (medians of `--repeat` runs); asserts nothing; stops what it started, by pid.

    .venv/bin/python bench/bench_coordination.py [--duration-s 10] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.bench_documents import SERVER_ENV  # noqa: E402
from bench.common import (  # noqa: E402
    Postgres,
    ServerNode,
    cleanup_dir,
    cpu_percent,
    cpu_seconds,
    jwt_secret,
    machine,
    machine_busy_seconds,
    median,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from bench.lean_client import Agent  # noqa: E402
from server.core.auth import issue_token  # noqa: E402

LOCK_TTL_MS = 5000
JITTER_S = (0.001, 0.005)  # the pause after `locked` before trying again
LOCK_WAIT_MS = 2000  # `one-wait`: how long one acquisition may queue for the lock
MAX_OPS_PER_AGENT = 200_000  # every agent loop is bounded in count as well as in time
MAX_TRIES_PER_INCREMENT = 1000  # attempts of one counter increment before giving up
REQUEST_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 180.0  # connecting and joining one scenario's agents
END_TIMEOUT_S = 120.0  # agents finishing their last cycle after the measured window
CONNECT_CONCURRENCY = 20
STATE_AGENTS = 10
# Events are counted by their opening bytes, never parsed: with 100 agents in one workspace every
# lock change reaches 100 sessions (the server writes the type first, compact JSON).
EVENT_PREFIXES = ('{"type":"lock.acquired"', '{"type":"lock.released"', '{"type":"lock.renewed"', '{"type":"state.changed"')


# --- one agent's connection ---------------------------------------------------------------------


class Client:
    """An agent's connection with at most one request in flight: `call` sends and waits for the
    reply (an error frame is returned, not raised); events are counted, not parsed."""

    def __init__(self, agent: Agent, agent_id: str) -> None:
        assert agent.sock is not None
        self.agent = agent
        self.agent_id = agent_id
        self.sock = agent.sock
        self.sock.on_text = self.on_text
        self.rid = 1_000_000  # above the ids `Agent.request` used during setup
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.events = 0
        self.stray = 0

    def on_text(self, text: str) -> None:
        if text.startswith(EVENT_PREFIXES):
            self.events += 1
            return
        frame = json.loads(text)
        waiter = self.waiter
        if waiter is not None and not waiter.done() and frame.get("re") == self.rid:
            waiter.set_result(frame)
        else:
            self.stray += 1  # e.g. session.closing

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.rid += 1
        self.waiter = asyncio.get_running_loop().create_future()
        self.sock.send_text(json.dumps({**message, "id": self.rid}, separators=(",", ":")))
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await self.waiter


@dataclass
class Tally:
    """What the agents of one run measured (samples only from requests started in the window)."""

    attempts: int = 0
    locked: int = 0
    cycles: int = 0  # locks: acquire + release; state: successful updates
    conflicts: int = 0
    merged: int = 0
    gave_up: int = 0
    total_ok: int = 0  # successful updates over the whole run, warm-up included (state checks)
    errors: Counter[str] = field(default_factory=Counter)
    first_ms: list[float] = field(default_factory=list)  # acquire round trips / update round trips
    cycle_ms: list[float] = field(default_factory=list)  # acquire -> release / first try -> success


def error_code(frame: dict[str, Any]) -> str:
    return str(frame.get("code")) if frame.get("type") == "error" else f"unexpected {frame.get('type')}"


# --- agent loops ----------------------------------------------------------------------------------


async def lock_loop(
    c: Client, target: dict[str, Any], pause_s: tuple[float, float], measure_from: float, stop_at: float, t: Tally,
    wait_ms: int = 0,
) -> None:
    """Poll (`locked`, pause, try again) or, with `wait_ms`, let the server queue the acquisition."""
    acquire = {"type": "lock.acquire", **target, "ttl_ms": LOCK_TTL_MS}
    rng = random.Random(c.agent_id)
    for _ in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        if wait_ms:  # never past the end of the window
            acquire["wait_ms"] = max(1, min(wait_ms, int((stop_at - t0) * 1000)))
        reply = await c.call(acquire)
        t1 = time.monotonic()
        measured = t0 >= measure_from
        if measured:
            t.attempts += 1
            t.first_ms.append((t1 - t0) * 1000)
        if reply["type"] == "lock.acquire.ok":
            released = await c.call({"type": "lock.release", **target, "fence": reply["lock"]["fence"]})
            if released["type"] != "lock.release.ok":
                t.errors[error_code(released)] += 1
            elif measured:
                t.cycles += 1
                t.cycle_ms.append((time.monotonic() - t0) * 1000)
            continue
        if reply.get("code") == "locked":
            t.locked += measured
        else:
            t.errors[error_code(reply)] += 1
        if not wait_ms:
            await asyncio.sleep(rng.uniform(*pause_s))  # the back-off under test, not a wait for a condition


def update(workspace_id: str, version: int, mode: str, value: dict[str, Any], on_conflict: str = "fail") -> dict[str, Any]:
    return {"type": "state.update", "workspace_id": workspace_id, "expected_version": version, "mode": mode,
            "value": value, "on_conflict": on_conflict}  # fmt: skip


async def current_state(c: Client, workspace_id: str) -> tuple[int, dict[str, Any]]:
    reply = await c.call({"type": "state.get", "workspace_id": workspace_id})
    if reply["type"] != "state.get.ok":
        raise RuntimeError(f"state.get: {error_code(reply)}")
    return reply["version"], reply["state"]


async def replace_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Sole writer of its workspace: every update names the right version."""
    version, _ = await current_state(c, workspace_id)
    for i in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        reply = await c.call(update(workspace_id, version, "replace", {"counter": i, "agent": c.agent_id}))
        t1 = time.monotonic()
        if reply["type"] == "state.update.ok":
            version = reply["version"]
            t.total_ok += 1
            if t0 >= measure_from:
                t.cycles += 1
                t.first_ms.append((t1 - t0) * 1000)
        else:
            t.errors[error_code(reply)] += 1
            if reply.get("code") == "conflict":
                version = reply["details"]["version"]


async def increment_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Read-modify-write of one shared counter; a `conflict` carries the current state to retry from."""
    version, state = await current_state(c, workspace_id)
    counter = state.get("counter", 0)
    for _ in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        measured = t0 >= measure_from
        for _try in range(MAX_TRIES_PER_INCREMENT):
            sent = time.monotonic()
            reply = await c.call(update(workspace_id, version, "replace", {"counter": counter + 1}))
            done = time.monotonic()
            if measured:
                t.attempts += 1
                t.first_ms.append((done - sent) * 1000)
            if reply["type"] == "state.update.ok":
                version, counter = reply["version"], reply["state"]["counter"]
                t.total_ok += 1
                if measured:
                    t.cycles += 1
                    t.cycle_ms.append((done - t0) * 1000)
                break
            if reply.get("code") != "conflict":
                t.errors[error_code(reply)] += 1
                version, state = await current_state(c, workspace_id)
                counter = state.get("counter", 0)
                break
            t.conflicts += measured
            version, counter = reply["details"]["version"], reply["details"]["state"].get("counter", 0)
        else:
            t.gave_up += 1


async def merge_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Merges its own key, naming the last version it saw; the server merges over any newer one."""
    version, _ = await current_state(c, workspace_id)
    for i in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        reply = await c.call(update(workspace_id, version, "merge", {"agents": {c.agent_id: i}}, "merge"))
        t1 = time.monotonic()
        if reply["type"] == "state.update.ok":
            version = reply["version"]
            t.total_ok += 1
            if t0 >= measure_from:
                t.cycles += 1
                t.merged += bool(reply["merged"])
                t.first_ms.append((t1 - t0) * 1000)
        else:
            t.errors[error_code(reply)] += 1


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


# --- output -------------------------------------------------------------------------------------

Column = tuple[str, int, Callable[[dict[str, Any]], str]]


def f0(x: float) -> str:
    return f"{x:,.0f}"


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


CPU_COLUMNS: list[Column] = [
    ("ev/s", 7, lambda r: f0(r["events_per_s"])),
    ("cpu% node", 10, lambda r: f0(r["cpu"]["node"])),
    ("pg", 4, lambda r: f0(r["cpu"]["postgres"])),
    ("cli", 4, lambda r: f0(r["cpu"]["client"])),
    ("other", 6, lambda r: f0(r["cpu"]["other"])),
]
LOCK_COLUMNS: list[Column] = [
    ("scenario", -21, lambda r: r["name"]),
    ("cycles/s", 9, lambda r: f0(r["cycles_per_s"])),
    ("tries/s", 8, lambda r: f0(r["attempts_per_s"])),
    ("locked/s", 9, lambda r: f0(r["locked_per_s"])),
    ("acq p50", 8, lambda r: ms(r["first_ms"]["p50"])),
    ("p95", 6, lambda r: ms(r["first_ms"]["p95"])),
    ("p99", 6, lambda r: ms(r["first_ms"]["p99"])),
    ("cycle p50", 10, lambda r: ms(r["cycle_ms"]["p50"])),
    ("p95", 6, lambda r: ms(r["cycle_ms"]["p95"])),
    ("p99", 6, lambda r: ms(r["cycle_ms"]["p99"])),
    *CPU_COLUMNS,
]
STATE_COLUMNS: list[Column] = [
    ("scenario", -18, lambda r: r["name"]),
    ("upd/s", 7, lambda r: f0(r["cycles_per_s"])),
    ("p50", 6, lambda r: ms((r["cycle_ms"] if r["cycle_ms"]["n"] else r["first_ms"])["p50"])),
    ("p99", 6, lambda r: ms((r["cycle_ms"] if r["cycle_ms"]["n"] else r["first_ms"])["p99"])),
    ("conflicts/upd", 14, lambda r: f"{r['conflicts_per_success']:.2f}" if r["name"].endswith("retry") else "-"),
    ("merged", 7, lambda r: f"{r['merged_share'] * 100:.0f}%" if r["name"].endswith("merge") else "-"),
    *CPU_COLUMNS,
]


def header(columns: list[Column]) -> str:
    return " ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w, _ in columns)


def row(columns: list[Column], r: dict[str, Any]) -> str:
    cells = " ".join(f"{v(r):<{-w}}" if w < 0 else f"{v(r):>{w}}" for _, w, v in columns)
    notes = []
    if r["errors"]:
        notes.append("errors " + ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items())))
    if r["gave_up"]:
        notes.append(f"{r['gave_up']} increments gave up")
    if r["check"]:
        notes.append(f"check {r['check']}")
    return cells + (f"  {'; '.join(notes)}" if notes else "")


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeated runs (errors and give-ups summed, checks joined)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key in ("cycles_per_s", "attempts_per_s", "locked_per_s", "conflicts_per_success", "merged_share", "events_per_s"):
        out[key] = median([r[key] for r in runs])
    for key in ("first_ms", "cycle_ms"):
        out[key] = {k: median([r[key][k] for r in runs]) for k in runs[0][key]}
    out["cpu"] = {k: median([r["cpu"][k] for r in runs]) for k in runs[0]["cpu"]}
    out["gave_up"] = sum(r["gave_up"] for r in runs)
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["errors"])
    out["errors"] = dict(errors)
    checks = [r["check"].split(" ", 1)[0] for r in runs if r["check"]]
    out["check"] = ("ok" if all(c == "ok" for c in checks) else "MISMATCH") + f" in {len(checks)} runs" if checks else ""
    return out


async def bench(ctx: Ctx, lock_agents: list[int], repeat: int, only: set[str]) -> None:
    async def repeated(columns: list[Column], make: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        runs = []
        for _ in range(repeat):
            runs.append(await make())
            if repeat > 1:
                print("  run: " + row(columns, runs[-1]), flush=True)
        print(row(columns, merge_runs(runs)), flush=True)

    kinds = [k for k in ("one", "one-wait", "own", "own-ws") if not only or "locks" in only or k in only]
    if kinds:
        print("locks: N agents, one connection each. one lock: all on one document's lock (polling after `locked`; `wait`:")
        print("queued by the server with wait_ms); own locks: a named lock each, one workspace; own locks+ws: a named lock")
        print("and a workspace each. cycles/s: acquire + release completed;")
        print("tries/s: lock.acquire sent; locked/s: `locked` replies; acq: lock.acquire round trip (any reply);")
        print("cycle: acquire sent -> release ok; latencies in ms")
        print(header(LOCK_COLUMNS))
        for kind in kinds:
            for n in lock_agents:
                await repeated(LOCK_COLUMNS, lambda n=n, kind=kind: lock_scenario(ctx, n, kind))
        print()
    if not only or "state" in only:
        print("state: upd/s: successful state.update; p50/p99 ms: round trip, or for `retry` the increment's first try ->")
        print("success; conflicts/upd: `conflict` replies per successful increment; merged: share of replies merged: true")
        print(header(STATE_COLUMNS))
        for kind in ("solo", "own", "increment", "merge"):
            await repeated(STATE_COLUMNS, lambda kind=kind: state_scenario(ctx, kind))
        print()
    print("ev/s: events (lock.*, state.changed) the agents received per second; cpu%: of one core over the measured")
    print("window (node: the node and its children, pg: PostgreSQL, cli: this process, other: the rest of the machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=None, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario, medians printed (default 3)")
    parser.add_argument("--quick", action="store_true", help="3 s per scenario, one run")
    parser.add_argument("--agents", default="2,20,100", help="agent counts of the lock scenarios")
    parser.add_argument("--pause-ms", default="1,5", metavar="MIN,MAX", help="pause after `locked` (default 1,5)")
    parser.add_argument("--only", default="", help="comma-separated: locks (all four kinds) or one, one-wait, own, own-ws; state")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra node environment")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (node and PostgreSQL logs)")
    args = parser.parse_args()
    duration = args.duration_s or (3.0 if args.quick else 10.0)
    warmup = args.warmup_s if args.warmup_s is not None else (0.5 if args.quick else 1.0)
    repeat = 1 if args.quick else max(1, min(args.repeat, 10))
    lock_agents = [int(n) for n in args.agents.split(",") if n]
    pause_s = tuple(float(x) / 1000 for x in args.pause_ms.split(","))
    if len(pause_s) != 2 or not 0 <= pause_s[0] <= pause_s[1]:
        parser.error(f"--pause-ms wants MIN,MAX, got {args.pause_ms!r}")
    only = {s for s in args.only.split(",") if s}
    server_env = dict(SERVER_ENV)
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--server-env wants NAME=VALUE, got {item!r}")
        server_env[name] = value

    work = workdir("tandem-bench-coord-")
    pg = Postgres(work, fsync=True).start()
    secret = jwt_secret()
    node = None
    try:
        node = start_nodes(1, pg.admin_url, secret, work, server_env)[0]
        print(f"# Tandem coordination benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"postgres: {pg.version()}, fsync=on, synchronous_commit=on")
        print(f"  server: 1 node, env {' '.join(f'{k}={v}' for k, v in server_env.items())}; other settings default")
        print(f"  client: this process, one connection per agent, one request in flight each; lock ttl {LOCK_TTL_MS} ms, "
              f"pause after `locked` {pause_s[0] * 1000:g}-{pause_s[1] * 1000:g} ms; {warmup:g} s warm-up + {duration:g} s "
              f"measured per scenario; runs per scenario: {repeat}")
        print(f"    load: machine load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
        print()
        ctx = Ctx(node, pg, secret, uuid.uuid4(), warmup, duration, (pause_s[0], pause_s[1]))
        asyncio.run(bench(ctx, lock_agents, repeat, only))
    finally:
        if node is not None:
            node.stop()
        if args.keep:
            pg.stop()
            print(f"work folder kept: {work}")
        else:
            pg.destroy()
            cleanup_dir(work)


if __name__ == "__main__":
    main()
