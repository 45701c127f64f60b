"""A coordinator splits writing a spec into tasks; workers claim them, lock the document, write
their section with the lock's fence, and complete the task.

The coordinator creates a team workspace, a document "spec" with one placeholder per section,
and one task per section ("Write section N", its number in `parameters`). Then N workers, each
its own agent with its own connection, take pending tasks: claim (of concurrent claims one
wins), start (which accepts too), lock the document (waiting while another worker holds it), replace the
section's placeholder with their text (every edit carries the lock's fence), and complete the
task with a result; each also counts its sections in the workspace state. The coordinator waits
for a `completed` task.changed event for every task, then prints the document.

    python coordinator.py --url ws://127.0.0.1:8000/ws --token TOKEN \\
        --worker-token TOKEN_1 --worker-token TOKEN_2 [--sections 6] [--timeout 120]

The URL(s) and tokens may also come from TANDEM_URL (comma-separated), TANDEM_TOKEN and
TANDEM_WORKER_TOKENS (comma-separated). Make tokens with `tandem token issue --tenant T --agent A`;
every agent must be of the same tenant. Prints one JSON line; exits 0 when every section is in
the document exactly once and every task is completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import tandem_client


def placeholder(section: int) -> str:
    return f"<!-- section {section} -->"


def section_text(section: int, agent_id: str) -> str:
    return f"Section {section} was written by {agent_id}."


async def setup(client: tandem_client.Client, sections: int) -> tuple[tandem_client.Workspace, tandem_client.Document]:
    """The workspace and the document with one placeholder per section."""
    info = await client.create_workspace("Spec (coordinator example)", visibility="team")
    ws = await client.join(info.workspace_id)
    doc = await ws.open("spec", content_type="markdown")
    doc.text.insert(0, "# Spec\n\n" + "".join(f"## {n}\n{placeholder(n)}\n\n" for n in range(1, sections + 1)))
    await doc.flushed()
    await ws.state.update(lambda state: {**state, "sections": sections, "done": 0})
    return ws, doc


async def work(urls: list[str], token: str, workspace_id: str, max_rounds: int) -> list[int]:
    """Take pending tasks until there are none; returns the sections this worker wrote."""
    written: list[int] = []
    async with tandem_client.connect(urls, token) as client:
        ws = await client.join(workspace_id)
        doc = await ws.open("spec", create=False)
        # Bounded: a round that claims nothing means others claimed what it listed.
        for _ in range(max_rounds):
            pending = await ws.tasks.list(status="pending", limit=1000)
            if not pending:
                return written
            task = await take_one(ws, pending)
            if task is None:
                continue  # every one we tried was taken meanwhile; list again
            section = int(task.parameters["section"])
            await ws.tasks.start(task)  # accepts and starts it in one request
            async with doc.lock(ttl=10, wait=True, timeout=120) as lock:
                text, mark = str(doc.text), placeholder(section)
                at = text.index(mark)
                with doc.ydoc.transaction():  # one update: the placeholder becomes the section
                    del doc.text[at : at + len(mark)]
                    doc.text.insert(at, section_text(section, client.agent_id or "?"))
                fence = lock.fence
            # Leaving the block waited for the server to acknowledge the edit, then released.
            await ws.tasks.complete(task, {"section": section, "fence": fence})
            await ws.state.update(lambda state: {**state, "done": state.get("done", 0) + 1})
            written.append(section)
    return written


async def take_one(ws: tandem_client.Workspace, pending: list[tandem_client.Task]) -> tandem_client.Task | None:
    for task in pending:
        try:
            return await ws.tasks.claim(task)
        except tandem_client.InvalidTransition:
            continue  # another worker claimed it first
    return None


async def main(urls: list[str], token: str, worker_tokens: list[str], sections: int, timeout_s: float) -> int:
    async with asyncio.timeout(timeout_s), tandem_client.connect(urls, token) as client:
        ws, doc = await setup(client, sections)
        async with ws.tasks.events() as events:  # opened before the first task exists: no event is missed
            task_ids = {
                (await ws.tasks.create(f"Write section {n}", task_type="write", parameters={"section": n})).task_id
                for n in range(1, sections + 1)
            }
            workers = asyncio.gather(*(work(urls, t, ws.workspace_id, 2 * sections) for t in worker_tokens))
            completed: dict[str, tandem_client.Task] = {}
            async for event in events:
                if event.task.status == "completed":
                    completed[event.task.task_id] = event.task
                if task_ids <= set(completed):
                    break
            written = await workers
        await doc.wait_for(lambda d: all(placeholder(n) not in str(d.text) for n in range(1, sections + 1)))
        state, _ = await ws.state.get()
        text = str(doc.text)
    by_section = {int(t.result["section"]): t.assigned_to for t in completed.values() if t.result}
    exactly_once = all(text.count(section_text(n, by_section.get(n) or "?")) == 1 for n in range(1, sections + 1))
    print(json.dumps({
        "workspace_id": ws.workspace_id, "doc_id": doc.doc_id, "sections": sections, "completed": len(completed),
        "by_section": by_section, "written_by_worker": written, "state": state, "exactly_once": exactly_once,
        "text": text,
    }))  # fmt: skip
    return 0 if exactly_once and len(completed) == sections else 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env_urls = [u for u in os.environ.get("TANDEM_URL", "").split(",") if u]
    env_workers = [t for t in os.environ.get("TANDEM_WORKER_TOKENS", "").split(",") if t]
    parser.add_argument("--url", action="append", help="a node's ws://host:port/ws (repeat for several)")
    parser.add_argument("--token", default=os.environ.get("TANDEM_TOKEN"), help="the coordinator's token")
    parser.add_argument("--worker-token", action="append", help="one per worker, each a different agent (repeat)")
    parser.add_argument("--sections", type=int, default=6, help="sections (tasks) to write")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    args.url = args.url or env_urls
    args.worker_token = args.worker_token or env_workers
    if not args.url or not args.token or not args.worker_token:
        parser.error("--url, --token and --worker-token (or TANDEM_URL, TANDEM_TOKEN, TANDEM_WORKER_TOKENS) are required")
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(asyncio.run(main(args.url, args.token, args.worker_token, args.sections, args.timeout)))
