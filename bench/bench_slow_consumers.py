"""Slow-consumer benchmark: the node's memory per y-websocket peer that never reads.

Starts one PostgreSQL and one `tandem serve` node. Each pair is one workspace and document with
a writer sending 900 KB awareness states (max_awareness_bytes raised to allow them) and one peer
that connects and never reads again; pairs do not share frames. Per configuration: the node's
RSS before, its peak while the writers send, and once every peer is closed as `slow_consumer`
(their TCP connections still open on the client side). `frames only` sets max_send_queue_bytes
out of reach, which is how the send queue was bounded before it had a byte bound. The node runs
with glibc's mmap threshold fixed at its default (MALLOC_MMAP_THRESHOLD_=131072): otherwise
glibc raises it after the first large free, keeps later frames on its heap and does not give that
back, so "after close" would show what the allocator kept rather than what the node holds. Prints
a table; asserts nothing; every wait has a deadline and the count of states is bounded.

    .venv/bin/python bench/bench_slow_consumers.py [--peers 2] [--state-kb 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import websockets
from pycrdt import Encoder, create_awareness_message

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    Postgres,
    ServerNode,
    cleanup_dir,
    jwt_secret,
    machine,
    scrape,
    start_nodes,
    workdir,
)
from bench.lean_client import Agent  # noqa: E402
from server.core.auth import issue_token  # noqa: E402

MIB = 1 << 20
SEND_QUEUE_LEN = 1024  # the default: the frames-only bound is reached after this many states
CONFIGS = {"frames only": {"TANDEM_MAX_SEND_QUEUE_BYTES": str(1 << 40)}, "default (16 MiB)": {}}


def awareness_message(clock: int, blob: str) -> bytes:
    encoder = Encoder()
    encoder.write_var_uint(1)
    encoder.write_var_uint(4242)
    encoder.write_var_uint(clock)
    encoder.write_var_string(json.dumps({"user": {"name": "writer"}, "blob": blob}, separators=(",", ":")))
    return create_awareness_message(encoder.to_bytes())


def open_sessions(node: ServerNode) -> int:
    sessions = scrape(node).get(("tandem_sessions", ()))
    if sessions is None:
        raise RuntimeError("no tandem_sessions gauge")
    return int(sessions)


async def run(node: ServerNode, secret: str, peers: int, state_bytes: int) -> dict[str, float]:
    tenant = uuid.uuid4()
    base = f"ws://127.0.0.1:{node.port}"
    pairs = []
    for i in range(peers):
        owner = await Agent.connect(node.ws_url, issue_token(secret, tenant, f"owner-{i}", 7200))
        ws = (await owner.request("workspace.create", name=f"w{i}", visibility="team"))["workspace"]["workspace_id"]
        await owner.request("workspace.join", workspace_id=ws)
        doc = (await owner.request("doc.create", workspace_id=ws, title="d"))["document"]["doc_id"]
        await owner.close()
        url = f"{base}/yjs/{ws}/{doc}?token="
        slow = await websockets.connect(url + issue_token(secret, tenant, f"slow-{i}", 7200), max_size=None, ping_interval=None)
        slow.transport.pause_reading()
        writer = await websockets.connect(url + issue_token(secret, tenant, f"writer-{i}", 7200), max_size=None, ping_interval=None)
        pairs.append((writer, slow))
    deadline = time.monotonic() + 30
    while open_sessions(node) != 2 * peers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    baseline = peak = node.rss()
    blob = "x" * state_bytes
    started = time.monotonic()

    async def write(writer: websockets.ClientConnection) -> None:
        for clock in range(1, SEND_QUEUE_LEN + 20):  # bounded: past the frames-only bound
            await writer.send(awareness_message(clock, blob))

    sending = asyncio.gather(*(write(w) for w, _ in pairs))
    deadline = time.monotonic() + 600
    while open_sessions(node) > peers and time.monotonic() < deadline:  # the slow peers closed
        peak = max(peak, node.rss())
        await asyncio.sleep(0.2)
    closed_s = time.monotonic() - started
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await asyncio.sleep(5)  # the transports' bounded end
    after = node.rss()
    for writer, slow in pairs:
        writer.transport.abort()
        slow.transport.abort()
    return {"baseline": baseline, "peak": peak, "after": after, "closed_s": closed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2, help="writer + never-reading peer pairs")
    parser.add_argument("--state-kb", type=int, default=900, help="size of one awareness state")
    args = parser.parse_args()
    peers = min(max(args.peers, 1), 8)
    state_bytes = min(args.state_kb, 1000) * 1000

    work = workdir("tandem-bench-slow-")
    pg = Postgres(work, fsync=False).start()
    secret = jwt_secret()
    try:
        print(f"# Tandem slow-consumer benchmark, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"  load: {peers} pairs (one writer, one peer that never reads), states of {state_bytes // 1000} KB")
        print()
        print(f"{'send queue bound':<18} {'RSS before':>11} {'peak':>9} {'after close':>12} {'peak/peer':>10} {'closed after':>13}")
        for i, (name, env) in enumerate(CONFIGS.items()):
            extra = {"TANDEM_MAX_AWARENESS_BYTES": str(MIB), "TANDEM_MAX_MESSAGES_PER_S": "1000000",
                     "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning",
                     "MALLOC_MMAP_THRESHOLD_": "131072", **env}
            (work / f"run-{i}").mkdir()
            (node,) = start_nodes(1, pg.admin_url, secret, work / f"run-{i}", extra)
            try:
                r = asyncio.run(run(node, secret, peers, state_bytes))
            finally:
                node.stop()
            per_peer = (r["peak"] - r["baseline"]) / peers
            print(
                f"{name:<18} {r['baseline'] / MIB:>7.0f} MiB {r['peak'] / MIB:>5.0f} MiB {r['after'] / MIB:>8.0f} MiB"
                f" {per_peer / MIB:>6.0f} MiB {r['closed_s']:>11.1f} s",
                flush=True,
            )
    finally:
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
