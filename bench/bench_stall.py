"""Benchmark: the worst event-loop stall one update causes, per class of update.

A real `tandem serve` node and PostgreSQL. A writer sends one update of each class to a document
of its own (set up first: a 300,000-character paste, or a typed history); meanwhile an agent of
another tenant pings the node every 2 ms. Printed per class: the update's size, the server's
answer, how long the answer took, the worst ping round trip while it was under way (a ping
waits for whatever holds the node's event loop; an idle ping takes about 1 ms here), and the CPU
the update takes to apply to its document (`crdt.cost.apply_cpu_s`, what the worker compares
with `max_update_apply_ms`; the most of the first five updates of the class).

Classes: ordinary typing (200 keystrokes), a 50 KB paste, a 300,000-character paste, replacing
a document's whole content (typed at its end, or fragmented by cursor jumps), a first sync (the
full state of a 20,000-operation history, as y-websocket's sync step 2 sends it), deletion-only
updates (140,000 one-character ranges, and 120), 20,000 one-character inserts inside one large
item, deletions of clocks a client has not written yet followed by its paste of them, and
structs of 80,000 clients. `--bounds-off` sets `max_update_clients` and
`update_room_check_bytes` out of reach, for the figures to compare; the refusal of deletions
ahead of the document has no setting (run the code before it to compare that class).

    .venv/bin/python bench/bench_stall.py [--bounds-off] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from pycrdt import ContentAttribute, Doc, Encoder, IdMap, Text

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Postgres,
    cleanup_dir,
    jwt_secret,
    machine,
    start_nodes,
    workdir,
)
from bench.lean_client import Agent, ReplyError  # noqa: E402
from crdt.cost import apply_cpu_s  # noqa: E402
from server.core import auth  # noqa: E402

SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "1000000", "TANDEM_MAX_MESSAGE_BURST": "1000000", "TANDEM_LOG_LEVEL": "warning"}
BOUNDS_OFF = {"TANDEM_MAX_UPDATE_CLIENTS": "1000000000", "TANDEM_UPDATE_ROOM_CHECK_BYTES": "1000000000"}
BASE_CHARS = 300_000
PING_EVERY_S = 0.002
CLASS_TIMEOUT_S = 120.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def edit(doc: Doc, fn: Callable[[Text], Any]) -> bytes:
    """Apply `fn` to the doc's text; the update it made."""
    before = doc.get_state()
    fn(doc.get("content", type=Text))
    return doc.get_update(before)


def client_of(doc: Doc) -> int:
    return doc.client_id


# --- the update classes: (setup updates, the measured updates) ------------------------------------


def pasted() -> tuple[Doc, bytes]:
    doc = Doc()
    return doc, edit(doc, lambda t: t.insert(0, "x" * BASE_CHARS))


def typing() -> tuple[list[bytes], list[bytes]]:
    doc, paste = pasted()
    keys = [edit(doc, lambda t, i=i: t.insert(1000 + 3 * i, "k")) for i in range(200)]
    return [paste], keys


def paste_50k() -> tuple[list[bytes], list[bytes]]:
    doc, paste = pasted()
    return [paste], [edit(doc, lambda t: t.insert(BASE_CHARS // 2, "p" * 50_000))]


def large_insert() -> tuple[list[bytes], list[bytes]]:
    return [], [pasted()[1]]


def typed_history(count: int) -> tuple[Doc, list[bytes]]:
    """One writer typing at the end, every tenth update a small deletion at the start."""
    doc = Doc()
    updates = []
    for i in range(count):
        if i % 10 == 9:
            updates.append(edit(doc, lambda t: t.__delitem__(slice(0, 2))))
        else:
            updates.append(edit(doc, lambda t, i=i: t.insert(len(t), f"w{i} ")))
    return doc, updates


def replace_all() -> tuple[list[bytes], list[bytes]]:
    doc, history = typed_history(20_000)
    return [_merged(history)], [edit(doc, lambda t: (t.__delitem__(slice(0, len(t))), t.insert(0, "new " * 2500)))]


def fragmented_history(count: int) -> Doc:
    """One editor typing at a moving cursor, backspacing one update in ten and jumping elsewhere
    one in twenty: the live text ends up spread over thousands of items."""
    rng = random.Random(1)
    doc = Doc()
    text = doc.get("content", type=Text)
    cursor = 0
    for _ in range(count):
        roll = rng.random()
        if roll < 0.85 or len(text) == 0:
            text.insert(cursor, "a")
            cursor += 1
        elif roll < 0.95:
            if cursor > 0:
                del text[cursor - 1 : cursor]
                cursor -= 1
        else:
            cursor = rng.randint(0, len(text))
    return doc


def replace_fragmented(count: int) -> Callable[[], tuple[list[bytes], list[bytes]]]:
    def build() -> tuple[list[bytes], list[bytes]]:
        doc = fragmented_history(count)
        state = doc.get_update()
        return [state], [edit(doc, lambda t: (t.__delitem__(slice(0, len(t))), t.insert(0, "new " * 300)))]

    return build


def first_sync() -> tuple[list[bytes], list[bytes]]:
    doc, history = typed_history(20_000)
    return [_merged(history)], [doc.get_update()]


def _merged(updates: list[bytes]) -> bytes:
    doc = Doc()
    with doc.transaction():
        for update in updates:
            doc.apply_update(update)
    return doc.get_update()


def deletion_only(ranges: int) -> Callable[[], tuple[list[bytes], list[bytes]]]:
    def build() -> tuple[list[bytes], list[bytes]]:
        doc, paste = pasted()
        deleted = IdMap()
        mark = [ContentAttribute("deleted", True)]
        for i in range(ranges):
            deleted.insert(client_of(doc), 2 * i, 1, mark)
        return [paste], [b"\x00" + deleted.as_id_set().encode()]

    return build


def inserts_inside(count: int) -> tuple[list[bytes], list[bytes]]:
    doc, paste = pasted()

    def insert(text: Text) -> None:
        for i in range(count, 0, -1):  # from the end, so earlier positions stay put
            text.insert(11 * i, "y")

    return [paste], [edit(doc, insert)]


def deletions_ahead_then_paste() -> tuple[list[bytes], list[bytes]]:
    """Deletions of 140,000 clocks a client has not written yet, then that client's paste."""
    doc, paste = pasted()
    deleted = IdMap()
    mark = [ContentAttribute("deleted", True)]
    for i in range(140_000):
        deleted.insert(client_of(doc), 2 * i, 1, mark)
    return [], [b"\x00" + deleted.as_id_set().encode(), paste]


def many_clients(count: int) -> tuple[list[bytes], list[bytes]]:
    enc = Encoder()
    enc.write_var_uint(count)
    for client in range(1_000_000, 1_000_000 + count):
        for value in (1, client, 0, 0, 1):
            enc.write_var_uint(value)
    enc.write_var_uint(0)
    return [], [enc.to_bytes()]


CLASSES: dict[str, Callable[[], tuple[list[bytes], list[bytes]]]] = {
    "typing (200 keystrokes)": typing,
    "paste 50 KB": paste_50k,
    "large insert 300,000 chars": large_insert,
    "replace all (20,000-op doc)": replace_all,
    "replace all (fragmented 20,000)": replace_fragmented(20_000),
    "replace all (fragmented 100,000)": replace_fragmented(100_000),
    "first sync (20,000-op doc)": first_sync,
    "deletion-only, 120 ranges": deletion_only(120),
    "deletion-only, 140,000 ranges": deletion_only(140_000),
    "20,000 inserts inside an item": lambda: inserts_inside(20_000),
    "deletions ahead, then the paste": deletions_ahead_then_paste,
    "80,000 clients": lambda: many_clients(80_000),
}


# --- measuring ---------------------------------------------------------------------------------


class Pinger:
    """Pings every PING_EVERY_S; keeps (sent_at, round trip) of each."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.samples: list[tuple[float, float]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while len(self.samples) < 1_000_000:
            start = time.perf_counter()
            await self.agent.request("ping", timeout_s=CLASS_TIMEOUT_S)
            self.samples.append((start, time.perf_counter() - start))
            await asyncio.sleep(PING_EVERY_S)

    def worst_between(self, start: float, end: float) -> float:
        """The worst round trip of the pings sent in [start, end] or under way at `end`."""
        return max((rtt for sent, rtt in self.samples if start <= sent + rtt and sent <= end), default=0.0)


async def measure(url: str, secret: str, name: str, setup: list[bytes], updates: list[bytes]) -> dict[str, Any]:
    writer = await Agent.connect(url, auth.issue_token(secret, uuid.uuid4(), "writer", 3600))
    other = await Agent.connect(url, auth.issue_token(secret, uuid.uuid4(), "other", 3600))
    pinger = Pinger(other)
    try:
        ws = (await writer.request("workspace.create", name="stall", visibility="team"))["workspace"]
        await writer.request("workspace.join", workspace_id=ws["workspace_id"])
        doc_id = (await writer.request("doc.create", workspace_id=ws["workspace_id"], title=name))["document"]["doc_id"]
        await writer.request("doc.open", doc_id=doc_id)
        for update in setup:
            await writer.request("doc.update", CLASS_TIMEOUT_S, doc_id=doc_id, update=b64(update))
        pinger.task = asyncio.create_task(pinger.run())
        await asyncio.sleep(0.2)
        outcomes: dict[str, int] = {}
        start = time.perf_counter()
        for update in updates:
            try:
                await writer.request("doc.update", CLASS_TIMEOUT_S, doc_id=doc_id, update=b64(update))
                outcome = "ok"
            except ReplyError as exc:
                outcome = str(exc.code)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        end = time.perf_counter()
        await asyncio.sleep(0.1)
        return {
            "class": name, "updates": len(updates), "bytes": max(len(u) for u in updates),
            "outcome": ", ".join(f"{k} x{v}" if len(updates) > 1 else k for k, v in outcomes.items()),
            "answer_s": end - start, "worst_ping_s": pinger.worst_between(start, end),
        }
    finally:
        if pinger.task is not None:
            pinger.task.cancel()
            await asyncio.gather(pinger.task, return_exceptions=True)
        await writer.close()
        await other.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bounds-off", action="store_true", help="set the update bounds out of reach")
    parser.add_argument("--runs", type=int, default=3, help="runs per class; the worst ping of each is printed")
    parser.add_argument("--only", help="run the classes whose name contains this")
    args = parser.parse_args()
    work = workdir()
    pg = Postgres(work).start()
    node = None
    try:
        secret = jwt_secret()
        env = {**SERVER_ENV, **(BOUNDS_OFF if args.bounds_off else {})}
        node = start_nodes(1, pg.admin_url, secret, work, env)[0]
        print(f"# bench_stall {date.today()} bounds {'off' if args.bounds_off else 'on (defaults)'}; {machine()['cpu']}")
        print(f"{'class':32} {'bytes':>8} {'apply ms':>9} {'outcome':>20} {'answer s':>9} {'worst ping ms (each run)':>25}")
        for name, build in CLASSES.items():
            if args.only and args.only not in name:
                continue
            setup, updates = build()
            state = _merged(setup)
            cpu_ms = 1000 * max(apply_cpu_s(state, update) for update in updates[:5])
            results = [
                asyncio.run(asyncio.wait_for(measure(node.ws_url, secret, name, setup, updates), 4 * CLASS_TIMEOUT_S))
                for _ in range(args.runs)
            ]
            pings = " ".join(f"{1000 * r['worst_ping_s']:.0f}" for r in results)
            first = results[0]
            answer_s = max(r["answer_s"] for r in results)
            print(f"{name:32} {first['bytes']:>8} {cpu_ms:>9.1f} {first['outcome']:>20} {answer_s:>9.2f} {pings:>25}", flush=True)
    finally:
        if node is not None:
            node.stop()
        pg.stop()
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
