"""Benchmark of the group-commit statement alone: `tandem_append_batch` (migration 0019) in
PostgreSQL, without a server node.

Starts a throwaway PostgreSQL (fsync on), applies the migrations, creates 100 documents of one
tenant, and calls the function as the committer does (one autocommitted statement per
batch, as the application role, so row-level security applies) for several batch shapes:
documents per batch x operations per document. Prints, per shape, rows/s (wall) and the
CPU time of the PostgreSQL backend that ran the calls, per row and per call (user + system;
system time includes the fsync of each commit), the median of `--runs`.
`--compare` first rolls migration 0019 back and measures 0018's function (one statement group
per document, non-HOT head updates), then applies 0019 again and measures it, on fresh
documents each time, so the two are compared within one run.

    .venv/bin/python bench/bench_append.py [--runs 3] [--no-hints] [--compare]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Postgres, cleanup_dir, cpu_seconds, machine, workdir  # noqa: E402
from server import database, migrate, store  # noqa: E402
from server.settings import Settings  # noqa: E402

# (documents per batch, operations per document, calls): the shapes the document benchmark
# produces (paced: one document, a few operations; w100-doc100: ~100 documents, a few each).
SHAPES = [(1, 5, 400), (1, 100, 40), (100, 1, 60), (100, 4, 30)]
UPDATE = bytes(range(19))  # the size of a 3-character Y.Text insert
CLOCK = '{"3735928559":42,"1234567":7}'  # JSON text, as the committer passes it


def backend_cpu_s(pid: int) -> float:
    return cpu_seconds([pid])[pid]


async def measure(conn: asyncpg.Connection, pid: int, tenant: uuid.UUID, docs: list[uuid.UUID],
                  shape: tuple[int, int, int], node: str | None) -> tuple[float, float, float]:
    """(rows/s, backend us per row, backend ms per call) for `calls` batches of one shape."""
    n_docs, per_doc, calls = shape
    batch = [d for d in docs[:n_docs] for _ in range(per_doc)]
    n = len(batch)
    args = ([tenant] * n, batch, ["agent"] * n, [None] * n, ["insert"] * n, [CLOCK] * n, [UPDATE] * n, node)
    for _ in range(5):  # warm the plan cache
        await conn.fetch(store.Q["append_batch"], *args)
    cpu0, t0 = backend_cpu_s(pid), time.perf_counter()
    for _ in range(calls):
        await conn.fetch(store.Q["append_batch"], *args)
    wall, cpu = time.perf_counter() - t0, backend_cpu_s(pid) - cpu0
    return n * calls / wall, cpu / (n * calls) * 1e6, cpu / calls * 1e3


async def make_documents(admin: asyncpg.Connection, tenant: uuid.UUID, count: int) -> list[uuid.UUID]:
    ws = await admin.fetchval(
        "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'bench', 'a') RETURNING id", tenant
    )
    return [
        await admin.fetchval(
            "INSERT INTO shared_documents (tenant_id, workspace_id, title, created_by, content)"
            " VALUES ($1, $2, 'doc', 'a', repeat('x', 500)) RETURNING id", tenant, ws,
        )
        for _ in range(count)
    ]  # fmt: skip


async def main(runs: int, hints: bool, docs_count: int, compare: bool) -> None:
    folder = workdir()
    pg = Postgres(folder).start()
    try:
        settings = Settings(app_password="bench")
        await database.prepare(settings, pg.admin_url)
        admin = await asyncpg.connect(pg.admin_url)
        await admin.execute("ALTER ROLE tandem_app PASSWORD 'bench'")
        print(f"# tandem_append_batch, {time.strftime('%Y-%m-%d')}; {machine()['cpu']}; {pg.version()}, fsync on")
        print(f"# hints {'on' if hints else 'off'}; median of {runs} runs; backend CPU = user + system of the backend")
        print(f"{'migration':>9} {'docs x ops':>12} {'rows/s':>9} {'us/row':>8} {'ms/call':>8}")
        phases = [("0018", "down"), ("0019", "up")] if compare else [("0019", None)]
        for label, step in phases:
            if step == "down":
                await migrate.down(admin, settings.migrations_dir, settings.owner_role, steps=1)
            elif step == "up":
                await migrate.up(admin, settings.migrations_dir, settings.owner_role)
            tenant = uuid.uuid4()
            docs = await make_documents(admin, tenant, docs_count)
            conn = await asyncpg.connect(database.app_url_from(pg.admin_url, "tandem_app", "bench"))
            await database._init_connection(conn)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for shape in SHAPES:
                node = "bench-node" if hints else None
                results = [await measure(conn, pid, tenant, docs, shape, node) for _ in range(runs)]
                rate, per_row, per_call = (statistics.median(r[i] for r in results) for i in range(3))
                print(f"{label:>9} {shape[0]:>5} x {shape[1]:<4} {rate:>9,.0f} {per_row:>8.1f} {per_call:>8.2f}", flush=True)
            await conn.close()
        await admin.close()
    finally:
        pg.stop()
        pg.destroy()
        cleanup_dir(folder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-hints", action="store_true", help="no fan-out NOTIFY (a node alone)")
    parser.add_argument("--compare", action="store_true", help="measure migration 0018's function first")
    ns = parser.parse_args()
    asyncio.run(main(ns.runs, not ns.no_hints, 100, ns.compare))
