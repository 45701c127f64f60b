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
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_documents import (
    DRAIN_TIMEOUT_S,
    PHASE_TIMEOUT_S,
    RATE_CAP_PER_S,
    READER_TIMEOUT_S,
    SERVER_ENV,
    ConnSpec,
    Job,
    Workers,
)
from bench.common import (
    Agent,
    Postgres,
    ServerNode,
    cleanup_dir,
    cpu_percent,
    cpu_seconds,
    jwt_secret,
    machine,
    machine_busy_seconds,
    median,
    raise_fd_limit,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from server.core.auth import issue_token

NODES = 3
TARGET_RATE_PER_S = 1000.0  # target: cross-node p99 <= single-node p99 + 5 ms at this rate
TARGET_EXTRA_MS = 5.0
SUSTAINED = 0.95  # achieved / target below this: the rate was not sustained
MAX_DOCS_PER_CONN = 100  # the server's default max_open_docs
SCRAPE_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 1.0
SUMMED = ("errors", "closings", "exhausted", "undrained", "readers_behind", "missing")

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- /metrics ------------------------------------------------------------------------------------


def scrape(node: ServerNode) -> Scrape:
    """Every sample of the node's /metrics, keyed by (name, sorted labels); {} if unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def grew(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes (a labelled child not yet created counts as 0;
    nan when the later scrape failed)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0) if after else math.nan


def hint_lag_ms(before: Scrape, after: Scrape) -> dict[str, float]:
    """Mean, p50 and p99 (interpolated in the histogram's buckets, as Prometheus'
    histogram_quantile does; inf when past the last bound) of `tandem_fanout_lag_seconds` over
    the window, in ms."""
    name = "tandem_fanout_lag_seconds"
    buckets = sorted(
        (float(dict(key[1])["le"]), value - before.get(key, 0.0))
        for key, value in after.items() if key[0] == f"{name}_bucket"
    )
    count = grew(before, after, f"{name}_count")
    out = {"mean": 1000 * grew(before, after, f"{name}_sum") / count if count > 0 else math.nan}
    for q in (50, 99):
        out[f"p{q}"] = math.nan
        if count > 0 and buckets:
            rank, lower, below = count * q / 100, 0.0, 0.0
            for bound, cumulative in buckets:
                if cumulative >= rank:
                    inside = cumulative - below
                    share = (rank - below) / inside if inside > 0 else 1.0
                    out[f"p{q}"] = math.inf if math.isinf(bound) else 1000 * (lower + (bound - lower) * share)
                    break
                lower, below = bound, cumulative
    return out


# --- the rig: PostgreSQL, three nodes, four load processes ---------------------------------------


@dataclass
class Rig:
    pg: Postgres
    nodes: list[ServerNode]
    workers: Workers  # 0: writers (node 1); 1 + n: readers on node n + 1
    secret: str
    tenant_id: str
    warmup_s: float
    duration_s: float
    window: int
    scenario_no: int = 0

    def token(self, agent_id: str) -> str:
        return issue_token(self.secret, uuid.UUID(self.tenant_id), agent_id, 7200)

    def create_documents(self, count: int) -> tuple[str, list[str]]:
        """A fresh team workspace on node 1 with `count` empty documents."""
        self.scenario_no += 1

        async def body() -> tuple[str, list[str]]:
            admin = await Agent.connect(self.nodes[0].ws_url, self.token("bench-admin"))
            try:
                ws = (await admin.request("workspace.create", name=f"fanout-{self.scenario_no}", visibility="team", max_members=1000))["workspace"]
                await admin.request("workspace.join", workspace_id=ws["workspace_id"])
                docs = []
                for i in range(count):
                    docs.append((await admin.request("doc.create", workspace_id=ws["workspace_id"], title=f"doc-{i}"))["document"]["doc_id"])
                return ws["workspace_id"], docs
            finally:
                await admin.close()

        return asyncio.run(body())

    def process_groups(self) -> dict[str, list[int]]:
        groups = {f"n{i + 1}": tree_pids(node.pid) for i, node in enumerate(self.nodes)}
        groups["pg"] = tree_pids(self.pg.postmaster_pid)
        groups["cli"] = self.workers.pids
        return groups

    def run_load(
        self, workspace_id: str, doc_ids: list[str], writers: list[ConnSpec], readers: list[list[ConnSpec]],
        budget: int, sample: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One measured run: connect, go, measure CPU and /metrics over the window, drain, and
        collect each worker's result (index 0 the writers, 1 + n node n + 1's readers)."""
        urls = [self.nodes[0].ws_url] + [node.ws_url for node in self.nodes]
        for w, pipe in enumerate(self.workers.pipes):
            specs = writers if w == 0 else readers[w - 1]
            pipe.send(("job", Job(urls[w], self.secret, self.tenant_id, workspace_id, doc_ids, [specs], True, self.window, budget)))
        setup_s = max(m[2] for m in self.workers.gather("ready", PHASE_TIMEOUT_S))
        start_at = time.monotonic() + 0.3
        measure_from = start_at + self.warmup_s
        stop_at = measure_from + self.duration_s
        self.workers.send(("go", start_at, stop_at))
        time.sleep(max(0.0, measure_from - time.monotonic()))
        groups = self.process_groups()
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        busy0 = machine_busy_seconds()
        metrics0 = [scrape(node) for node in self.nodes]
        if sample is not None:
            sample()
        for _ in range(int(self.duration_s / SAMPLE_EVERY_S) + 2):  # bounded; ends at stop_at
            left = stop_at - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(SAMPLE_EVERY_S, left))
            if sample is not None:
                sample()
        wall = time.monotonic() - measure_from
        metrics1 = [scrape(node) for node in self.nodes]
        cpu = {k: cpu_percent(cpu0[k], cpu_seconds(v), wall) for k, v in self.process_groups().items()}
        cpu["other"] = max(0.0, 100.0 * (machine_busy_seconds() - busy0) / wall - sum(cpu.values()))
        heads: dict[int, int] = {}
        for msg in self.workers.gather("drained", DRAIN_TIMEOUT_S + 30):
            for d, seq in msg[1].items():
                heads[d] = max(heads.get(d, 0), seq)
        self.workers.send(("targets", heads))
        results = [m[1] for m in self.workers.gather("result", READER_TIMEOUT_S + 60)]
        return {"results": results, "from": measure_from, "to": stop_at, "cpu": cpu, "setup_s": setup_s,
                "before": metrics0, "after": metrics1}


def budget_per_doc(rate_per_s: float, writers: int, docs: int, run_s: float) -> int:
    per_writer = (rate_per_s or RATE_CAP_PER_S) * (run_s + 1) / writers
    return math.ceil(per_writer / max(1, docs // writers)) + 1


def reader_specs(node_no: int, docs: int, per_node: int) -> list[ConnSpec]:
    """`per_node` listening connections on node `node_no`, each document open on exactly one."""
    count = max(per_node, math.ceil(docs / MAX_DOCS_PER_CONN))
    specs = [ConnSpec("reader", f"reader-n{node_no}-{j}", [d for d in range(docs) if d % count == j]) for j in range(count)]
    return [s for s in specs if s.docs]


def measure(run: dict[str, Any], rate_per_s: float, serving: int, reader_nodes: range) -> dict[str, Any]:
    """Latencies per node, the achieved rate, hint figures of node 2, CPU and notes. Nodes in
    `reader_nodes` (0-based) have every document open on one of their readers."""
    lo, hi = run["from"], run["to"]
    results = run["results"]
    writers = results[0]
    sent_at: dict[int, float] = {}
    ack_latency: list[float] = []
    acked = 0
    for d, seq, sent, ack in writers["acks"]:
        acked += lo <= ack < hi
        if lo <= sent < hi:
            ack_latency.append(ack - sent)
            if seq is not None:
                sent_at[(d << 32) | seq] = sent
    per_node: list[list[float]] = []
    missing = 0
    for n in range(NODES):
        got = [rx - sent_at[(d << 32) | seq] for d, seq, rx in results[1 + n]["records"] if (d << 32) | seq in sent_at]
        per_node.append(got)
        if n in reader_nodes:
            missing += max(0, len(sent_at) - len(got))  # each document is open on one reader per node
    ms = lambda s: {k: (v * 1000 if k != "n" else v) for k, v in s.items()}
    errors: Counter[str] = Counter()
    closings: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        closings.update(r["closings"])
    before, after = run["before"][1], run["after"][1]
    wall = hi - lo
    return {
        "rate_target": rate_per_s,
        "serving": serving,
        "updates_per_s": acked / wall,
        "ack_ms": ms(summarize(ack_latency)),
        "same_ms": ms(summarize(per_node[0])),
        "cross_ms": ms(summarize([x for n in range(1, serving) for x in per_node[n]])),
        "node_p99_ms": {f"n{n + 1}": ms(summarize(per_node[n]))["p99"] for n in range(serving)},
        "lag_ms": hint_lag_ms(before, after),
        "hints_per_s": grew(before, after, "tandem_fanout_notifications_total", kind="ops") / wall,
        "reads_per_s": grew(before, after, "tandem_catch_up_reads_total") / wall,
        "cpu": run["cpu"],
        "setup_s": run["setup_s"],
        "errors": dict(errors),
        "closings": dict(closings),
        "exhausted": sum(r["exhausted"] for r in results),
        "undrained": sum(r["undrained"] for r in results),
        "readers_behind": sum(r["readers_behind"] for r in results),
        "missing": missing,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures of repeated runs (counters of trouble summed)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if key in SUMMED and isinstance(first, dict):
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(total)
        elif key in SUMMED:
            out[key] = sum(values)
        elif isinstance(first, dict):
            out[key] = merge(values)
        elif isinstance(first, int | float):
            out[key] = median(values)
        else:
            out[key] = first
    return out


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
