"""Benchmark of the group-commit statement alone: `tandem_append_batch` in PostgreSQL, without a
server node.

Starts a throwaway PostgreSQL (fsync on), applies the migrations, creates 100 documents of one
tenant, and calls the function as the committer does (one autocommitted statement per
batch, as the application role, so row-level security applies) for several batch shapes:
documents per batch x operations per document. Prints, per shape, rows/s (wall), the
CPU time of the PostgreSQL backend that ran the calls, per row and per call (user + system;
system time includes the fsync of each commit), and the WAL written per row, each the median of
`--runs`. Each measurement starts right after a CHECKPOINT, as appends do every few minutes in
a running server: the first change of a page after a checkpoint logs the whole page.
`--compare N` first rolls the newest N migrations back and measures the schema before them,
then applies them again and measures the current one, on fresh documents each time, so the two
are compared within one run (`--compare 2`: 0018's function, before the set-based append and
the time-ordered ids; `--compare 1`: random against time-ordered operation ids).
`--rows N` first fills the log with N operations (of other documents), because what an index
costs an append depends on how much of it still fits in memory.

    .venv/bin/python bench/bench_append.py [--runs 3] [--no-hints] [--compare N] [--rows N]
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
from server.core.settings import Settings  # noqa: E402
from server.db import database, migrate, store  # noqa: E402

# (documents per batch, operations per document, calls): the shapes the document benchmark
# produces (paced: one document, a few operations; w100-doc100: ~100 documents, a few each).
SHAPES = [(1, 1, 800), (1, 5, 400), (1, 100, 40), (100, 1, 60), (100, 4, 30)]
UPDATE = bytes(range(19))  # the size of a 3-character Y.Text insert
CLOCK = '{"3735928559":42,"1234567":7}'  # JSON text, as the committer passes it


def backend_cpu_s(pid: int) -> float:
    return cpu_seconds([pid])[pid]


async def measure(conn: asyncpg.Connection, admin: asyncpg.Connection, pid: int, tenant: uuid.UUID,
                  docs: list[uuid.UUID], shape: tuple[int, int, int], node: str | None) -> tuple[float, ...]:
    """(rows/s, backend us per row, backend ms per call, WAL bytes per row) for `calls` batches
    of one shape, starting right after a checkpoint: the first change of a page after one
    writes the whole page to the WAL, so WAL bytes show how many pages the appends touch."""
    n_docs, per_doc, calls = shape
    batch = [d for d in docs[:n_docs] for _ in range(per_doc)]
    n = len(batch)
    args = ([tenant] * n, batch, ["agent"] * n, [None] * n, ["insert"] * n, [CLOCK] * n, [UPDATE] * n, node)
    for _ in range(5):  # warm the plan cache
        await conn.fetch(store.Q["append_batch"], *args)
    await admin.execute("CHECKPOINT")
    lsn0 = await admin.fetchval("SELECT pg_current_wal_lsn()")
    cpu0, t0 = backend_cpu_s(pid), time.perf_counter()
    for _ in range(calls):
        await conn.fetch(store.Q["append_batch"], *args)
    wall, cpu = time.perf_counter() - t0, backend_cpu_s(pid) - cpu0
    wal = await admin.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn0)
    return n * calls / wall, cpu / (n * calls) * 1e6, cpu / calls * 1e3, float(wal) / (n * calls)


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


async def prefill(admin: asyncpg.Connection, rows: int) -> None:
    """`rows` operations spread over 200 documents of another tenant, in one statement."""
    tenant = uuid.uuid4()
    docs = await make_documents(admin, tenant, 200)
    async with admin.transaction():
        await admin.execute("SELECT set_config('app.current_tenant', $1, true)", str(tenant))
        await admin.execute(
            "INSERT INTO document_operations (tenant_id, document_id, sequence_number, agent_id, operation_type,"
            " vector_clock, \"update\") SELECT $1, d, s, 'a', 'insert', $2::jsonb, $3"
            " FROM generate_series(1, $4::int) AS s, unnest($5::uuid[]) AS d",
            tenant, CLOCK, UPDATE, -(-rows // len(docs)), docs,
        )  # fmt: skip
    await admin.execute("VACUUM (ANALYZE) document_operations")


async def main(runs: int, hints: bool, docs_count: int, compare: int, rows: int) -> None:
    folder = workdir()
    pg = Postgres(folder).start()
    try:
        settings = Settings(app_password="bench")
        await database.prepare(settings, pg.admin_url)
        admin = await asyncpg.connect(pg.admin_url)
        await admin.execute("ALTER ROLE tandem_app PASSWORD 'bench'")
        print(f"# tandem_append_batch, {time.strftime('%Y-%m-%d')}; {machine()['cpu']}; {pg.version()}, fsync on")
        print(f"# hints {'on' if hints else 'off'}; median of {runs} runs; backend CPU = user + system of the backend;"
              f" {rows:,} operations added to the log before each phase (by the phase's schema)")
        print(f"{'migration':>9} {'docs x ops':>12} {'rows/s':>9} {'us/row':>8} {'ms/call':>8} {'WAL B/row':>9}")
        versions = [m.version for m in migrate.load(settings.migrations_dir)]
        newest = versions[-1]
        phases = [(versions[-1 - compare], "down"), (newest, "up")] if compare else [(newest, None)]
        for label, step in phases:
            if step == "down":
                await migrate.down(admin, settings.migrations_dir, settings.owner_role, steps=compare)
            elif step == "up":
                await migrate.up(admin, settings.migrations_dir, settings.owner_role)
            if rows:
                await prefill(admin, rows)
            tenant = uuid.uuid4()
            docs = await make_documents(admin, tenant, docs_count)
            conn = await asyncpg.connect(database.app_url_from(pg.admin_url, "tandem_app", "bench"))
            await database._init_connection(conn)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for shape in SHAPES:
                node = "bench-node" if hints else None
                results = [await measure(conn, admin, pid, tenant, docs, shape, node) for _ in range(runs)]
                rate, per_row, per_call, wal = (statistics.median(r[i] for r in results) for i in range(4))
                print(f"{label:>9} {shape[0]:>5} x {shape[1]:<4} {rate:>9,.0f} {per_row:>8.1f} {per_call:>8.2f} {wal:>9,.0f}",
                      flush=True)
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
    parser.add_argument("--compare", type=int, default=0, metavar="N",
                        help="measure the schema before the newest N migrations first")
    parser.add_argument("--rows", type=int, default=0, help="operations in the log before measuring")
    ns = parser.parse_args()
    asyncio.run(main(ns.runs, not ns.no_hints, 100, ns.compare, ns.rows))
