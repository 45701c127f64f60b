"""The rig of bench/bench_fanout.py: PostgreSQL, three nodes and four load processes (writers on
node 1, readers on each node), the nodes' /metrics read before and after a run, and the
figures of a run (latency same-node and cross-node, hint lag, CPU per process).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Postgres,
    Scrape,
    ServerNode,
    cpu_percent,
    cpu_seconds,
    grew,
    machine_busy_seconds,
    median,
    scrape,
    summarize,
    tree_pids,
)
from bench.doc_load import (
    DRAIN_TIMEOUT_S,
    PHASE_TIMEOUT_S,
    RATE_CAP_PER_S,
    READER_TIMEOUT_S,
    ConnSpec,
    Job,
)
from bench.doc_workers import Workers
from bench.lean_client import Agent
from server.core.auth import issue_token

NODES = 3
MAX_DOCS_PER_CONN = 100  # the server's default max_open_docs
SAMPLE_EVERY_S = 1.0
SUMMED = ("errors", "closings", "exhausted", "undrained", "readers_behind", "missing")

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
