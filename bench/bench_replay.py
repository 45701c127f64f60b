"""Replay throughput: rebuild a 100,000-operation text log with and without a snapshot.

Generates a log of small edits by several simulated agents (seeded), then times
`crdt.replay.rebuild` from scratch, from a mid-log snapshot, from a snapshot near the end,
and op-by-op `Document.apply` (the live path). Prints figures; asserts nothing.
Bounded: --ops caps the log, and each phase stops early after --time-limit-s.

    .venv/bin/python bench/bench_replay.py [--ops 100000] [--agents 4] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable

from pycrdt import Doc, Text

from crdt.document import CONTENT, Document
from crdt.operations import Operation, Origin, Snapshot
from crdt.replay import rebuild, verify

DOC_ID = "bench-doc"


def generate(n_ops: int, n_agents: int, seed: int, deadline: float) -> list[Operation]:
    """A log of small edits: each step one agent maybe syncs with the log, then edits."""
    rng = random.Random(seed)
    agents = []
    for k in range(n_agents):
        doc: Doc = Doc(client_id=1000 + k)
        doc[CONTENT] = Text()
        agents.append(doc)
    cursors = [0] * n_agents
    updates: list[tuple[int, bytes]] = []
    captured: list[bytes] = []
    for doc in agents:
        doc.observe(lambda event: captured.append(event.update))
    for _ in range(n_ops):
        if time.perf_counter() > deadline:
            break
        k = rng.randrange(n_agents)
        doc = agents[k]
        text: Text = doc[CONTENT]
        if rng.random() < 0.3 and cursors[k] < len(updates):
            with doc.transaction():
                for _, update in updates[cursors[k] :]:
                    doc.apply_update(update)
            cursors[k] = len(updates)
        captured.clear()
        length = len(text)
        # Edits cluster near the top: yrs finds a local edit's index by walking the text, so
        # uniform positions would make generation quadratic. Replay cost does not depend on
        # where the edits are (remote structs are placed by their origin ids).
        position = min(length, int(rng.expovariate(1 / 64)))
        if length > 40 and rng.random() < 0.3:
            position = min(position, length - 4)
            del text[position : position + rng.randrange(1, 4)]
        else:
            text.insert(position, rng.choice("abcdefgh ") * rng.randrange(1, 4))
        updates.append((k, captured[-1]))
    return [
        Operation(DOC_ID, seq, f"agent-{k}", "update", {}, update)
        for seq, (k, update) in enumerate(updates, start=1)
    ]


def timed(label: str, count: int, fn: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {count:>8} ops {elapsed:8.3f} s {count / elapsed:>12,.0f} ops/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-limit-s", type=float, default=120.0)
    args = parser.parse_args()

    start = time.perf_counter()
    ops = generate(args.ops, args.agents, args.seed, start + args.time_limit_s)
    n = len(ops)
    total_bytes = sum(len(op.update) for op in ops)
    print(f"generated {n} ops ({total_bytes / n:.1f} bytes/op avg) in {time.perf_counter() - start:.1f} s")

    full = timed("rebuild from scratch", n, lambda: rebuild(ops))
    assert isinstance(full, Document)
    print(f"  final text {len(full.text())} chars, state {len(full.encode_state())} bytes")

    for fraction in (0.5, 0.9, 0.99):
        seq = int(n * fraction)
        snapshot = Snapshot(DOC_ID, seq, rebuild(ops, until_seq=seq).encode_state())
        tail = ops[seq:]
        doc = timed(
            f"rebuild from snapshot@{fraction:.0%} + {len(tail)} ops",
            len(tail),
            lambda snapshot=snapshot, tail=tail: rebuild(tail, snapshot),
        )
        load_start = time.perf_counter()
        Document.from_state(snapshot.state)
        load_s = time.perf_counter() - load_start
        print(
            f"  snapshot {len(snapshot.state)} bytes loads in {load_s:.3f} s;"
            f" equal to scratch: {bool(verify(full, doc))}"
        )

    live_ops = ops[: min(n, 20_000)]

    def op_by_op() -> Document:
        document = Document()
        for op in live_ops:
            document.apply(op.update, Origin.REPLAY)
        return document

    timed("Document.apply one by one (live path)", len(live_ops), op_by_op)

    tracemalloc.start()
    rebuild(ops[: min(n, 20_000)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"python-heap peak during rebuild of {min(n, 20_000)} ops: {peak / 1e6:.1f} MB (excludes yrs)")


if __name__ == "__main__":
    main()
