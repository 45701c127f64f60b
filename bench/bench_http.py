"""HTTP benchmark: `GET /v1/.../content` of one document (docs/http.md).

Starts its own PostgreSQL (fsync on) and one `tandem serve` node, writes `--ops` one-word edits
into one document through the Python SDK (acknowledged, so they are in the log), then measures
GET content over keep-alive connections (httpx) at 1 and `--concurrency` requests in flight:
- head: the text at the head (a replay from the newest snapshot plus the log after it);
- seq: the text at the middle seq;
- 304: the head with `If-None-Match` naming it (no replay).
Prints requests/s and p50/p95/p99/max latency in milliseconds. Then HTTP edit -> seen: one edit
at a time is posted (`POST .../edits`, an insert at the start) while an SDK client on /ws has the
document open; it prints the latency until the response (committed) and until the SDK client's
text shows the edit. Asserts nothing. Each measurement is bounded by `--count` requests (edits:
`--edits`) and `--time-limit-s`.

    .venv/bin/python bench/bench_http.py [--ops 500] [--count 1000] [--concurrency 8] [--edits 300] [--time-limit-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "clients"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import httpx
import tandem_client

from bench.common import (
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    start_nodes,
    summarize,
    workdir,
)
from server.core.auth import issue_token

TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
SERVER_ENV = {
    "TANDEM_MAX_MESSAGES_PER_S": "1000000",
    "TANDEM_MAX_MESSAGE_BURST": "1000000",
}


async def write_document(ws_url: str, token: str, ops: int) -> tuple[str, str]:
    async with tandem_client.connect(ws_url, token) as client:
        info = await client.create_workspace("bench-http", visibility="team")
        ws = await client.join(info.workspace_id)
        doc = await ws.open("bench")
        for i in range(ops):
            doc.text.insert(len(doc.text), f"word{i} ")
            await doc.flushed(30)  # one operation per edit
        await doc.flushed(30)
        return info.workspace_id, doc.doc_id


async def measure(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    count: int,
    concurrency: int,
    limit_s: float,
) -> tuple[int, float, list[float]]:
    """(requests, wall seconds, latencies in ms) of up to `count` GETs, `concurrency` at a time."""
    latencies: list[float] = []
    deadline = time.monotonic() + limit_s
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.monotonic() < deadline:
            issued += 1
            started = time.perf_counter()
            r = await client.get(url, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code not in (200, 304):
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


async def edits_seen(
    client: httpx.AsyncClient,
    ws_url: str,
    token: str,
    workspace_id: str,
    doc_id: str,
    count: int,
    limit_s: float,
) -> tuple[list[float], list[float]]:
    """(ms until committed, ms until seen on /ws) of up to `count` HTTP edits, one at a time."""
    edits_url = f"/v1/workspaces/{workspace_id}/documents/{doc_id}/edits"
    auth = {"Authorization": f"Bearer {token}"}
    acked: list[float] = []
    seen: list[float] = []
    async with tandem_client.connect(ws_url, token) as watcher:
        ws = await watcher.join(workspace_id)
        doc = await ws.open(doc_id, create=False)
        deadline = time.monotonic() + limit_s
        for i in range(count):
            if time.monotonic() >= deadline:
                break
            word = f"edit{i} "
            started = time.perf_counter()
            r = await client.post(
                edits_url, json=[{"insert": {"index": 0, "text": word}}], headers=auth
            )
            acked.append((time.perf_counter() - started) * 1000)
            if r.status_code != 201:
                raise RuntimeError(f"POST edits: {r.status_code} {r.text[:200]}")
            await doc.wait_for(lambda d, w=word: str(d.text).startswith(w), 30)
            seen.append((time.perf_counter() - started) * 1000)
    return acked, seen


async def run(base: str, ws_url: str, secret: str, args: argparse.Namespace) -> None:
    token = issue_token(secret, TENANT, "bench", 3600)
    workspace_id, doc_id = await write_document(ws_url, token, args.ops)
    auth = {"Authorization": f"Bearer {token}"}
    content = f"{base}/v1/workspaces/{workspace_id}/documents/{doc_id}/content"
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        head = await client.get(content, headers=auth)
        etag = head.headers["etag"]
        print(
            f"document: {args.ops} operations, {len(head.text)} characters, ETag {etag}"
        )
        cases = [
            ("head", content, auth),
            ("seq", f"{content}?seq={int(etag.strip(chr(34))) // 2}", auth),
            ("304", content, {**auth, "If-None-Match": etag}),
        ]
        print(
            f"{'case':<6} {'in flight':>9} {'requests':>8} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}"
        )
        for name, url, headers in cases:
            for concurrency in (1, args.concurrency):
                await measure(
                    client,
                    url,
                    headers,
                    min(20, args.count),
                    concurrency,
                    args.time_limit_s,
                )  # warm up
                n, wall_s, latencies = await measure(
                    client, url, headers, args.count, concurrency, args.time_limit_s
                )
                s = summarize(latencies)
                print(
                    f"{name:<6} {concurrency:>9} {n:>8} {n / wall_s:>8.0f} {s['p50']:>7.2f} {s['p95']:>7.2f} "
                    f"{s['p99']:>7.2f} {s['max']:>7.2f}"
                )
        client.base_url = httpx.URL(base)
        acked, seen = await edits_seen(
            client, ws_url, token, workspace_id, doc_id, args.edits, args.time_limit_s
        )
        print(f"{'edit':<16} {'edits':>6} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
        for name, latencies in (("committed", acked), ("seen on /ws", seen)):
            s = summarize(latencies)
            print(
                f"{name:<16} {len(latencies):>6} {s['p50']:>7.2f} {s['p95']:>7.2f} {s['p99']:>7.2f} {s['max']:>7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops", type=int, default=500, help="edits written into the document first"
    )
    parser.add_argument(
        "--count", type=int, default=1000, help="requests per measurement"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight (second run)"
    )
    parser.add_argument(
        "--edits", type=int, default=300, help="HTTP edits timed until seen on /ws"
    )
    parser.add_argument(
        "--time-limit-s", type=float, default=60.0, help="bound on each measurement"
    )
    args = parser.parse_args()
    for key, value in machine().items():
        print(f"{key}: {value}")
    work = workdir("tandem-bench-http-")
    pg = Postgres(work).start()
    nodes = []
    try:
        print(f"postgres: {pg.version()} (fsync on)")
        secret = jwt_secret()
        nodes = start_nodes(1, pg.admin_url, secret, work, SERVER_ENV)
        base = f"http://127.0.0.1:{nodes[0].port}"
        asyncio.run(run(base, nodes[0].ws_url, secret, args))
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
