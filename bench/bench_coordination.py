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
import math
import os
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.bench_documents import SERVER_ENV  # noqa: E402
from bench.common import (  # noqa: E402
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    median,
    start_nodes,
    workdir,
)
from bench.coord_agents import LOCK_TTL_MS  # noqa: E402
from bench.coord_scenarios import Ctx, lock_scenario, state_scenario  # noqa: E402

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
