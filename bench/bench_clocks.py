"""What one many-client update costs the writes after it: stored clock size and ack latency.

One `tandem serve` node on a throwaway PostgreSQL. An agent sends one update declaring
`--clients` Yjs clients (one struct each), then a writer sends
`--acked` small updates one at a time (ack latency) and `--pipelined` without waiting (time
until the last ack). Printed: the update's size, the p50/p95 ack latency, the pipelined time,
and the stored `vector_clock` size of the writer's rows (PostgreSQL's `pg_column_size`). Run it
on two commits to compare them; nothing is asserted.

    .venv/bin/python bench/bench_clocks.py [--clients 80000] [--acked 50] [--pipelined 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from pycrdt import Doc, Text, write_var_uint

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    start_nodes,
    summarize,
    workdir,
)
from bench.lean_client import Agent, ReplyError, messages  # noqa: E402
from server.core import auth  # noqa: E402

SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning"}
TIMEOUT_S = 120.0


def crowd_update(clients: int) -> bytes:
    """One update in which `clients` new Yjs clients each add one struct at clock 0 (a GC
    struct: the smallest one there is, about 7 bytes a client), written out in the v1 layout
    because merging that many pycrdt updates takes minutes."""
    groups = [b"\x01" + write_var_uint(10_000 + k) + b"\x00\x00\x01" for k in range(clients)]
    return write_var_uint(clients) + b"".join(groups) + b"\x00"


async def run(url: str, secret: str, admin_url: str, args: argparse.Namespace) -> dict[str, Any]:
    tenant = uuid.uuid4()
    admin = await Agent.connect(url, auth.issue_token(secret, tenant, "bench-admin", 3600))
    writer = await Agent.connect(url, auth.issue_token(secret, tenant, "bench-writer", 3600))
    try:
        ws = (await admin.request("workspace.create", name="clocks", visibility="team"))["workspace"]["workspace_id"]
        await admin.request("workspace.join", workspace_id=ws)
        doc_id = (await admin.request("doc.create", workspace_id=ws, title="clocks"))["document"]["doc_id"]
        await writer.request("workspace.join", workspace_id=ws)
        await admin.request("doc.open", doc_id=doc_id)
        await writer.request("doc.open", doc_id=doc_id)
        crowd = crowd_update(args.clients) if args.clients else b""
        if crowd:
            try:
                await admin.request("doc.update", TIMEOUT_S, doc_id=doc_id, update=base64.b64encode(crowd).decode())
            except ReplyError as exc:
                print(f"the {args.clients}-client update was refused: {exc}")

        local = Doc(client_id=777)
        local["content"] = text = Text()

        def edit(i: int) -> str:
            before = local.get_state()
            text.insert(len(text), "ab"[i % 2])
            return base64.b64encode(local.get_update(before)).decode()

        latencies = []
        for i in range(args.acked):
            update = edit(i)
            start = time.perf_counter()
            await writer.request("doc.update", TIMEOUT_S, doc_id=doc_id, update=update)
            latencies.append((time.perf_counter() - start) * 1000)

        # Pipelined: every update sent at once, the clock stops at the last ack.
        assert writer.sock is not None
        acks = 0
        done = asyncio.get_running_loop().create_future()

        def on_text(frame_text: str) -> None:
            nonlocal acks
            for frame in messages(frame_text):
                if frame.get("type") in ("doc.update.ok", "error") and str(frame.get("re", "")).startswith("p"):
                    acks += 1
                    if acks == args.pipelined and not done.done():
                        done.set_result(None)

        writer.sock.on_text = on_text
        frames = [json.dumps({"type": "doc.update", "id": f"p{i}", "doc_id": doc_id, "update": edit(i)}) for i in range(args.pipelined)]
        start = time.perf_counter()
        for frame in frames:
            writer.sock.send_text(frame)
        await asyncio.wait_for(done, TIMEOUT_S)
        pipelined_s = time.perf_counter() - start

        conn = await asyncpg.connect(admin_url)
        try:
            rows = await conn.fetch(
                "SELECT pg_column_size(vector_clock) AS stored, length(vector_clock::text) AS text_bytes"
                " FROM document_operations WHERE document_id = $1 AND agent_id = 'bench-writer'",
                uuid.UUID(doc_id),
            )
        finally:
            await conn.close()
        return {
            "update_bytes": len(crowd),
            "ack_ms": summarize(latencies, (50, 95)),
            "pipelined_s": pipelined_s,
            "clock_stored_bytes": summarize([r["stored"] for r in rows], (50, 100)),
            "clock_text_bytes": summarize([r["text_bytes"] for r in rows], (50, 100)),
        }
    finally:
        await writer.close()
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=80_000, help="clients declared by the one large update (0: none)")
    parser.add_argument("--acked", type=int, default=50, help="small updates sent one at a time")
    parser.add_argument("--pipelined", type=int, default=200, help="small updates sent without waiting")
    args = parser.parse_args()
    args.clients = min(max(args.clients, 0), 200_000)
    args.acked = min(max(args.acked, 1), 1000)
    args.pipelined = min(max(args.pipelined, 1), 5000)

    work = workdir("tandem-bench-clocks-")
    pg = Postgres(work, fsync=True).start()
    secret = jwt_secret()
    node = None
    try:
        node = start_nodes(1, pg.admin_url, secret, work, SERVER_ENV)[0]
        print(f"# Tandem stored-clock benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        result = asyncio.run(run(node.ws_url, secret, pg.admin_url, args))
        ack, clock, text = result["ack_ms"], result["clock_stored_bytes"], result["clock_text_bytes"]
        print(f"large update: {args.clients:,} clients, {result['update_bytes']:,} bytes")
        print(f"ack of a small update, one at a time ({args.acked}): p50 {ack['p50']:.1f} ms, p95 {ack['p95']:.1f} ms")
        print(f"{args.pipelined} small updates pipelined: {result['pipelined_s']:.2f} s to the last ack")
        print(f"stored vector_clock of the writer's rows: p50 {clock['p50']:,.0f} bytes, max {clock['p100']:,.0f}"
              f" (JSON text p50 {text['p50']:,.0f}, max {text['p100']:,.0f})")
    finally:
        if node is not None:
            node.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
