"""A review pipeline driven by a workflow: a writer drafts, two reviewers comment in parallel, an
editor merges, all in one Tandem document.

The writer creates a team workspace and a document, adds the others, and defines the workflow
(docs/protocol.md section 12.8): `draft` (capability `draft`), `review_style` and
`review_facts` (capability `review`, both after `draft`, so they run in parallel, one per
reviewer: the engine gives each to the least-loaded free reviewer) and `merge` (capability
`edit`, after both). Each agent registers its capability and works through
`ws.tasks.assigned_to_me()`: start (accepting it in the same request), edit the document,
complete with what it did.
The writer starts the run and waits for it to complete.

    python review_pipeline.py --url ws://127.0.0.1:8000/ws --token-writer W --token-reviewer-a RA \\
        --token-reviewer-b RB --token-editor E [--topic "Cats"]

Tokens: `tandem token issue --tenant T --agent writer` (and reviewer-a, reviewer-b, editor), all
of one tenant; or TANDEM_TOKEN_WRITER, TANDEM_TOKEN_REVIEWER_A, TANDEM_TOKEN_REVIEWER_B,
TANDEM_TOKEN_EDITOR, and TANDEM_URL (comma-separated). With several URLs the agents are spread
over them (the first agent on the first, ...), each keeping the others to fail over to. Prints
one JSON line (workspace, document, execution, status, step_results, text); exits 0 when the run
completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable
from typing import TypeVar

import tandem_client

ROLES = ("writer", "reviewer-a", "reviewer-b", "editor")
CAPABILITY = {
    "writer": "draft",
    "reviewer-a": "review",
    "reviewer-b": "review",
    "editor": "edit",
}
WAIT_S = 120.0  # bound on the whole run
T = TypeVar("T")


def steps(doc_id: str) -> list[dict[str, object]]:
    def step(
        step_id: str, title: str, capability: str, after: list[str]
    ) -> dict[str, object]:
        found: dict[str, object] = {"id": step_id, "task": {"title": title}, "capability": capability,
                                    "document_id": doc_id}  # fmt: skip
        if after:
            found["depends_on"] = after
        return found

    return [
        step("draft", "Draft the article", "draft", []),
        step("review_style", "Review the style", "review", ["draft"]),
        step("review_facts", "Check the facts", "review", ["draft"]),
        step("merge", "Merge the reviews", "edit", ["review_style", "review_facts"]),
    ]


# --- what each step does to the document -------------------------------------------------------


async def draft(doc: tandem_client.Document, me: str, topic: str) -> dict[str, object]:
    text = f"# {topic}\n\n{topic} are remarkable. This draft says why, in three short lines.\n"
    doc.text.insert(len(doc.text), text)
    return {"by": me, "chars": len(text)}


async def review(
    doc: tandem_client.Document, me: str, step_id: str
) -> dict[str, object]:
    kind = step_id.removeprefix("review_")
    comment = f"> [{kind}] {me}: looks good; one {kind} note inline.\n"
    doc.text.insert(len(doc.text), comment)
    return {"by": me, "comments": 1, "kind": kind}


async def merge(doc: tandem_client.Document, me: str) -> dict[str, object]:
    text = str(doc.text)
    comments = text.count("\n> [")
    title_end = text.index("\n")
    doc.text.insert(title_end, " (final)")
    doc.text.insert(
        len(doc.text), f"\nMerged by {me}: {comments} review comments resolved.\n"
    )
    return {"by": me, "merged": comments}


async def do_step(
    ws: tandem_client.Workspace, task: tandem_client.Task, me: str, topic: str
) -> None:
    """Start (and so accept), do and complete one step task (a task taken from this agent
    meanwhile: InvalidTransition, left alone)."""
    try:
        if task.status in ("assigned", "accepted"):
            task = await ws.tasks.start(task)
        doc = await ws.open(str(task.parameters["document_id"]), create=False)
        if task.step_id == "draft":
            result = await draft(doc, me, topic)
        elif task.step_id == "merge":
            # the merge sees both reviews: they completed before it was created
            await doc.wait_for(
                lambda d: str(d.text).count("\n> [") >= 2, timeout_s=WAIT_S
            )
            result = await merge(doc, me)
        else:
            result = await review(doc, me, task.step_id or "")
        await doc.flushed()  # the edit is durable before the step is reported done
        await ws.tasks.complete(task, result)
    except tandem_client.InvalidTransition:
        return


async def work(
    client: tandem_client.Client,
    role: str,
    workspace_id: str,
    topic: str,
    ready: asyncio.Event,
) -> None:
    """This agent's worker loop: register its capability, then do every task given to it."""
    me = client.agent_id or role
    # Only its own tasks' events reach it: it does only its own tasks.
    ws = await client.join(workspace_id, task_events="own")
    async with ws.tasks.assigned_to_me() as mine:
        await client.agents.register(
            role,
            kind="example",
            capabilities=[CAPABILITY[role]],
            max_concurrent_tasks=1,
        )
        ready.set()
        async for task in mine:
            if task.execution_id is not None:
                await do_step(ws, task, me, topic)


async def main(urls: list[str], tokens: dict[str, str], topic: str) -> int:
    def connect(i: int, role: str) -> tandem_client.Client:
        spread = (
            urls[i % len(urls) :] + urls[: i % len(urls)]
        )  # its own node first, the rest to fail over to
        return tandem_client.connect(spread, tokens[role])

    async with contextlib.AsyncExitStack() as stack:
        clients = {
            role: await stack.enter_async_context(connect(i, role))
            for i, role in enumerate(ROLES)
        }
        writer = clients["writer"]
        info = await writer.create_workspace(
            f"Review pipeline: {topic}", visibility="team"
        )
        ws = await writer.join(info.workspace_id)
        doc = await ws.create_document(topic, content_type="markdown")
        for role in ROLES[1:]:
            await ws.members.add(clients[role].agent_id or role, "member")
        readies = {role: asyncio.Event() for role in ROLES}
        workers = [
            asyncio.create_task(work(c, r, info.workspace_id, topic, readies[r]))
            for r, c in clients.items()
        ]
        try:
            await _first(asyncio.gather(*(e.wait() for e in readies.values())), workers)
            flow = await ws.workflows.define(
                "review-pipeline", "parallel", steps(doc.doc_id)
            )
            run = await ws.workflows.start(flow, input={"topic": topic})
            final = await _first(run.wait(timeout_s=WAIT_S), workers)
            opened = await ws.open(doc.doc_id, create=False)
            await opened.wait_for(lambda d: "resolved" in str(d.text), timeout_s=WAIT_S)
            text = str(opened.text)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    out = {
        "workspace_id": info.workspace_id, "doc_id": doc.doc_id, "execution_id": final.execution_id,
        "status": final.status, "step_results": final.step_results, "text": text,
    }  # fmt: skip
    print(json.dumps(out))
    return 0 if final.status == "completed" else 1


async def _first(awaitable: Awaitable[T], workers: list[asyncio.Task[None]]) -> T:
    """`awaitable`'s result, or the error of a worker that failed first."""
    waiting = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait(
        [waiting, *workers], return_when=asyncio.FIRST_COMPLETED
    )
    for task in done:
        if task is not waiting and task.exception() is not None:
            waiting.cancel()
            raise task.exception()  # type: ignore[misc]
    return await waiting


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env_urls = [u for u in os.environ.get("TANDEM_URL", "").split(",") if u]
    parser.add_argument(
        "--url", action="append", help="a node's ws://host:port/ws (repeat for several)"
    )
    for role in ROLES:
        env = "TANDEM_TOKEN_" + role.upper().replace("-", "_")
        parser.add_argument(
            f"--token-{role}",
            default=os.environ.get(env),
            help=f"the {role}'s token (or {env})",
        )
    parser.add_argument(
        "--topic",
        default="Cats",
        help="what the article is about (the document's title)",
    )
    args = parser.parse_args(argv)
    args.url = args.url or env_urls
    args.tokens = {
        role: getattr(args, "token_" + role.replace("-", "_")) for role in ROLES
    }
    if not args.url or not all(args.tokens.values()):
        parser.error(
            "--url and a token for each of " + ", ".join(ROLES) + " are required"
        )
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(asyncio.run(main(args.url, args.tokens, args.topic)))
