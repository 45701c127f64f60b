"""How fast, and how completely, a /yjs connection follows its member's rights (docs/protocol.md#111).

Two `tandem serve` nodes on one PostgreSQL. An owner on node 2 changes the membership of an
editor that has one y-websocket connection on each node (raw connections speaking y-protocols
with pycrdt's helpers); a watcher agent on node 1 tells when node 1 has heard of the change.
Each round, with a new editor agent:

1. demoted to viewer: each connection sends `--updates` updates (each from a fresh Yjs client,
   so none depends on another); counted: how many are stored;
2. promoted back: each sends one more; counted: how many are stored;
3. removed: the owner writes `--updates` updates right after the removal; measured: how long
   after the removal request each connection is closed (and with what code), and how many of the
   owner's updates it still received.

Prints the totals and close latencies (p50, max); asserts nothing. Bounded: `--rounds` rounds,
every wait has a deadline (`--wait-s`); the nodes and PostgreSQL are stopped by pid at the end.

    .venv/bin/python bench/bench_yjs_rights.py [--rounds 20] [--updates 5] [--wait-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import websockets
from pycrdt import Doc, Text, YMessageType, YSyncMessageType, create_update_message

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
from bench.lean_client import Agent  # noqa: E402
from server.core import auth  # noqa: E402

SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning"}
AUTH = 2  # y-protocols auth message (permission denied)


def loose_update(text: str) -> bytes:
    """An update inserting `text` from a fresh Yjs client: valid whatever the server holds."""
    doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


class Editor:
    """One raw y-websocket connection: counts the updates and refusals it receives, and its close."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames = 0
        self.updates = 0
        self.denied = 0
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> Editor:
        editor = cls(await websockets.connect(url, max_size=None, open_timeout=10))
        await editor.ws.send(bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1, 1, 0]))  # empty state vector
        if not await editor.wait(lambda e: e.frames > 0, 10):  # the server's first message: it has joined
            raise SystemExit(f"{url}: no sync message within 10 s")
        return editor

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames += 1
                if isinstance(frame, bytes) and frame[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE]):
                    self.updates += 1
                elif isinstance(frame, bytes) and frame[:1] == bytes([AUTH]):
                    self.denied += 1
                self.changed.set()
        except websockets.ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code
        self.changed.set()

    async def wait(self, predicate: Any, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self):
                    self.changed.clear()
                    await self.changed.wait()
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.reader, 10)


async def wait_event(agent: Agent, agent_id: str, change: str, timeout_s: float) -> bool:
    """Poll the agent's unsolicited frames (bounded by the deadline) for the member change."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, f in enumerate(agent.events):
            if f.get("type") == "member.changed" and f["member"]["agent_id"] == agent_id and f["change"] == change:
                del agent.events[: i + 1]
                return True
        await asyncio.sleep(0.005)  # a poll under the deadline above
    return False


async def stored(pg_url: str, doc_id: str, agent_id: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        query = "SELECT count(*) FROM document_operations WHERE document_id = $1 AND agent_id = $2"
        return int(await conn.fetchval(query, uuid.UUID(doc_id), agent_id))
    finally:
        await conn.close()


async def run(args: argparse.Namespace, pg: Postgres, nodes: list[Any], secret: str) -> dict[str, Any]:
    tenant = uuid.uuid4()

    def token(agent_id: str) -> str:
        return auth.issue_token(secret, tenant, agent_id, 3600)

    owner = await Agent.connect(nodes[1].ws_url, token("owner"))
    watcher = await Agent.connect(nodes[0].ws_url, token("watcher"))
    ws = (await owner.request("workspace.create", name="rights", visibility="team", max_members=1000))["workspace"]
    ws_id = ws["workspace_id"]
    await owner.request("workspace.join", workspace_id=ws_id)
    await watcher.request("workspace.join", workspace_id=ws_id)
    doc_id = (await owner.request("doc.create", workspace_id=ws_id, title="doc"))["document"]["doc_id"]
    await owner.request("doc.open", doc_id=doc_id, state_vector=base64.b64encode(b"\x00").decode())
    totals = {"demoted_sent": 0, "demoted_stored": 0, "promoted_sent": 0, "promoted_stored": 0,
              "owner_updates_sent": 0, "heard_after_removal": [0, 0], "close_s": [[], []], "not_closed": [0, 0],
              "close_codes": set(), "missed_events": 0}  # fmt: skip
    wait_s = args.wait_s
    for r in range(args.rounds):
        agent_id = f"editor-{r}"
        editors = [
            await Editor.connect(f"ws://127.0.0.1:{node.port}/yjs/{ws_id}/{doc_id}?token={token(agent_id)}") for node in nodes
        ]
        try:
            # 1. demoted
            await owner.request("member.update", workspace_id=ws_id, agent_id=agent_id, role="viewer")
            totals["missed_events"] += not await wait_event(watcher, agent_id, "updated", wait_s)
            for i, e in enumerate(editors):
                for k in range(args.updates):
                    await e.ws.send(create_update_message(loose_update(f"<viewer {r}.{i}.{k}>")))
            totals["demoted_sent"] += args.updates * len(editors)
            for e in editors:  # refused: a denial each; stored: nothing comes back either way
                await e.wait(lambda x: x.denied >= args.updates, wait_s)
            totals["demoted_stored"] += await stored(pg.admin_url, doc_id, agent_id)
            before = await stored(pg.admin_url, doc_id, agent_id)
            # 2. promoted back
            await owner.request("member.update", workspace_id=ws_id, agent_id=agent_id, role="member")
            totals["missed_events"] += not await wait_event(watcher, agent_id, "updated", wait_s)
            for i, e in enumerate(editors):
                await e.ws.send(create_update_message(loose_update(f"<member {r}.{i}>")))
            totals["promoted_sent"] += len(editors)
            deadline = time.monotonic() + wait_s
            while await stored(pg.admin_url, doc_id, agent_id) < before + len(editors) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # a poll under the deadline above
            totals["promoted_stored"] += await stored(pg.admin_url, doc_id, agent_id) - before
            # 3. removed, while the owner writes on
            heard = [e.updates for e in editors]
            started = time.monotonic()
            await owner.request("member.remove", workspace_id=ws_id, agent_id=agent_id)
            for k in range(args.updates):
                await owner.request("doc.update", doc_id=doc_id, update=base64.b64encode(loose_update(f"<owner {r}.{k}>")).decode())
            totals["owner_updates_sent"] += args.updates
            for i, e in enumerate(editors):
                if await e.wait(lambda x: x.closed_at is not None, wait_s):
                    assert e.closed_at is not None
                    totals["close_s"][i].append(e.closed_at - started)
                    totals["close_codes"].add((e.close_code, e.ws.close_reason))
                else:
                    totals["not_closed"][i] += 1
                totals["heard_after_removal"][i] += e.updates - heard[i]
        finally:
            await asyncio.gather(*(e.close() for e in editors), return_exceptions=True)
    await owner.close()
    await watcher.close()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--updates", type=int, default=5, help="updates per connection while demoted; the owner's after a removal")
    parser.add_argument("--wait-s", type=float, default=5.0, help="deadline of each wait")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    args = parser.parse_args()
    args.rounds = min(max(args.rounds, 1), 200)
    args.updates = min(max(args.updates, 1), 100)
    args.wait_s = min(max(args.wait_s, 0.5), 30.0)

    work = workdir("tandem-bench-yjs-rights-")
    pg = Postgres(work, fsync=True).start()
    nodes: list[Any] = []
    try:
        secret = jwt_secret()
        nodes = start_nodes(2, pg.admin_url, secret, work, SERVER_ENV)
        print(f"# Tandem /yjs rights following membership, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"postgres: {pg.version()}; 2 nodes; editor connections on node 1 (change heard through NOTIFY) and node 2 (the changing node)")
        print(f"    load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min load average before the run)")
        print(f"  rounds: {args.rounds}, {args.updates} updates per step, waits up to {args.wait_s:g} s")
        t = asyncio.run(run(args, pg, nodes, secret))
        print()
        print(f"demoted: updates stored {t['demoted_stored']} of {t['demoted_sent']}")
        print(f"promoted back: updates stored {t['promoted_stored']} of {t['promoted_sent']}")
        for i, name in enumerate(("node 1 (NOTIFY)", "node 2 (local)")):
            closes = t["close_s"][i]
            lat = summarize([s * 1000 for s in closes]) if closes else None
            closed = f"closed {len(closes)} of {args.rounds}" + (
                f", p50 {lat['p50']:.0f} ms, max {lat['max']:.0f} ms after the removal request" if lat else ""
            )
            print(f"removed, {name}: {closed}; owner updates still received "
                  f"{t['heard_after_removal'][i]} of {t['owner_updates_sent']}")
        print(f"close codes: {sorted(t['close_codes'], key=str)}; member events the watcher missed: {t['missed_events']}")
    finally:
        for node in nodes:
            node.stop()
        pg.destroy()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            cleanup_dir(work)


if __name__ == "__main__":
    main()
