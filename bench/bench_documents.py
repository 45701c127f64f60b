"""Document benchmark: durable update throughput, ack and broadcast latency, memory per connection.

Starts its own PostgreSQL (fsync on) and one `tandem serve` node, then, through the protocol:
idle connections (server RSS per authenticated connection with a workspace joined and a document
open); writers = 1, 10, 100 on one document and spread over 100 documents, each writer sending
small pycrdt text inserts (one per message, pre-generated) with at most `--window` unacknowledged;
and a paced run at a fixed rate. Reader connections that only listen measure broadcast latency:
send time (writer) -> `doc.op` arrival (reader), matched by (document, seq). The load runs in
`--client-procs` worker processes. Prints tables; asserts nothing. Every phase has a deadline.

    .venv/bin/python bench/bench_documents.py [--quick] [--repeat N] [--client-procs N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from pycrdt import Doc, Text

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
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
    messages,
    raise_fd_limit,
    rss_bytes,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from bench.bench_apply import bare, generate, median_us_per_update  # noqa: E402
from crdt.document import CONTENT  # noqa: E402
from server.core.auth import issue_token  # noqa: E402
from server.wire.protocol import MAX_BATCH_MESSAGES  # noqa: E402

# The server's per-connection rate limit (100/s by default) would throttle a load generator:
# the benchmark raises it, and says so in its output.
SERVER_ENV = {
    "TANDEM_MAX_MESSAGES_PER_S": "100000",
    "TANDEM_MAX_MESSAGE_BURST": "100000",
}
RATE_CAP_PER_S = 25_000  # sizes the pre-generated updates; a writer that runs out says so
CONNECT_CONCURRENCY = 32
PHASE_TIMEOUT_S = 300.0  # connecting / generating one scenario's connections
DRAIN_TIMEOUT_S = 30.0  # unacknowledged updates after the end of a run
READER_TIMEOUT_S = 15.0  # readers catching up with the last acknowledged seq
OP_PREFIX = '{"type":"doc.op"'
EMPTY_STATE_VECTOR = "AA=="  # base64 of the Yjs state vector of an empty document (one 0 byte)


# --- what a worker is asked to do --------------------------------------------------------------


@dataclass
class ConnSpec:
    role: str  # "writer" | "reader" | "idle"
    agent_id: str
    docs: list[int]  # indexes into Job.doc_ids
    client_id: int = 0  # writers: the Yjs client id of their updates (unique per document)
    rate_per_s: float = 0.0  # writers: 0 = as fast as the window allows
    phase_s: float = 0.0  # paced writers: offset of the first send


@dataclass
class Job:
    url: str
    secret: str
    tenant_id: str
    workspace_id: str
    doc_ids: list[str]
    batches: list[list[ConnSpec]]  # connected one after the other; "ready" after each
    load: bool
    window: int = 32
    budget_per_doc: int = 0  # updates each writer may send to each of its documents
    batch: bool = True  # clients ask for batched frames, as the SDK does (--no-batch: one message per frame)
    send_batch: bool = True  # and writers send batched frames too (--single-sends: one update per frame)


# --- pre-generated updates (worker side) -------------------------------------------------------


class Typist:
    """One Yjs client typing short words near the top of a text; its updates, base64, cached.

    Inserts walk at most ~100 characters from the start, so generating stays linear in the
    count (inserting at the end of a long Y.Text walks the whole text every time)."""

    def __init__(self, client_id: int) -> None:
        self.doc = Doc(client_id=client_id)
        self.text = Text()
        self.doc[CONTENT] = self.text
        self.updates: list[str] = []
        self._captured: list[bytes] = []
        self.doc.observe(lambda event: self._captured.append(event.update))

    def extend_to(self, count: int) -> list[str]:
        for i in range(len(self.updates), count):
            self.text.insert((i % 32) * 3, "ab ")
            self.updates.append(base64.b64encode(self._captured.pop()).decode())
        return self.updates


_TYPISTS: dict[int, Typist] = {}


def updates_for(client_id: int, count: int) -> list[str]:
    typist = _TYPISTS.get(client_id)
    if typist is None:
        typist = _TYPISTS[client_id] = Typist(client_id)
    return typist.extend_to(count)


# --- connection roles (worker side) -----------------------------------------------------------


class Role:
    def __init__(self, spec: ConnSpec, agent: Agent, doc_ids: list[str]) -> None:
        self.spec = spec
        self.agent = agent
        self.doc_ids = [doc_ids[i] for i in spec.docs]
        self.index = {doc_ids[i]: i for i in spec.docs}
        self.errors: Counter[str] = Counter()
        self.closing: str | None = None

    def other_frame(self, frame: dict[str, Any]) -> bool:
        """Errors and closing notices; True when the frame was an error for a request."""
        kind = frame.get("type")
        if kind == "error":
            self.errors[frame.get("code", "?")] += 1
            return True
        if kind == "session.closing":
            self.closing = frame.get("reason")
        return False


class Writer(Role):
    def __init__(
        self, spec: ConnSpec, agent: Agent, doc_ids: list[str], window: int, updates: list[str], batch: bool
    ) -> None:
        super().__init__(spec, agent, doc_ids)
        self.window = window
        self.batch = batch  # send several updates per frame when the window allows
        self.slots = asyncio.Semaphore(window)
        self.updates = updates
        self.send_times: list[float] = []
        self.acks: list[tuple[int, int | None, float, float]] = []  # (doc, seq, sent, acked)
        self.ops_received = 0
        self.exhausted = False
        self.undrained = 0

    def on_text(self, text: str) -> None:
        if text.startswith(OP_PREFIX):  # other writers' updates: counted, not parsed
            self.ops_received += 1
            return
        now = time.monotonic()
        for frame in messages(text):
            self.on_frame(frame, now)

    def on_frame(self, frame: dict[str, Any], now: float) -> None:
        if frame["type"] == "doc.op":
            self.ops_received += 1
        elif frame["type"] == "doc.update.ok":
            self.acks.append((self.index[frame["doc_id"]], frame["seq"], self.send_times[frame["re"]], now))
            self.slots.release()
        elif self.other_frame(frame) and isinstance(frame.get("re"), int) and frame["re"] < len(self.send_times):
            self.slots.release()

    async def run(self, start_at: float, stop_at: float) -> None:
        assert self.agent.sock is not None
        sock = self.agent.sock
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        n_docs = len(self.doc_ids)
        sent = [0] * n_docs
        budget = len(self.updates)
        period = 1.0 / self.spec.rate_per_s if self.spec.rate_per_s else 0.0
        next_at = start_at + self.spec.phase_s
        n = 0
        while True:
            await self.slots.acquire()
            now = time.monotonic()
            if period and next_at > now:
                await asyncio.sleep(next_at - now)
                now = time.monotonic()
            if now >= stop_at or sock.closed.done():
                self.slots.release()
                break
            # Unpaced, a batching writer sends every update its free slots allow in one frame
            # (docs/protocol.md section 3); taking a free slot does not suspend.
            messages_ = []
            while True:
                next_at += period
                d = n % n_docs
                i = sent[d]
                if i >= budget:
                    self.exhausted = True
                    self.slots.release()
                    break
                sent[d] = i + 1
                n += 1
                rid = len(self.send_times)
                self.send_times.append(now)
                messages_.append(
                    f'{{"type":"doc.update","id":{rid},"doc_id":"{self.doc_ids[d]}","update":"{self.updates[i]}"}}'
                )
                if period or not self.batch or self.slots.locked() or len(messages_) >= MAX_BATCH_MESSAGES:
                    break
                await self.slots.acquire()
            if messages_:
                sock.send_text(messages_[0] if len(messages_) == 1 else "[" + ",".join(messages_) + "]")
            if self.exhausted:
                break
        # Drain: every slot back means every update sent got its reply.
        taken = 0
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while taken < self.window and not sock.closed.done():
                    await self.slots.acquire()
                    taken += 1
        except TimeoutError:
            pass
        self.undrained = 0 if taken == self.window else self.window - taken


class Reader(Role):
    def __init__(self, spec: ConnSpec, agent: Agent, doc_ids: list[str]) -> None:
        super().__init__(spec, agent, doc_ids)
        self.records: list[tuple[int, int, float]] = []  # (doc, seq, received)
        self.last_seq: dict[int, int] = {}
        self.targets: dict[int, int] | None = None
        self.caught_up = asyncio.Event()

    def on_text(self, text: str) -> None:
        now = time.monotonic()
        for frame in messages(text):
            self.on_frame(frame, now)

    def on_frame(self, frame: dict[str, Any], now: float) -> None:
        if frame["type"] == "doc.op":
            d, seq = self.index[frame["doc_id"]], frame["seq"]
            self.records.append((d, seq, now))
            self.last_seq[d] = seq
            if self.targets is not None and seq >= self.targets.get(d, 0):
                self._check()
        else:
            self.other_frame(frame)

    def wait_for(self, targets: dict[int, int]) -> None:
        self.targets = {d: s for d, s in targets.items() if d in self.index.values()}
        self._check()

    def _check(self) -> None:
        assert self.targets is not None
        if all(self.last_seq.get(d, 0) >= s for d, s in self.targets.items()):
            self.caught_up.set()


async def connect_role(job: Job, spec: ConnSpec) -> Role:
    token = issue_token(job.secret, uuid.UUID(job.tenant_id), spec.agent_id, 7200)
    agent = await Agent.connect(job.url, token, batch=job.batch)
    await agent.request("workspace.join", workspace_id=job.workspace_id)
    for d in spec.docs:
        # The client has nothing: an explicit empty state vector (docs/protocol.md#55).
        await agent.request("doc.open", doc_id=job.doc_ids[d], state_vector=EMPTY_STATE_VECTOR)
    role: Role
    if spec.role == "writer":
        updates = updates_for(spec.client_id, job.budget_per_doc)
        role = Writer(spec, agent, job.doc_ids, job.window, updates, job.batch and job.send_batch)
    elif spec.role == "reader":
        role = Reader(spec, agent, job.doc_ids)
    else:
        role = Role(spec, agent, job.doc_ids)
    assert agent.sock is not None
    agent.sock.on_text = getattr(role, "on_text", lambda _text: None)
    return role


async def recv(pipe: Connection, expected: str, timeout_s: float) -> tuple[Any, ...]:
    def blocking() -> tuple[Any, ...]:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"no {expected!r} from the coordinator within {timeout_s}s")
        return pipe.recv()

    msg = await asyncio.to_thread(blocking)
    if msg[0] != expected:
        raise RuntimeError(f"expected {expected!r}, got {msg[0]!r}")
    return msg


def settle(admin_url: str) -> None:
    """Let the previous scenario's background work in PostgreSQL end before the next one is
    measured: a checkpoint (its dirty pages) and a vacuum of the tables it grew (the
    insert-triggered autovacuum would otherwise run during the next measured window and be
    billed to it)."""

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute("CHECKPOINT")
            await conn.execute("VACUUM (ANALYZE) document_operations, shared_documents, document_snapshots")
        finally:
            await conn.close()

    asyncio.run(run())


async def run_job(job: Job, pipe: Connection) -> dict[str, Any]:
    roles: list[Role] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(spec: ConnSpec) -> Role:
        async with gate:
            return await connect_role(job, spec)

    try:
        for b, batch in enumerate(job.batches):
            if b > 0:
                await recv(pipe, "next", PHASE_TIMEOUT_S)
            t0 = time.monotonic()
            async with asyncio.timeout(PHASE_TIMEOUT_S):
                outcomes = await asyncio.gather(*(connect(spec) for spec in batch), return_exceptions=True)
            roles += [o for o in outcomes if isinstance(o, Role)]  # closed in `finally` either way
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:
                raise failures[0]
            pipe.send(("ready", b, time.monotonic() - t0))
        writers = [r for r in roles if isinstance(r, Writer)]
        readers = [r for r in roles if isinstance(r, Reader)]
        if job.load:
            _, start_at, stop_at = await recv(pipe, "go", PHASE_TIMEOUT_S)
            await asyncio.gather(*(w.run(start_at, stop_at) for w in writers))
            heads: dict[int, int] = {}
            for w in writers:
                for d, seq, _s, _a in w.acks:
                    if seq is not None and seq > heads.get(d, 0):
                        heads[d] = seq
            pipe.send(("drained", heads))
            _, targets = await recv(pipe, "targets", PHASE_TIMEOUT_S)
            for r in readers:
                r.wait_for(targets)
            try:
                async with asyncio.timeout(READER_TIMEOUT_S):
                    await asyncio.gather(*(r.caught_up.wait() for r in readers))
            except TimeoutError:
                pass
        else:
            await recv(pipe, "finish", PHASE_TIMEOUT_S)
        errors: Counter[str] = Counter()
        closings: Counter[str] = Counter()
        for r in roles:
            errors.update(r.errors)
            if r.closing:
                closings[r.closing] += 1
        return {
            "acks": [a for w in writers for a in w.acks],
            "records": [rec for r in readers for rec in r.records],
            "sent": sum(len(w.send_times) for w in writers),
            "ops_to_writers": sum(w.ops_received for w in writers),
            "exhausted": sum(w.exhausted for w in writers),
            "undrained": sum(w.undrained for w in writers),
            "readers_behind": sum(not r.caught_up.is_set() for r in readers) if job.load else 0,
            "errors": dict(errors),
            "closings": dict(closings),
        }
    finally:
        await asyncio.gather(*(r.agent.close() for r in roles), return_exceptions=True)


def worker_main(pipe: Connection) -> None:
    """A load-generating process: runs jobs until told to exit (or an hour of silence)."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    raise_fd_limit(65536)
    while pipe.poll(3600):
        msg = pipe.recv()
        if msg[0] == "exit":
            return
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(run_job(msg[1], pipe))
            pipe.send(("result", result))
        except BaseException:
            pipe.send(("failed", traceback.format_exc()))


# --- the coordinator ---------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


@dataclass
class Workers:
    count: int
    procs: list[mp.process.BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)

    def start(self) -> Workers:
        ctx = mp.get_context("spawn")
        for _ in range(self.count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, msg: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def gather(self, expected: str, timeout_s: float, pipes: Sequence[Connection] | None = None) -> list[tuple[Any, ...]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for pipe in pipes if pipes is not None else self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerFailed(f"no {expected!r} from a worker within {timeout_s}s")
            msg = pipe.recv()
            if msg[0] == "failed":
                raise WorkerFailed(msg[1])
            if msg[0] != expected:
                raise WorkerFailed(f"expected {expected!r}, got {msg[0]!r}")
            out.append(msg)
        return out

    def stop(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs):
            try:
                pipe.send(("exit",))
            except OSError:
                pass
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(10)


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

    def commit_counters(self) -> tuple[float, float]:
        """(commit batches, committed operations) from the node's /metrics (nan if unreadable)."""
        values = {"tandem_commit_batches_total": float("nan"), "tandem_committed_operations_total": float("nan")}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.node.port}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    name, _, value = line.partition(" ")
                    if name in values:
                        values[name] = float(value)
        except OSError:
            pass
        return values["tandem_commit_batches_total"], values["tandem_committed_operations_total"]

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
        batches0, ops0 = self.commit_counters()
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
        batches1, ops1 = self.commit_counters()
        ops_per_batch = (ops1 - ops0) / (batches1 - batches0) if batches1 > batches0 else float("nan")
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


# --- output ------------------------------------------------------------------------------------


def cost_us(r: dict[str, Any], who: str) -> float:
    """CPU microseconds `who` spent per acknowledged update (robust to other load on the box)."""
    ups = r["updates_per_s"]
    return r["cpu"][who] / 100 / ups * 1e6 if ups > 0 else float("nan")


# (header, width, value) of each column of the results table.
COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    ("scenario", -16, lambda r: r["name"]),
    ("upd/s", 7, lambda r: f"{r['updates_per_s']:,.0f}"),
    ("ack p50", 8, lambda r: f"{r['ack_ms']['p50']:.1f}"),
    ("p95", 7, lambda r: f"{r['ack_ms']['p95']:.1f}"),
    ("p99", 7, lambda r: f"{r['ack_ms']['p99']:.1f}"),
    ("bcast p50", 10, lambda r: f"{r['broadcast_ms']['p50']:.1f}"),
    ("p95", 7, lambda r: f"{r['broadcast_ms']['p95']:.1f}"),
    ("p99", 7, lambda r: f"{r['broadcast_ms']['p99']:.1f}"),
    ("cpu% srv", 9, lambda r: f"{r['cpu']['server']:.0f}"),
    ("pg", 4, lambda r: f"{r['cpu']['postgres']:.0f}"),
    ("cli", 4, lambda r: f"{r['cpu']['client']:.0f}"),
    ("other", 6, lambda r: f"{r['cpu']['other']:.0f}"),
    ("us/upd srv", 11, lambda r: f"{cost_us(r, 'server'):.0f}"),
    ("pg", 5, lambda r: f"{cost_us(r, 'postgres'):.0f}"),
    ("ops/txn", 8, lambda r: f"{r.get('ops_per_commit', float('nan')):.1f}"),
    ("RSS MiB", 8, lambda r: f"{r['rss'] / 2**20:.0f}"),
]
HEADER = " ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w, _ in COLUMNS)


def fmt_row(r: dict[str, Any]) -> str:
    notes = []
    if r["errors"]:
        notes.append("errors " + ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items())))
    if r["closings"]:
        notes.append("closed " + ",".join(f"{k}={v}" for k, v in sorted(r["closings"].items())))
    if r["exhausted"]:
        notes.append(f"{r['exhausted']} writers ran out of updates")
    if r["undrained"]:
        notes.append(f"{r['undrained']} updates unacknowledged")
    if r["readers_behind"]:
        notes.append(f"{r['readers_behind']} readers behind")
    cells = " ".join(f"{v(r):<{-w}}" if w < 0 else f"{v(r):>{w}}" for _, w, v in COLUMNS)
    return cells + (f"  {'; '.join(notes)}" if notes else "")


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeated runs of one scenario (notes summed)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    out["updates_per_s"] = median([r["updates_per_s"] for r in runs])
    for key in ("ack_ms", "broadcast_ms"):
        out[key] = {k: median([r[key][k] for r in runs]) for k in runs[0][key]}
    out["cpu"] = {k: median([r["cpu"][k] for r in runs]) for k in runs[0]["cpu"]}
    out["rss"] = median([r["rss"] for r in runs])
    out["ops_per_commit"] = median([r.get("ops_per_commit", float("nan")) for r in runs])
    for key in ("exhausted", "undrained", "readers_behind"):
        out[key] = sum(r[key] for r in runs)
    for key in ("errors", "closings"):
        total: Counter[str] = Counter()
        for r in runs:
            total.update(r[key])
        out[key] = dict(total)
    return out


def frames_note(args: argparse.Namespace) -> str:
    if args.no_batch:
        return "one message per frame"
    return "batched frames from the server, one update per frame from writers" if args.single_sends else "batched frames both ways"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per scenario instead of 10 s")
    parser.add_argument("--duration-s", type=float, default=None, help="measured seconds per scenario")
    parser.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each")
    parser.add_argument("--window", type=int, default=32, help="unacknowledged updates per writer")
    parser.add_argument("--client-procs", type=int, default=1, help="load-generating processes")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections to open")
    parser.add_argument("--paced-rate", type=float, default=1000.0, help="updates/s of the paced run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario (medians printed)")
    parser.add_argument("--only", default="", help="comma-separated scenario names (idle, w1-doc1, ..., paced)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the node (repeatable), e.g. TANDEM_COMMIT_SHARDS=4")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log)")
    parser.add_argument("--no-settle", action="store_true",
                        help="no CHECKPOINT and VACUUM between scenarios (as the benchmark once ran)")
    parser.add_argument("--no-batch", action="store_true",
                        help="clients do not ask for batched frames (one message per frame both ways, protocol section 3)")
    parser.add_argument("--single-sends", action="store_true",
                        help="writers send one update per frame (the server still batches)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="profile the node with py-spy during each load scenario (collapsed stacks in DIR)")
    args = parser.parse_args()
    duration = args.duration_s or (3.0 if args.quick else 10.0)
    warmup = args.warmup_s if args.warmup_s is not None else (0.5 if args.quick else 1.0)
    repeat = max(1, min(args.repeat, 10))
    only = {s for s in args.only.split(",") if s}

    server_env = dict(SERVER_ENV)
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--server-env wants NAME=VALUE, got {item!r}")
        server_env[name] = value
    raise_fd_limit(args.idle + 4096)
    work = workdir()
    pg = Postgres(work, fsync=True).start()
    secret = jwt_secret()
    workers = Workers(max(1, args.client_procs)).start()
    node = None
    try:
        node = start_nodes(1, pg.admin_url, secret, work, server_env)[0]
        bench = Bench(node, pg, workers, secret, str(uuid.uuid4()), args.window, warmup, duration, args.py_spy, not args.no_batch, not args.single_sends)
        if args.py_spy is not None:
            args.py_spy.mkdir(parents=True, exist_ok=True)
        print(f"# Tandem document benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        gauge = median_us_per_update({"bare": bare}, generate(2000, 5, 3), 5)["bare"]
        print(f"   speed: bare pycrdt apply {gauge:.1f} us per update (bench_apply.py, 5 clients): how fast this shared "
              "machine runs right now; compare runs made at similar speeds")
        print(f"postgres: {pg.version()}, fsync=on, synchronous_commit=on (durable acks)")
        print(f"  server: 1 node, `tandem serve`, env {' '.join(f'{k}={v}' for k, v in server_env.items())} (rate limit defaults: 100/s, burst 200); other settings default")
        print(f"  client: {workers.count} process(es), uvloop, lean sans-I/O WebSocket client, no compression, {frames_note(args)}; "
              f"window {args.window} unacknowledged updates per writer; {warmup:g} s warm-up + {duration:g} s measured per scenario; "
              f"readers: 2 on a single document, 1 per document otherwise; runs per scenario: {repeat}")
        print(f"    load: machine load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start "
              "(other jobs on the machine share its cores: see the 'other' column)")
        print("  update: one pycrdt Y.Text insert of 3 characters per doc.update (18-20 bytes, ~24 base64)")
        print(f"  settle: {'none' if args.no_settle else 'CHECKPOINT and VACUUM (ANALYZE) of the document tables before each run'}")
        print()

        idle = None
        if not only or "idle" in only:
            idle = bench.idle(args.idle)
            print(f"idle connections: {idle['connections']} (joined a workspace, opened a document): server RSS "
                  f"{idle['rss_before'] / 2**20:.1f} -> {idle['rss_after'] / 2**20:.1f} MiB, "
                  f"{idle['kib_per_conn']:.1f} KiB per connection; connected at {idle['connect_per_s']:.0f}/s"
                  + (f"; errors {idle['errors']}" if idle["errors"] else ""))
            print()

        scenarios: list[tuple[str, int, int, int, float]] = []
        for docs in (1, 100):
            for writers in (1, 10, 100):
                scenarios.append((f"w{writers}-doc{docs}", writers, docs, 2 if docs == 1 else 1, 0.0))
        scenarios.append(("paced", 10, 1, 2, args.paced_rate))
        scenarios = [s for s in scenarios if not only or s[0] in only]

        print("wN-docM: N writer connections on M documents (as fast as the window allows); paced: a fixed total rate")
        print("upd/s: acknowledged (durable) updates per second; latencies in ms (ack: send -> doc.update.ok;")
        print("bcast: send -> doc.op at a reader); cpu%: of one core over the measured window (srv: the node and its")
        print("children, pg: PostgreSQL, cli: this load generator, other: everything else on the machine); us/upd: CPU")
        print("microseconds per acknowledged update; ops/txn: operations per group-commit transaction; RSS: node")
        print(HEADER)
        results = []
        for name, writers, docs, readers, rate in scenarios:
            runs = []
            for _ in range(repeat):
                if not args.no_settle:
                    settle(pg.admin_url)
                runs.append(bench.load(name if not rate else f"paced {rate:g}/s", writers, docs, readers, rate))
                if repeat > 1:
                    print("  run: " + fmt_row(runs[-1]), flush=True)
            result = merge_runs(runs)
            results.append(result)
            print(fmt_row(result), flush=True)

        print()
        print("summary (targets for a 2-core machine)")
        spread = [r for r in results if r["docs"] > 1]
        if spread:
            best = max(spread, key=lambda r: r["updates_per_s"])
            print(f"  durable updates/s over 100 documents (best: {best['name']}): {best['updates_per_s']:,.0f}   target >= 10,000")
        paced = [r for r in results if r["rate_target"]]
        if paced:
            p = paced[0]
            print(f"  broadcast p99 at {p['rate_target']:g} updates/s: {p['broadcast_ms']['p99']:.1f} ms   target < 20 ms "
                  f"(achieved {p['updates_per_s']:,.0f}/s)")
        if idle is not None:
            print(f"  memory per idle connection: {idle['kib_per_conn']:.1f} KiB   target < 50 KiB")
        saturated = [r["name"] for r in results if r["cpu"]["server"] >= 90]
        if saturated:
            print(f"  the node process was CPU-bound (>= 90% of a core) in: {', '.join(saturated)}")
    finally:
        workers.stop()
        if node is not None:
            node.stop()
        if args.keep:
            pg.stop()
            print(f"work folder kept (node and PostgreSQL logs): {work}")
        else:
            pg.destroy()
            cleanup_dir(work)


if __name__ == "__main__":
    main()
