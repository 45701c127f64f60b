"""Replay throughput: rebuild a 100,000-operation text log with and without a snapshot.

Generates a log of small edits by several simulated agents (seeded), then times
`crdt.replay.rebuild` from scratch, from a mid-log snapshot, from a snapshot near the end,
and op-by-op `Document.apply` (the live path). Then (unless --no-db) the same log goes into a
throwaway PostgreSQL and `server.tools.replay` (what `tandem replay` runs: pages of rows read as the
application role, fed to `rebuild`) replays it with and without a snapshot, and verifies it.
Prints figures; asserts nothing. Bounded: --ops caps the log, and each phase stops early after
--time-limit-s.

    .venv/bin/python bench/bench_replay.py [--ops 100000] [--agents 4] [--seed 7] [--no-db]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from pycrdt import Doc, Text

from crdt.document import CONTENT, Document
from crdt.operations import Operation, Origin, Snapshot
from crdt.replay import rebuild, verify

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.common` when run as a script

from bench.common import Postgres, cleanup_dir, workdir  # noqa: E402
from server.core.settings import Settings  # noqa: E402
from server.db import database, store
from server.tools import replay as replay_tool  # noqa: E402
from server.workspaces import directory as workspaces  # noqa: E402

DOC_ID = "bench-doc"
INSERT_BATCH_OPS = 1000


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
    parser.add_argument("--db", action=argparse.BooleanOptionalAction, default=True,
                        help="Also replay through PostgreSQL as `tandem replay` does (default: on).")
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

    if args.db:
        asyncio.run(through_postgres(ops, full.text()))


async def timed_async(label: str, count: int, fn: Callable[[], Awaitable[object]]) -> object:
    start = time.perf_counter()
    result = await fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {count:>8} ops {elapsed:8.3f} s {count / elapsed:>12,.0f} ops/s")
    return result


async def through_postgres(ops: list[Operation], final_text: str) -> None:
    """`tandem replay`'s path: the log in PostgreSQL, read in pages by `server.tools.replay`."""
    work = workdir("tandem-bench-replay-")
    pg = Postgres(work, fsync=False).start()
    try:
        settings = Settings(database_url=pg.admin_url, data_dir=work / "data")
        await database.prepare(settings, pg.admin_url)
        pool = await database.create_pool(database.app_url(settings, pg.admin_url), min_size=1, max_size=1)
        try:
            await replay_from_postgres(pool, ops, final_text)
        finally:
            await pool.close()
    finally:
        pg.destroy()
        cleanup_dir(work)


async def replay_from_postgres(pool: asyncpg.Pool, ops: list[Operation], final_text: str) -> None:
    n = len(ops)
    tenant = uuid.uuid4()
    async with store.tenant_transaction(pool, tenant, "bench") as conn:
        workspace = await workspaces.create_workspace(conn, tenant, "bench", "Replay bench")
        plain = await workspaces.create_document(conn, "bench", workspace.workspace_id, "no snapshot")
        snapped = await workspaces.create_document(conn, "bench", workspace.workspace_id, "snapshot at 90%")
    start = time.perf_counter()
    for doc in (plain, snapped):
        for i in range(0, n, INSERT_BATCH_OPS):
            rows = [store.NewOperation(op.agent_id, str(op.op_type), json.dumps(op.vector_clock), op.update)
                    for op in ops[i : i + INSERT_BATCH_OPS]]
            async with store.tenant_transaction(pool, tenant, "bench") as conn:
                await store.append_operations(conn, doc.doc_id, rows)
    seq = int(n * 0.9)
    async with store.tenant_transaction(pool, tenant, "bench") as conn:
        await store.insert_snapshot(conn, snapped.doc_id, seq, rebuild(ops, until_seq=seq).encode_state())
        await store.update_content(conn, snapped.doc_id, final_text, None)
    print(f"postgres: stored {n} ops twice in {time.perf_counter() - start:.1f} s (batches of {INSERT_BATCH_OPS})")

    for label, doc, count in (("tandem replay, no snapshot", plain, n), ("tandem replay, snapshot@90%", snapped, n - seq)):
        result = await timed_async(label, count, lambda doc=doc: replay_tool.replay(pool, tenant, doc.doc_id, progress=False))
        assert isinstance(result, replay_tool.Replayed)
        print(f"  equal to the in-memory rebuild: {result.document.text() == final_text}")
    report = await timed_async("tandem replay --verify (from seq 1)", n,
                               lambda: replay_tool.verify(pool, tenant, snapped.doc_id, progress=False))
    assert isinstance(report, replay_tool.VerifyReport)
    print(f"  verified: {report.ok}")


if __name__ == "__main__":
    main()
