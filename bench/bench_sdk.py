"""SDK benchmark: round-trip latency through the Python SDK (clients/, tandem-client).

Starts its own PostgreSQL (fsync on) and one `tandem serve` node (its documented rate limit
raised, as in bench_documents.py), then measures, one operation at a time:
- `ping`: a protocol ping through the SDK's request path;
- edit -> ack: a one-character insert into `doc.text`, then `await doc.flushed()` (the server
  committed it);
- edit -> remote: the same edit until a second client (its own connection) holds it;
- awareness.set: a small awareness state, until its reply;
- the same edit -> ack without the SDK (bench.common's lean client sending `doc.update` and
  waiting for `doc.update.ok`), as the baseline the SDK's overhead is read against;
- lock and workspace-state round trips through the SDK: a named lock's acquire + release, a
  document lock held around one fenced edit (acquire, edit acked, release), `ws.state.update(fn)`
  alone and with a second client updating the same counter (retries on conflict included).
Prints p50/p95/p99/max in milliseconds; asserts nothing. Bounded by `--count` and `--time-limit-s`.

    .venv/bin/python bench/bench_sdk.py [--count 500] [--time-limit-s 120]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "clients"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import tandem_client  # noqa: E402
from pycrdt import Doc, Text  # noqa: E402

from bench.common import (  # noqa: E402
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    start_nodes,
    summarize,
    workdir,
)
from bench.lean_client import Agent  # noqa: E402
from server.core.auth import issue_token  # noqa: E402

SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "100000", "TANDEM_MAX_MESSAGE_BURST": "100000"}
WAIT_S = 30.0  # one operation's deadline


async def measure(label: str, count: int, deadline: float, op: Callable[[int], Awaitable[object]]) -> None:
    samples: list[float] = []
    for i in range(count):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        await op(i)
        samples.append((time.perf_counter() - start) * 1000.0)
    s = summarize(samples)
    print(f"{label:<28} {int(s['n']):>6} {s['p50']:>9.2f} {s['p95']:>9.2f} {s['p99']:>9.2f} {s['max']:>9.2f}")


async def run(url: str, secret: str, count: int, time_limit_s: float) -> None:
    tenant = uuid.uuid4()
    deadline = time.monotonic() + time_limit_s
    token_a = issue_token(secret, tenant, "bench-a", 3600)
    token_b = issue_token(secret, tenant, "bench-b", 3600)
    async with tandem_client.connect(url, token_a) as a, tandem_client.connect(url, token_b) as b:
        info = await a.create_workspace("SDK bench", visibility="team")
        a_ws, b_ws = await a.join(info.workspace_id), await b.join(info.workspace_id)
        doc_a = await a_ws.open("bench")
        doc_b = await b_ws.open(doc_a.doc_id)

        async def edit_ack(i: int) -> None:
            doc_a.text.insert(len(doc_a.text), "x")
            await doc_a.flushed(WAIT_S)

        async def edit_remote(i: int) -> None:
            doc_a.text.insert(len(doc_a.text), "y")
            target = len(doc_a.text)
            await doc_b.wait_for(lambda d: len(d.text) >= target, WAIT_S)

        async def awareness(i: int) -> None:
            await a_ws.set_awareness({"cursor": i}, doc_a)

        print(f"{'operation (ms)':<28} {'n':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
        await measure("ping", count, deadline, lambda i: a.ping())
        await measure("edit -> ack (flushed)", count, deadline, edit_ack)
        await measure("edit -> other client", count, deadline, edit_remote)
        await measure("awareness.set", count, deadline, awareness)

        raw = await Agent.connect(url, token_a)
        try:
            await raw.request("workspace.join", workspace_id=info.workspace_id)
            await raw.request("doc.open", doc_id=doc_a.doc_id, state_vector=base64.b64encode(doc_a.ydoc.get_state()).decode())
            mirror = Doc()
            mirror.apply_update(doc_a.ydoc.get_update())
            text = mirror.get("content", type=Text)

            async def raw_edit_ack(i: int) -> None:
                before = mirror.get_state()
                text.insert(len(text), "z")
                update = base64.b64encode(mirror.get_update(before)).decode()
                await raw.request("doc.update", timeout_s=WAIT_S, doc_id=doc_a.doc_id, update=update)

            await measure("edit -> ack, no SDK", count, deadline, raw_edit_ack)
        finally:
            await raw.close()
        await doc_a.wait_for(lambda d: str(d.text).endswith("z"), WAIT_S)

        async def lock_cycle(i: int) -> None:
            async with a_ws.lock("bench", ttl=30, renew=False):
                pass

        async def doc_lock_edit(i: int) -> None:
            async with doc_a.lock(ttl=30, renew=False):
                doc_a.text.insert(len(doc_a.text), "f")  # sent with the lock's fence

        async def state_update(i: int) -> None:
            await a_ws.state.update(lambda s: {**s, "n": s.get("n", 0) + 1})

        async def state_contended(i: int) -> None:  # two clients increment the same counter
            await asyncio.gather(
                a_ws.state.update(lambda s: {**s, "c": s.get("c", 0) + 1}),
                b_ws.state.update(lambda s: {**s, "c": s.get("c", 0) + 1}),
            )

        await measure("lock acquire+release", count, deadline, lock_cycle)
        await measure("doc lock + fenced edit", count, deadline, doc_lock_edit)
        await measure("state.update(fn)", count, deadline, state_update)
        await measure("2 clients x state.update", count, deadline, state_contended)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="operations per measurement")
    parser.add_argument("--time-limit-s", type=float, default=120.0)
    args = parser.parse_args()
    for key, value in machine().items():
        print(f"{key}: {value}")
    work = workdir("tandem-bench-sdk-")
    pg = Postgres(work).start()
    nodes = []
    try:
        print(f"postgres: {pg.version()} (fsync on); server rate limit raised: {SERVER_ENV}")
        secret = jwt_secret()
        nodes = start_nodes(1, pg.admin_url, secret, work, SERVER_ENV)
        asyncio.run(run(nodes[0].ws_url, secret, args.count, args.time_limit_s))
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
