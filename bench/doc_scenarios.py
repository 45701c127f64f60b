"""The scenarios of bench/bench_documents.py, run by the coordinator: idle connections, writers
over one or many documents, a paced run, each sent to the worker processes as jobs; and the
figures each one's results come to.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    Postgres,
    ServerNode,
    cpu_percent,
    cpu_seconds,
    grew,
    machine_busy_seconds,
    rss_bytes,
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


@dataclass
class Bench:
    node: ServerNode
    pg: Postgres
    workers: Workers
    secret: str
    tenant_id: str
    window: int
    warmup_s: float
    duration_s: float
    py_spy_dir: Path | None = None
    batch: bool = True
    send_batch: bool = True
    scenario_no: int = 0

    def token(self, agent_id: str) -> str:
        return issue_token(self.secret, uuid.UUID(self.tenant_id), agent_id, 7200)

    def create_documents(self, count: int) -> tuple[str, list[str]]:
        """A fresh team workspace (room for 1000 members) with `count` empty documents."""
        self.scenario_no += 1

        async def body() -> tuple[str, list[str]]:
            admin = await Agent.connect(self.node.ws_url, self.token("bench-admin"))
            try:
                ws = (await admin.request("workspace.create", name=f"bench-{self.scenario_no}", visibility="team", max_members=1000))["workspace"]
                await admin.request("workspace.join", workspace_id=ws["workspace_id"])
                docs = []
                for i in range(count):
                    reply = await admin.request("doc.create", workspace_id=ws["workspace_id"], title=f"doc-{i}")
                    docs.append(reply["document"]["doc_id"])
                return ws["workspace_id"], docs
            finally:
                await admin.close()

        return asyncio.run(body())

    def split(self, specs: list[ConnSpec]) -> list[list[ConnSpec]]:
        parts: list[list[ConnSpec]] = [[] for _ in range(self.workers.count)]
        for i, spec in enumerate(specs):
            parts[i % self.workers.count].append(spec)
        return parts

    def node_rss(self) -> int:
        """RSS of the node process and its children (an update checker's worker, if any)."""
        total = 0
        for pid in tree_pids(self.node.pid):
            try:
                total += rss_bytes(pid)
            except psutil.NoSuchProcess:
                continue
        return total

    def settled_rss(self, timeout_s: float = 5.0) -> int:
        """Server RSS once two readings 0.25 s apart agree within 0.5% (or after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        last = self.node_rss()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.node_rss()
            if abs(now - last) <= 0.005 * last:
                return now
            last = now
        return last

    def profile(self, name: str) -> subprocess.Popen[bytes]:
        """py-spy samples the node over the measured window (collapsed stacks, `--nonblocking`
        so the node is never paused)."""
        assert self.py_spy_dir is not None
        out = self.py_spy_dir / f"{name.replace(' ', '_').replace('/', '')}.txt"
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "--threads", "--subprocesses", "--format", "raw",
             "--rate", "200", "--duration", str(max(1, round(self.duration_s))), "--pid", str(self.node.pid),
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    # --- idle connections ---

    def idle(self, count: int, warm: int = 20) -> dict[str, Any]:
        workspace_id, docs = self.create_documents(1)
        base = Job(self.node.ws_url, self.secret, self.tenant_id, workspace_id, docs, [], load=False, batch=self.batch, send_batch=self.send_batch)
        warm_specs = [ConnSpec("idle", f"idle-{i % 100}", [0]) for i in range(warm)]
        idle_specs = [ConnSpec("idle", f"idle-{i % 100}", [0]) for i in range(count)]
        warm_parts, idle_parts = self.split(warm_specs), self.split(idle_specs)
        for w, pipe in enumerate(self.workers.pipes):
            pipe.send(("job", Job(**{**base.__dict__, "batches": [warm_parts[w], idle_parts[w]]})))
        self.workers.gather("ready", PHASE_TIMEOUT_S)
        before = self.settled_rss()
        self.workers.send(("next",))
        t0 = time.monotonic()
        self.workers.gather("ready", PHASE_TIMEOUT_S)
        connect_s = time.monotonic() - t0
        after = self.settled_rss()
        self.workers.send(("finish",))
        results = [m[1] for m in self.workers.gather("result", PHASE_TIMEOUT_S)]
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return {
            "connections": count,
            "rss_before": before,
            "rss_after": after,
            "kib_per_conn": (after - before) / 1024 / count,
            "connect_per_s": count / connect_s if connect_s > 0 else float("nan"),
            "errors": dict(errors),
        }

    # --- load ---

    def load(self, name: str, writers: int, docs: int, readers_per_doc: int, rate_per_s: float = 0.0) -> dict[str, Any]:
        workspace_id, doc_ids = self.create_documents(docs)
        specs = []
        for k in range(writers):
            mine = [d for d in range(docs) if d % writers == k] or [k % docs]
            phase = (k / writers) / (rate_per_s / writers) if rate_per_s else 0.0
            specs.append(ConnSpec("writer", f"writer-{k}", mine, 1000 + k, rate_per_s / writers if rate_per_s else 0.0, phase))
        for d in range(docs):
            for j in range(readers_per_doc):
                specs.append(ConnSpec("reader", f"reader-{j}", [d]))
        run_s = self.warmup_s + self.duration_s
        per_writer = (rate_per_s or RATE_CAP_PER_S) * (run_s + 1) / writers
        docs_per_writer = max(1, docs // writers)
        budget = math.ceil(per_writer / docs_per_writer) + 1
        parts = self.split(specs)
        for w, pipe in enumerate(self.workers.pipes):
            pipe.send(("job", Job(self.node.ws_url, self.secret, self.tenant_id, workspace_id, doc_ids, [parts[w]], True, self.window, budget, self.batch, self.send_batch)))
        ready = self.workers.gather("ready", PHASE_TIMEOUT_S)
        setup_s = max(m[2] for m in ready)

        start_at = time.monotonic() + 0.3
        measure_from = start_at + self.warmup_s
        stop_at = measure_from + self.duration_s
        self.workers.send(("go", start_at, stop_at))
        pg_pids = tree_pids(self.pg.postmaster_pid)
        time.sleep(max(0.0, measure_from - time.monotonic()))
        # The node's own children (e.g. an update checker's worker) count as the server.
        procs = {"server": tree_pids(self.node.pid), "postgres": pg_pids, "client": self.workers.pids}
        cpu0 = {k: cpu_seconds(v) for k, v in procs.items()}
        busy0 = machine_busy_seconds()
        counters0 = scrape(self.node)
        profiler = self.profile(name) if self.py_spy_dir is not None else None
        peak_rss = 0
        while time.monotonic() < stop_at:
            peak_rss = max(peak_rss, self.node_rss())
            time.sleep(min(0.5, max(0.0, stop_at - time.monotonic())))
        wall = time.monotonic() - measure_from
        procs["postgres"] = tree_pids(self.pg.postmaster_pid)
        procs["server"] = tree_pids(self.node.pid)
        cpu = {k: cpu_percent(cpu0[k], cpu_seconds(v), wall) for k, v in procs.items()}
        # Whatever else ran on the machine meanwhile (other jobs share these cores).
        cpu["other"] = max(0.0, 100.0 * (machine_busy_seconds() - busy0) / wall - sum(cpu.values()))
        end_rss = self.node_rss()
        counters1 = scrape(self.node)
        batches = grew(counters0, counters1, "tandem_commit_batches_total")
        ops = grew(counters0, counters1, "tandem_committed_operations_total")
        ops_per_batch = ops / batches if batches > 0 else float("nan")
        if profiler is not None:
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait(timeout=10)

        heads: dict[int, int] = {}
        for msg in self.workers.gather("drained", DRAIN_TIMEOUT_S + 30):
            for d, seq in msg[1].items():
                heads[d] = max(heads.get(d, 0), seq)
        self.workers.send(("targets", heads))
        results = [m[1] for m in self.workers.gather("result", READER_TIMEOUT_S + 60)]
        result = summarize_load(name, writers, docs, rate_per_s, results, measure_from, stop_at, cpu, max(peak_rss, end_rss), setup_s)
        result["ops_per_commit"] = ops_per_batch
        return result


def summarize_load(
    name: str, writers: int, docs: int, rate_per_s: float, results: list[dict[str, Any]],
    measure_from: float, stop_at: float, cpu: dict[str, float], rss: int, setup_s: float,
) -> dict[str, Any]:
    sent_at: dict[int, float] = {}
    ack_latency: list[float] = []
    acked = 0
    for r in results:
        for d, seq, sent, ack in r["acks"]:
            if measure_from <= ack < stop_at:
                acked += 1
            if measure_from <= sent < stop_at:
                ack_latency.append(ack - sent)
            if seq is not None:
                sent_at[(d << 32) | seq] = sent
    broadcast: list[float] = []
    for r in results:
        for d, seq, received in r["records"]:
            sent = sent_at.get((d << 32) | seq)
            if sent is not None and measure_from <= sent < stop_at:
                broadcast.append(received - sent)
    errors: Counter[str] = Counter()
    closings: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        closings.update(r["closings"])
    ms = lambda s: {k: (v * 1000 if k != "n" else v) for k, v in s.items()}  # noqa: E731
    return {
        "name": name,
        "writers": writers,
        "docs": docs,
        "rate_target": rate_per_s,
        "updates_per_s": acked / (stop_at - measure_from),
        "ack_ms": ms(summarize(ack_latency)),
        "broadcast_ms": ms(summarize(broadcast)),
        "cpu": cpu,
        "rss": rss,
        "setup_s": setup_s,
        "sent": sum(r["sent"] for r in results),
        "ops_to_writers": sum(r["ops_to_writers"] for r in results),
        "exhausted": sum(r["exhausted"] for r in results),
        "undrained": sum(r["undrained"] for r in results),
        "readers_behind": sum(r["readers_behind"] for r in results),
        "errors": dict(errors),
        "closings": dict(closings),
    }
