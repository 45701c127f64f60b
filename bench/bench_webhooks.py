"""Webhook benchmark: deliveries/s from one `tandem serve` node to a local receiver (docs/http.md,
"Webhooks").

Starts its own PostgreSQL (fsync on), one node and an HTTP receiver on a loopback port
(tests/webhook_receiver.py: `http.server`, a thread per request, answering 200). For each
endpoint count in `--endpoints`, a fresh workspace gets that many endpoints (all for
`state.changed`, all at the receiver) and `--events` merge patches of its state over HTTP, each
one event in the outbox with one delivery per endpoint. The receiver holds every request until
all events are committed (a backlog), then lets go; the figure is deliveries from that moment
until the last one, over the time it took. Per endpoint, events go one at a time in order, so
more endpoints means more in flight. Prints events, deliveries, seconds and deliveries/s;
asserts nothing. Each measurement is bounded by `--time-limit-s`.

    .venv/bin/python bench/bench_webhooks.py [--events 500] [--endpoints 1,8] [--time-limit-s 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx

from bench.common import (
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    start_nodes,
    workdir,
)
from server.core.auth import issue_token
from tests.webhook_receiver import Receiver

TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000b2")
SERVER_ENV = {"TANDEM_WEBHOOK_POLL_INTERVAL_S": "0.05", "TANDEM_LOG_LEVEL": "warning"}
PATCH = {"content-type": "application/merge-patch+json"}
CONCURRENCY = 8  # state patches in flight while the backlog is built


async def backlog(
    client: httpx.AsyncClient, auth: dict[str, str], ws: str, events: int
) -> None:
    """`events` state changes, at most CONCURRENCY at a time (each commits one event)."""
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < events:
            issued += 1
            body = json.dumps({"n": issued})
            r = await client.patch(
                f"/workspaces/{ws}/state", content=body, headers={**auth, **PATCH}
            )
            if r.status_code != 200:
                raise RuntimeError(f"PATCH state: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def measure(
    base: str, token: str, endpoints: int, events: int, limit_s: float
) -> tuple[int, float]:
    """(deliveries received, seconds) from the receiver's release to the last delivery."""
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{base}/v1", timeout=30) as client:
        created = await client.post(
            "/workspaces", json={"name": f"hooks-{endpoints}"}, headers=auth
        )
        ws = created.json()["workspace"]["workspace_id"]
        with Receiver(gate=True, hold_s=limit_s) as receiver:
            for i in range(endpoints):
                body = {"url": f"{receiver.url}/{i}", "event_types": ["state.changed"]}
                r = await client.post(
                    f"/workspaces/{ws}/webhooks", json=body, headers=auth
                )
                if r.status_code != 201:
                    raise RuntimeError(f"POST webhooks: {r.status_code} {r.text[:200]}")
            await backlog(client, auth, ws, events)
            expected = events * endpoints
            started = time.perf_counter()
            receiver.release()
            deadline = time.monotonic() + limit_s
            while len(receiver.ok_ids()) < expected and time.monotonic() < deadline:
                await asyncio.sleep(
                    0.02
                )  # polling the receiver's count, under the deadline above
            return len(receiver.ok_ids()), time.perf_counter() - started


async def run(base: str, secret: str, args: argparse.Namespace) -> None:
    token = issue_token(secret, TENANT, "bench", 3600)
    print(
        f"{'endpoints':>9} {'events':>7} {'deliveries':>10} {'seconds':>8} {'deliveries/s':>12}"
    )
    for endpoints in args.endpoints:
        received, wall_s = await measure(
            base, token, endpoints, args.events, args.time_limit_s
        )
        print(
            f"{endpoints:>9} {args.events:>7} {received:>10} {wall_s:>8.2f} {received / wall_s:>12.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=500, help="state changes per measurement"
    )
    parser.add_argument(
        "--endpoints",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8],
        help="endpoint counts",
    )
    parser.add_argument(
        "--time-limit-s", type=float, default=120.0, help="bound on each measurement"
    )
    args = parser.parse_args()
    for key, value in machine().items():
        print(f"{key}: {value}")
    work = workdir("tandem-bench-webhooks-")
    pg = Postgres(work).start()
    nodes = []
    try:
        print(f"postgres: {pg.version()} (fsync on)")
        secret = jwt_secret()
        nodes = start_nodes(1, pg.admin_url, secret, work, SERVER_ENV)
        asyncio.run(run(f"http://127.0.0.1:{nodes[0].port}", secret, args))
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
