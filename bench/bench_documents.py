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
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_apply import bare, generate, median_us_per_update  # noqa: E402
from bench.common import (  # noqa: E402
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    median,
    raise_fd_limit,
    start_nodes,
    workdir,
)
from bench.doc_scenarios import Bench  # noqa: E402
from bench.doc_workers import Workers  # noqa: E402

# The server's per-connection rate limit (100/s by default) would throttle a load generator:
# the benchmark raises it, and says so in its output.
SERVER_ENV = {
    "TANDEM_MAX_MESSAGES_PER_S": "100000",
    "TANDEM_MAX_MESSAGE_BURST": "100000",
}


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
