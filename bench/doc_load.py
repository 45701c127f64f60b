"""The load of bench/bench_documents.py, in its worker processes: what a worker is asked to do
(`Job`, one `ConnSpec` per connection), pre-generated pycrdt text inserts, and the connection
roles: writers that send updates with a bounded window of unacknowledged ones, readers that time
each `doc.op`. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Text

from bench.lean_client import Agent, messages
from crdt.document import CONTENT
from server.core.auth import issue_token
from server.wire.protocol import MAX_BATCH_MESSAGES

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
