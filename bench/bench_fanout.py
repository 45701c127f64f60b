"""Fan-out benchmark: cross-node propagation latency and the notifications/s ceiling.

Starts one PostgreSQL (fsync on) and three `tandem serve` nodes on it. For each paced rate (100,
1,000, 5,000 updates/s) writers on node 1 send over `--docs` documents while reader connections that
only listen measure propagation latency, writer send -> `doc.op` at the reader (matched by document
and seq): on node 1 itself (the single-node broadcast baseline), on node 2 with two nodes serving
the documents, and on nodes 2 and 3 with three. Then the ceiling: writers on node 1 as fast as they
can over `--ceiling-docs` documents while node 2's /metrics count the hints (NOTIFYs) it receives
each second, and their lag. The load runs in bench_documents' worker processes: the writers in one,
each node's readers in one of their own. Prints tables; asserts nothing; every phase has a deadline.

    .venv/bin/python bench/bench_fanout.py [--quick] [--repeat N] [--rates 100,1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_documents import SERVER_ENV
from bench.common import (
    SCRAPE_TIMEOUT_S,
    Postgres,
    Scrape,
    ServerNode,
    cleanup_dir,
    grew,
    jwt_secret,
    machine,
    raise_fd_limit,
    scrape,
    start_nodes,
    workdir,
)
from bench.doc_load import ConnSpec
from bench.doc_workers import Workers
from bench.fanout_rig import (
    NODES,
    SAMPLE_EVERY_S,
    Rig,
    budget_per_doc,
    measure,
    merge,
    reader_specs,
)  # fmt: skip

TARGET_RATE_PER_S = 1000.0  # target: cross-node p99 <= single-node p99 + 5 ms at this rate
TARGET_EXTRA_MS = 5.0
SUSTAINED = 0.95  # achieved / target below this: the rate was not sustained


# --- scenarios -------------------------------------------------------------------------------------


def paced(rig: Rig, rate_per_s: float, serving: int, writers: int, docs: int, readers_per_node: int) -> dict[str, Any]:
    workspace_id, doc_ids = rig.create_documents(docs)
    per_writer = rate_per_s / writers
    specs = [
        ConnSpec("writer", f"writer-{k}", [d for d in range(docs) if d % writers == k] or [k % docs], 1000 + k, per_writer, (k / writers) / per_writer)
        for k in range(writers)
    ]
    readers = [reader_specs(n + 1, docs, readers_per_node) if n < serving else [] for n in range(NODES)]
    budget = budget_per_doc(rate_per_s, writers, docs, rig.warmup_s + rig.duration_s)
    return measure(rig.run_load(workspace_id, doc_ids, specs, readers, budget), rate_per_s, serving, range(serving))


def ceiling(rig: Rig, writers: int, docs: int, follow: bool) -> dict[str, Any]:
    """Writers on node 1 as fast as the window allows; node 2 either only receives the hints
    (`follow` False: no document open there) or has every document open and reads the log."""
    workspace_id, doc_ids = rig.create_documents(docs)
    specs = [ConnSpec("writer", f"cwriter-{k}", [d for d in range(docs) if d % writers == k] or [k % docs], 2000 + k) for k in range(writers)]
    readers = [[], reader_specs(2, docs, 1) if follow else [], []]
    budget = budget_per_doc(0.0, writers, docs, rig.warmup_s + rig.duration_s)
    samples: list[tuple[float, Scrape, float]] = []
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(rig.pg.admin_url, timeout=10))

    def sample() -> None:
        usage = loop.run_until_complete(asyncio.wait_for(conn.fetchval("SELECT pg_notification_queue_usage()"), SCRAPE_TIMEOUT_S))
        samples.append((time.monotonic(), scrape(rig.nodes[1]), float(usage)))

    try:
        run = rig.run_load(workspace_id, doc_ids, specs, readers, budget, sample)
    finally:
        loop.run_until_complete(conn.close(timeout=5))
        loop.close()
    out = measure(run, 0.0, 2 if follow else 1, range(1, 2) if follow else range(0))
    per_second = [
        grew(a, b, "tandem_fanout_notifications_total", kind="ops") / (tb - ta)
        for (ta, a, _), (tb, b, _) in itertools.pairwise(samples) if run["from"] <= ta and tb <= run["to"] + SAMPLE_EVERY_S
    ]
    before, after = run["before"][0], run["after"][0]
    wall = run["to"] - run["from"]
    out.update(
        follow=follow,
        hints_best_s=max(per_second, default=math.nan),
        hints_worst_s=min(per_second, default=math.nan),
        batches_per_s=grew(before, after, "tandem_commit_batches_total") / wall,
        queue_usage_max=max((u for _, _, u in samples), default=math.nan),
    )
    return out


# --- output ------------------------------------------------------------------------------------


def f1(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def notes(r: dict[str, Any]) -> str:
    out = []
    if r["rate_target"] and r["updates_per_s"] < SUSTAINED * r["rate_target"]:
        out.append(f"NOT SUSTAINED ({100 * r['updates_per_s'] / r['rate_target']:.0f}% of the target)")
    for key, label in (("errors", "errors"), ("closings", "closed")):
        if r[key]:
            out.append(label + " " + ",".join(f"{k}={v}" for k, v in sorted(r[key].items())))
    for key, label in (("exhausted", "writers ran out of updates"), ("undrained", "updates unacknowledged"),
                       ("readers_behind", "readers behind at the end"), ("missing", "ops never seen by a reader")):
        if r[key]:
            out.append(f"{r[key]:.0f} {label}")
    return "; ".join(out)


def latency_row(r: dict[str, Any]) -> str:
    s, x = r["same_ms"], r["cross_ms"]
    cells = [
        f"{r['rate_target']:>6,.0f}", f"{r['serving']:>5}", f"{r['updates_per_s']:>8,.0f}",
        f"{f1(r['ack_ms']['p50']):>7} {f1(r['ack_ms']['p99']):>6}",
        f"{f1(s['p50']):>8} {f1(s['p95']):>6} {f1(s['p99']):>6}",
        f"{f1(x['p50']):>9} {f1(x['p95']):>6} {f1(x['p99']):>6}",
        f"{x['p99'] / s['p99'] if s['p99'] > 0 else math.nan:>6.2f}", f"{x['p99'] - s['p99']:>+8.1f}",
        f"{f1(r['lag_ms']['p50']):>8} {f1(r['lag_ms']['p99']):>6}",
    ]
    n = notes(r)
    return "  ".join(cells) + (f"  {n}" if n else "")


LATENCY_HEADER = ("target  nodes  achieved  ack p50    p99  same p50    p95    p99  cross p50    p95    p99   ratio  diff p99"
                  "  hint p50    p99")


def resource_row(r: dict[str, Any]) -> str:
    c = r["cpu"]
    per_node = " ".join(f"{k}={f1(v)}" for k, v in r["node_p99_ms"].items())
    return (f"{r['rate_target']:>6,.0f}  {r['serving']:>5}  " + " ".join(f"{c[k]:>4.0f}" for k in ("n1", "n2", "n3", "pg", "cli", "other"))
            + f"  {r['hints_per_s']:>9,.0f}  {r['reads_per_s']:>9,.0f}  {f1(r['lag_ms']['mean']):>8}  {per_node}")


RESOURCE_HEADER = "target  nodes    n1   n2   n3   pg  cli other  hints/s n2  reads/s n2  lag mean  p99 per reader node (ms)"


def ceiling_row(r: dict[str, Any]) -> str:
    c = r["cpu"]
    return (f"{'follows' if r['follow'] else 'hints only':<10}  {r['updates_per_s']:>7,.0f}  {r['batches_per_s']:>7,.0f}  "
            f"{r['hints_per_s']:>7,.0f}  {r['hints_worst_s']:>7,.0f}-{r['hints_best_s']:<7,.0f}  "
            f"{f1(r['lag_ms']['mean']):>8} {f1(r['lag_ms']['p50']):>6} {f1(r['lag_ms']['p99']):>6}  "
            f"{100 * r['queue_usage_max']:>6.2f}  " + " ".join(f"{c[k]:>4.0f}" for k in ("n1", "n2", "n3", "pg", "cli", "other"))
            + (f"  ack p50/p99 {f1(r['ack_ms']['p50'])}/{f1(r['ack_ms']['p99'])} ms, cross {f1(r['cross_ms']['p50'])}/{f1(r['cross_ms']['p99'])} ms, "
               f"{r['reads_per_s']:,.0f} reads/s" if r["follow"] else "")
            + (f"  {notes(r)}" if notes(r) else ""))


CEILING_HEADER = ("node 2      upd/s n1  txn/s n1  hints/s  1-s range        lag mean    p50    p99  queue%    n1   n2   n3   pg  cli other")


def repeated(repeat: int, run: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        runs.append(run())
        if repeat > 1:
            print("  run: " + show(runs[-1]), flush=True)
    return merge(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per scenario instead of 10 s")
    parser.add_argument("--duration-s", type=float, default=None, help="measured seconds per scenario")
    parser.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario (medians printed)")
    parser.add_argument("--rates", default="100,1000,5000", help="paced rates, updates/s, comma-separated")
    parser.add_argument("--writers", type=int, default=5, help="writer connections of the paced runs (node 1)")
    parser.add_argument("--docs", type=int, default=10, help="documents of the paced runs")
    parser.add_argument("--readers-per-node", type=int, default=2, help="listening connections per serving node")
    parser.add_argument("--window", type=int, default=32, help="unacknowledged updates per writer")
    parser.add_argument("--ceiling-writers", type=int, default=20, help="writer connections of the ceiling runs")
    parser.add_argument("--ceiling-docs", type=int, default=200, help="documents of the ceiling runs")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the notifications/s ceiling")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra node environment (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (node and PostgreSQL logs)")
    args = parser.parse_args()
    duration = args.duration_s or (3.0 if args.quick else 10.0)
    warmup = args.warmup_s if args.warmup_s is not None else (0.5 if args.quick else 1.0)
    repeat = max(1, min(args.repeat, 10))
    rates = [float(r) for r in args.rates.split(",") if r]
    server_env = dict(SERVER_ENV)
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--server-env wants NAME=VALUE, got {item!r}")
        server_env[name] = value

    raise_fd_limit(4096)
    work = workdir("tandem-bench-fanout-")
    pg = Postgres(work, fsync=True).start()
    secret = jwt_secret()
    workers = Workers(1 + NODES).start()
    nodes: list[ServerNode] = []
    try:
        nodes = start_nodes(NODES, pg.admin_url, secret, work, server_env)
        rig = Rig(pg, nodes, workers, secret, str(uuid.uuid4()), warmup, duration, args.window)
        print(f"# Tandem fan-out benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"postgres: {pg.version()}, fsync=on, synchronous_commit=on; one database, {NODES} nodes on it")
        print(f"   nodes: `tandem serve` x {NODES}, env {' '.join(f'{k}={v}' for k, v in server_env.items())}; other settings default")
        print(f"  client: 4 processes (writers on node 1; readers of node 1, 2, 3 each in their own), uvloop, lean client; "
              f"{warmup:g} s warm-up + {duration:g} s measured per scenario; runs per scenario: {repeat}")
        print(f"    load: machine load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; the machine is shared "
              "with other jobs (see 'other': CPU of everything but the nodes, PostgreSQL and this client)")
        print()
        print(f"Paced: {args.writers} writers on node 1 over {args.docs} documents, each document open on one reader of every "
              f"serving node ({args.readers_per_node} connections per node). Latency in ms, send -> doc.op: same = a reader on node 1")
        print("(single-node broadcast), cross = readers on the other serving nodes; ratio and diff compare the p99s; hint = node 2's")
        print("tandem_fanout_lag_seconds (commit on node 1 -> node 2 reads the NOTIFY), bucket estimates.")
        print(LATENCY_HEADER)
        paced_rows = []
        for rate in rates:
            for serving in (2, 3):
                row = repeated(repeat, lambda rate=rate, serving=serving: paced(rig, rate, serving, args.writers, args.docs, args.readers_per_node), latency_row)
                paced_rows.append(row)
                print(latency_row(row), flush=True)
        print()
        print("CPU % of one core over the measured window (n1-n3: each node with its update checker), hints and catch-up")
        print("reads per second on node 2, mean hint lag (ms), p99 latency at each reader node:")
        print(RESOURCE_HEADER)
        for row in paced_rows:
            print(resource_row(row))

        ceilings = []
        if not args.no_ceiling:
            print()
            print(f"Ceiling: {args.ceiling_writers} writers on node 1 as fast as a window of {args.window} allows, over "
                  f"{args.ceiling_docs} documents; node 2 counts the hints (NOTIFYs) it receives. 'hints only': no document open on")
            print("node 2; 'follows': every document open there (readers), so each hint also means a catch-up read. queue% = the")
            print("highest pg_notification_queue_usage() seen, sampled each second.")
            print(CEILING_HEADER)
            for follow in (False, True):
                row = repeated(repeat, lambda follow=follow: ceiling(rig, args.ceiling_writers, args.ceiling_docs, follow), ceiling_row)
                ceilings.append(row)
                print(ceiling_row(row), flush=True)

        print()
        print(f"summary (target: cross-node p99 <= single-node p99 + {TARGET_EXTRA_MS:g} ms at {TARGET_RATE_PER_S:,.0f} updates/s)")
        for r in paced_rows:
            if r["rate_target"] == TARGET_RATE_PER_S:
                over = r["cross_ms"]["p99"] - r["same_ms"]["p99"] - TARGET_EXTRA_MS
                verdict = "met" if over <= 0 else f"missed by {over:.1f} ms"
                print(f"  {r['serving']} nodes: cross p99 {f1(r['cross_ms']['p99'])} ms vs single-node p99 {f1(r['same_ms']['p99'])} ms "
                      f"(achieved {r['updates_per_s']:,.0f}/s): {verdict}")
        for r in ceilings:
            print(f"  notifications/s received by node 2 ({'follows' if r['follow'] else 'hints only'}): {r['hints_per_s']:,.0f} "
                  f"(best second {r['hints_best_s']:,.0f}), writer node at {r['updates_per_s']:,.0f} updates/s in {r['batches_per_s']:,.0f} "
                  f"transactions/s; hint lag mean {f1(r['lag_ms']['mean'])} ms, p99 {f1(r['lag_ms']['p99'])} ms")
    finally:
        workers.stop()
        for node in nodes:
            node.stop()
        if args.keep:
            pg.stop()
            print(f"work folder kept (node and PostgreSQL logs): {work}")
        else:
            pg.destroy()
            cleanup_dir(work)


if __name__ == "__main__":
    main()
