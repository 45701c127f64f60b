"""Benchmark of the y-websocket endpoint through real Yjs editors (tests/node/bench.mjs), side by
side with the reference y-websocket server in the same invocation.

Four workloads, each against the reference (`@y/websocket-server` from bench/node's lockfile, in
memory) and against Tandem (`tandem serve`, every update committed to PostgreSQL with fsync on
before anyone else sees it), with the same Node driver: one room of 2 editors x 2,000 inserts as
fast as a window of unreceived updates allows (updates/s); ten rooms of 5 editors x 200 inserts at
20/s each and one room of 50 editors x 40 inserts at 2/s each (latency from an insert at one
editor until each other editor of the room has it); and the cold join: the first editor to open
a document of 20,000 updates after a restart (the reference with `y-leveldb` persistence).

The three load workloads run again with permessage-deflate offered, as browsers do (Tandem with
TANDEM_WS_COMPRESSION=true, so it accepts; the reference as shipped declines): the server's CPU
seconds (psutil, the server process and its children) with and without.

Every figure is the median of `--runs` runs; reference and Tandem alternate within each run.
Bounded: every driver run has a deadline, and the servers and PostgreSQL started here are
stopped by pid at the end.

To take an update's path apart: `--only probe` (one update in flight at a time: the path
without queueing), `--tandem-env KEY=VALUE` (a setting changed, e.g. the checker on the event
loop), `--fsync off`, and `--py-spy FILE` (py-spy samples Tandem's first run of
`--py-spy-workload`, 10x5 by default). `--history-ops` sizes the cold join's document (200,000
for the large open).

    .venv/bin/python bench/bench_yjs.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from pycrdt import Doc, Text

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REPO,
    Postgres,
    cleanup_dir,
    cpu_seconds,
    grew,
    jwt_secret,
    machine,
    median,
    scrape,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from bench.lean_client import Agent
from bench.yjs_reference import (
    ReferenceServer,
    install_reference,
    package_version,
    preload,
)
from server.core import auth
from tests.nodejs import NODE, install_node_clients, node_env

NODE_DIR = REPO / "tests" / "node"
SERVER_ENV = {
    "TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning",
    "TANDEM_WS_COMPRESSION": "true",  # accepted only when a client offers it (the deflate runs)
}  # fmt: skip
HISTORY_OPS = 20_000


def typed_history(count: int) -> list[bytes]:
    """`count` updates of one writer typing (every tenth a small deletion), as in the e2e tests."""
    doc = Doc()
    text = doc.get("content", type=Text)
    updates = []
    for i in range(count):
        before = doc.get_state()
        if i % 10 == 9:
            del text[0:2]
        else:
            text.insert(len(text), f"w{i} ")
        updates.append(doc.get_update(before))
    return updates


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    rooms: int
    editors: int
    inserts: int  # per editor
    rate: float  # updates/s per editor; 0: as fast as the window allows


WORKLOADS = (
    Workload("1x2", "1 room x 2 editors x 2,000 inserts, max rate", 1, 2, 2000, 0.0),
    Workload("10x5", "10 rooms x 5 editors x 200 inserts at 20/s", 10, 5, 200, 20.0),
    Workload("1x50", "1 room x 50 editors x 40 inserts at 2/s", 1, 50, 40, 2.0),
)
# Not run by default: one update at a time, so its latency is the path alone, without queueing.
PROBE = Workload("probe", "1 room x 2 editors x 100 inserts at 5/s", 1, 2, 100, 5.0)
SIDES = ("reference", "tandem")


class YjsBench:
    """Tandem's node and the in-memory reference, both running for the whole invocation."""

    def __init__(self, pg: Postgres, secret: str, work: Path, args: argparse.Namespace) -> None:
        self.pg, self.secret, self.work, self.args = pg, secret, work, args
        self.tenant_id = uuid.uuid4()
        self.node = start_nodes(1, pg.admin_url, secret, work, args.server_env)[0]
        self.reference = ReferenceServer(work / "reference.log").start()
        self.persisted: ReferenceServer | None = None
        self.workspaces = 0
        self.profiled = False

    def token(self, agent_id: str) -> str:
        return auth.issue_token(self.secret, self.tenant_id, agent_id, 3600)

    def documents(self, count: int) -> tuple[str, list[str]]:
        """A team workspace (room for 1000 members) with `count` empty documents."""
        self.workspaces += 1

        async def body() -> tuple[str, list[str]]:
            admin = await Agent.connect(self.node.ws_url, self.token("bench-admin"))
            try:
                ws = (await admin.request("workspace.create", name=f"yjs-{self.workspaces}", visibility="team", max_members=1000))["workspace"]
                await admin.request("workspace.join", workspace_id=ws["workspace_id"])
                docs = [(await admin.request("doc.create", workspace_id=ws["workspace_id"], title=f"doc-{i}"))["document"]["doc_id"] for i in range(count)]
                return ws["workspace_id"], docs
            finally:
                await admin.close()

        return asyncio.run(body())

    def rooms(self, side: str, w: Workload) -> list[dict[str, Any]]:
        if side == "reference":  # keeps documents by URL path; fresh ones per run
            return [{"ws": f"ref-{uuid.uuid4()}", "doc": str(uuid.uuid4()), "tokens": ["-"] * w.editors} for _ in range(w.rooms)]
        ws_id, docs = self.documents(w.rooms)
        return [{"ws": ws_id, "doc": d, "tokens": [self.token(f"editor-{i}") for i in range(w.editors)]} for d in docs]

    def drive(self, config: dict[str, Any], server_pid: int, timeout_s: float) -> dict[str, Any]:
        """Run the Node driver once; its JSON result with the CPU seconds meanwhile of the
        server (the process and its children: Tandem's update checker), of PostgreSQL (every
        process of the cluster: it serves Tandem only) and of the driver itself."""
        pids = tree_pids(server_pid)
        before = cpu_seconds(pids)
        pg_before = cpu_seconds(tree_pids(self.pg.postmaster_pid))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen([NODE, str(NODE_DIR / "bench.mjs"), json.dumps(config)], cwd=NODE_DIR, env=node_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
            raise SystemExit(f"the Node driver did not finish within {timeout_s:.0f}s") from None
        after = cpu_seconds(tree_pids(server_pid))
        pg_after = cpu_seconds(tree_pids(self.pg.postmaster_pid))
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # the driver, reaped by communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"the Node driver printed no result (exit {proc.returncode}): {err[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        if "error" in result:
            raise SystemExit(f"the Node driver failed: {result['error']}\n{err[-2000:]}\n{self.node.log_tail()}")
        result["cpu_s"] = sum(after[pid] - before.get(pid, 0.0) for pid in after)
        result["pg_cpu_s"] = sum(pg_after[pid] - pg_before.get(pid, 0.0) for pid in pg_after)
        result["driver_cpu_s"] = reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime
        return result

    def load(self, side: str, w: Workload, deflate: bool) -> dict[str, Any]:
        server = self.reference if side == "reference" else self.node
        base = self.reference.base if side == "reference" else f"ws://127.0.0.1:{self.node.port}"
        config = {
            "mode": "load", "base": base, "window": self.args.window, "rate": w.rate * w.rooms * w.editors, "deflate": deflate,
            "inserts": w.inserts, "timeoutS": 120, "rooms": self.rooms(side, w),
        }  # fmt: skip
        profile = None
        if self.args.py_spy and side == "tandem" and w.key == self.args.py_spy_workload and not deflate and not self.profiled:
            self.profiled = True  # the first such run: py-spy samples the server and its checker meanwhile
            profile = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--subprocesses", "--rate", "250", "--format", "raw",
                                        "--output", self.args.py_spy, "--nonblocking"], env=os.environ | {"PATH": str(Path(sys.executable).parent)},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1.0)  # until it is attached
        before = scrape(self.node) if side == "tandem" else {}
        try:
            r = self.drive(config, server.pid, timeout_s=240)
        finally:
            if profile is not None:
                profile.send_signal(signal.SIGINT)  # it writes what it sampled and exits
                profile.wait(timeout=60)
        if not r["converged"] or r["closes"] or r["sent"] != w.rooms * w.editors * w.inserts:
            raise SystemExit(f"{side} {w.key}: converged {r['converged']}, sent {r['sent']}, closes {r['closes'][:5]}")
        lat = summarize(r["latencies"])
        sent = w.rooms * w.editors * w.inserts
        out = {
            "updates_per_s": r["updatesPerS"], "p50": lat["p50"], "p99": lat["p99"], "cpu_s": r["cpu_s"], "deflate": r["deflate"],
            "cpu_ms": r["cpu_s"] / sent * 1000, "pg_cpu_ms": r["pg_cpu_s"] / sent * 1000, "driver_cpu_ms": r["driver_cpu_s"] / sent * 1000,
        }  # fmt: skip
        if side == "tandem":  # the node's own account of its appends over the run
            after = scrape(self.node)
            appends = grew(before, after, "tandem_commit_seconds_count")
            out["commit_ms"] = grew(before, after, "tandem_commit_seconds_sum") / appends * 1000
            out["ops_per_commit"] = grew(before, after, "tandem_committed_operations_total") / appends
            waits = grew(before, after, "tandem_commit_wait_seconds_count")
            out["wait_ms"] = grew(before, after, "tandem_commit_wait_seconds_sum") / waits * 1000
            out["waited_share"] = 1 - grew(before, after, "tandem_commit_wait_seconds_bucket", le="0.0005") / waits
        return out

    def join(self, base: str, room: dict[str, Any], server_pid: int, length: int) -> float:
        j = self.drive({"mode": "join", "base": base, "timeoutS": 60, "expectLength": length, "rooms": [room]}, server_pid, 120)["joins"][0]
        if j["length"] != length:
            raise SystemExit(f"the joining editor got {j['length']} characters, expected {length}")
        return float(j["ms"])

    def cold_join(self, history: list[bytes], length: int) -> dict[str, float]:
        """One document of `history` on each side, joined after a restart and again in memory."""
        out = {}
        # The reference with y-leveldb: stored update by update, then a fresh server process.
        room = {"ws": f"ref-{uuid.uuid4()}", "doc": str(uuid.uuid4()), "tokens": ["-"]}
        if self.persisted is None:
            self.persisted = ReferenceServer(self.work / "reference-leveldb.log", self.work / "leveldb")
        self.persisted.stop()
        preload(self.work / "leveldb", f"yjs/{room['ws']}/{room['doc']}", history, self.work)
        self.persisted.start()
        out["reference restart"] = self.join(self.persisted.base, room, self.persisted.pid, length)
        out["reference memory"] = self.join(self.persisted.base, room, self.persisted.pid, length)
        self.persisted.stop()  # y-leveldb merged the updates into one when it loaded them
        self.persisted.start()
        out["reference compacted"] = self.join(self.persisted.base, room, self.persisted.pid, length)
        # Tandem: the log written straight into document_operations (no snapshot), then restarts.
        ws_id, (doc_id,) = self.documents(1)
        asyncio.run(self.insert(doc_id, history))
        base, room = f"ws://127.0.0.1:{self.node.port}", {"ws": ws_id, "doc": doc_id, "tokens": [self.token("joiner")]}
        self.restart()
        out["tandem replay"] = self.join(base, room, self.node.pid, length)
        out["tandem memory"] = self.join(base, room, self.node.pid, length)
        self.restart()  # a graceful stop stores a snapshot of the loaded room
        out["tandem snapshot"] = self.join(base, room, self.node.pid, length)
        return out

    async def insert(self, doc_id: str, history: list[bytes]) -> None:
        conn = await asyncpg.connect(self.pg.admin_url)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "document_operations",
                    records=[(self.tenant_id, uuid.UUID(doc_id), seq, "typist", "insert", u) for seq, u in enumerate(history, 1)],
                    columns=["tenant_id", "document_id", "sequence_number", "agent_id", "operation_type", "update"],
                )
                await conn.execute("UPDATE shared_documents SET head_seq = $2 WHERE id = $1", uuid.UUID(doc_id), len(history))
        finally:
            await conn.close()

    def restart(self) -> None:
        self.node.stop()
        self.node.start()

    def stop(self) -> None:
        for server in (self.reference, self.persisted):
            if server is not None:
                server.stop()
        self.node.stop()


async def round_trips(url: str, count: int = 200, idle_s: float = 0.05) -> tuple[float, float]:
    """Median ms of `SELECT 1` back to back, and after `idle_s` of idling: what waking the
    machine's CPUs adds to each process hop on an update's path (a commit takes several)."""
    conn = await asyncpg.connect(url)
    try:
        out = []
        for gap in (0.0, idle_s):
            times = []
            for _ in range(count):
                if gap:
                    await asyncio.sleep(gap)
                t = time.perf_counter()
                await conn.fetchval("SELECT 1")
                times.append((time.perf_counter() - t) * 1000)
            out.append(median(times))
        return out[0], out[1]
    finally:
        await conn.close()


def row(label: str, ref: float, tandem: float, unit: str) -> str:
    return f"| {label} | {ref:,.1f} {unit} | {tandem:,.1f} {unit} | {tandem / ref:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every workload; figures are their medians")
    parser.add_argument("--window", type=int, default=8, help="updates per editor not yet received by a peer (max rate)")
    parser.add_argument("--only", default="", help="comma-separated workloads: 1x2, 10x5, 1x50, join, probe (not in the default set)")
    parser.add_argument("--no-deflate", action="store_true", help="skip the runs with permessage-deflate offered")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    parser.add_argument("--history-ops", type=int, default=HISTORY_OPS, help="updates in the cold join's document")
    parser.add_argument("--py-spy-workload", default="10x5", help="the workload --py-spy samples (its first run without deflate)")
    parser.add_argument("--tandem-env", action="append", default=[], metavar="KEY=VALUE",
                        help="one more setting for Tandem (repeatable), to see what a stage costs")
    parser.add_argument("--fsync", choices=("on", "off"), default="on", help="PostgreSQL's fsync (off: what the disk flush costs)")
    parser.add_argument("--py-spy", default="", metavar="FILE",
                        help="profile Tandem's first paced 10x5 run with py-spy (collapsed stacks into FILE)")
    args = parser.parse_args()
    args.server_env = {**SERVER_ENV, **dict(kv.split("=", 1) for kv in args.tandem_env)}
    args.runs = min(max(args.runs, 1), 9)
    only = {part for part in args.only.split(",") if part}
    workloads = [w for w in (*WORKLOADS, PROBE) if w.key in only or (not only and w is not PROBE)]
    joins = not only or "join" in only

    install_node_clients()
    install_reference()
    history = typed_history(args.history_ops) if joins else []
    expected = Doc()
    for u in history:
        expected.apply_update(u)
    length = len(str(expected.get("content", type=Text)))

    work = workdir("tandem-bench-yjs-")
    pg = Postgres(work, fsync=args.fsync == "on").start()
    bench = None
    loads: dict[tuple[str, str, bool], list[dict[str, Any]]] = defaultdict(list)
    cold: dict[str, list[float]] = defaultdict(list)
    started = time.monotonic()
    try:
        bench = YjsBench(pg, jwt_secret(), work, args)
        node_version = subprocess.run([NODE, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout.strip()
        print(f"# Tandem and the reference y-websocket server, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>9}: {v}")
        print(f"reference: @y/websocket-server {package_version('@y/websocket-server')} (yjs {package_version('yjs')}), in memory;"
              f" cold join with y-leveldb {package_version('y-leveldb')}")
        print(f"   tandem: 1 node, `tandem serve`, PostgreSQL {pg.version()} fsync={'on' if args.fsync == 'on' else 'off'} synchronous_commit=on,"
              f" env {' '.join(f'{k}={v}' for k, v in args.server_env.items())}")
        print(f"   driver: one Node {node_version} process (yjs + y-websocket WebsocketProvider over ws), every editor"
              f" inserts ~25 characters at its own cursor; window {args.window} at max rate; medians of {args.runs} runs")
        print(f"     load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min load average before the run)", flush=True)
        warm, idle = asyncio.run(round_trips(pg.admin_url))
        print(f"  machine: a PostgreSQL round trip (SELECT 1) takes {warm:.2f} ms back to back, {idle:.2f} ms after 50 ms idle"
              " (medians of 200: waking idle CPUs)", flush=True)
        for run in range(args.runs):
            sides = SIDES if run % 2 == 0 else SIDES[::-1]
            for w in workloads:
                for deflate in (False, True) if not args.no_deflate else (False,):
                    for side in sides:
                        loads[(w.key, side, deflate)].append(bench.load(side, w, deflate))
            if joins:
                for k, v in bench.cold_join(history, length).items():
                    cold[k].append(v)
            print(f"  run {run + 1} of {args.runs} done at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        report(workloads, loads, cold, args)
    finally:
        if bench is not None:
            bench.stop()
        pg.destroy()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            cleanup_dir(work)


def report(workloads: list[Workload], loads: dict[tuple[str, str, bool], list[dict[str, Any]]], cold: dict[str, list[float]],
           args: argparse.Namespace) -> None:
    def fig(key: str, side: str, name: str, deflate: bool = False) -> float:
        return median([r[name] for r in loads[(key, side, deflate)]])

    print()
    print("| workload: figure | reference | Tandem | Tandem / reference |")
    print("|---|---|---|---|")
    for w in workloads:
        if w.rate == 0:
            print(row(f"{w.title}: updates/s", fig(w.key, "reference", "updates_per_s"), fig(w.key, "tandem", "updates_per_s"), ""))
        for p in ("p50", "p99"):
            print(row(f"{w.title}: latency {p}", fig(w.key, "reference", p), fig(w.key, "tandem", p), "ms"))
    paced = [w for w in workloads if w.rate]
    if paced:
        print()
        print("Each run's latency, reference / Tandem (the two sides of a run ran back to back), and the median of the runs' ratios")
        print()
        print("| workload: figure | runs: reference / Tandem ms | median of the ratios |")
        print("|---|---|---|")
        for w in paced:
            for p in ("p50", "p99"):
                pairs = list(zip((r[p] for r in loads[(w.key, "reference", False)]), (r[p] for r in loads[(w.key, "tandem", False)]), strict=True))
                runs = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in pairs)
                print(f"| {w.key}: {p} | {runs} | {median([b / a for a, b in pairs]):.2f}x |")
    if workloads:
        print()
        print("Tandem's appends during each workload (its /metrics: tandem_commit_seconds, tandem_committed_operations,"
              " tandem_commit_wait_seconds: an update's wait for the append in flight before its own)")
        print()
        print("| workload | append round trip, mean ms | operations per append | updates that waited > 0.5 ms, their share | wait, mean ms"
              " | CPU ms per update: driver / server / PostgreSQL, reference | the same, Tandem |")
        print("|---|---|---|---|---|---|---|")
        for w in workloads:
            cpu = {side: " / ".join(f"{fig(w.key, side, k):.3f}" for k in ("driver_cpu_ms", "cpu_ms", "pg_cpu_ms")) for side in SIDES}
            print(f"| {w.key} | {fig(w.key, 'tandem', 'commit_ms'):.2f} | {fig(w.key, 'tandem', 'ops_per_commit'):.1f} |"
                  f" {fig(w.key, 'tandem', 'waited_share'):.0%} | {fig(w.key, 'tandem', 'wait_ms'):.2f} | {cpu['reference']} | {cpu['tandem']} |")
    if cold:
        ref = median(cold["reference restart"])
        print(row(f"first open of a {args.history_ops:,}-update document after a restart (reference: y-leveldb; Tandem: log replay)",
                  ref, median(cold["tandem replay"]), "ms"))
        print(row("the same after another restart (reference: y-leveldb merged the updates; Tandem: the snapshot its stop wrote)",
                  median(cold["reference compacted"]), median(cold["tandem snapshot"]), "ms"))
        print(row("the same document, open again (in memory)", median(cold["reference memory"]), median(cold["tandem memory"]), "ms"))
    if args.no_deflate or not workloads:
        return
    print()
    print("permessage-deflate offered (as browsers do): the server's CPU seconds per workload run")
    print()
    print("| workload | server | negotiated | CPU s without | CPU s with | with / without | p50 / p99 ms with |")
    print("|---|---|---|---|---|---|---|")
    for w in workloads:
        for side in SIDES:
            without, with_ = fig(w.key, side, "cpu_s"), fig(w.key, side, "cpu_s", True)
            negotiated = "yes" if all(r["deflate"] for r in loads[(w.key, side, True)]) else "no"
            print(f"| {w.key} | {side} | {negotiated} | {without:.2f} | {with_:.2f} | {with_ / without:.2f}x |"
                  f" {fig(w.key, side, 'p50', True):.1f} / {fig(w.key, side, 'p99', True):.1f} |")


if __name__ == "__main__":
    main()
