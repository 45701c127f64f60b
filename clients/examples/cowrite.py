"""Two agents co-writing one document.

Agent A creates a team workspace and a document titled "spec"; then A and B, each with its own
token and connection, write their lines into it at the same time: A appends at the end, B
inserts its lines at the top. Each waits until the server has acknowledged its edits and it
sees the other's, then both print what they hold: the same text.

    python cowrite.py --url ws://127.0.0.1:8000/ws --token-a TOKEN_A --token-b TOKEN_B [--lines 10]

The URL(s) and tokens may also come from TANDEM_URL (comma-separated), TANDEM_TOKEN_A and
TANDEM_TOKEN_B. Make tokens with `tandem token issue --tenant T --agent A`; both agents must be
of the same tenant. Prints one JSON line; exits 0 when both agents ended with the same text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import tandem_client


async def write(name: str, urls: list[str], token: str, workspace_id: str, lines: int, at_top: bool) -> str:
    async with tandem_client.connect(urls, token) as client:
        ws = await client.join(workspace_id)
        doc = await ws.open("spec", create=False)
        for i in range(lines):
            text = doc.text
            line = f"{name}: line {i + 1}\n"
            if at_top:
                text.insert(0, line)
            else:
                text.insert(len(text), line)
            await doc.flushed()  # one acknowledged edit at a time, so the two agents interleave
        # Both agents' lines are there once the other one is done too.
        await doc.wait_for(lambda d: str(d.text).count(": line ") == 2 * lines, timeout_s=60)
        return str(doc.text)


async def main(urls: list[str], token_a: str, token_b: str, lines: int) -> int:
    async with tandem_client.connect(urls, token_a) as client:
        info = await client.create_workspace("Co-writing example", visibility="team")
        ws = await client.join(info.workspace_id)
        await ws.create_document("spec", content_type="markdown")
    text_a, text_b = await asyncio.gather(
        write("A", urls, token_a, info.workspace_id, lines, at_top=False),
        write("B", urls, token_b, info.workspace_id, lines, at_top=True),
    )
    same = text_a == text_b
    print(json.dumps({"workspace_id": info.workspace_id, "converged": same, "lines": text_a.count("\n"), "text": text_a}))
    return 0 if same else 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env_urls = [u for u in os.environ.get("TANDEM_URL", "").split(",") if u]
    parser.add_argument("--url", action="append", help="a node's ws://host:port/ws (repeat for several)")
    parser.add_argument("--token-a", default=os.environ.get("TANDEM_TOKEN_A"))
    parser.add_argument("--token-b", default=os.environ.get("TANDEM_TOKEN_B"))
    parser.add_argument("--lines", type=int, default=10, help="lines each agent writes")
    args = parser.parse_args(argv)
    args.url = args.url or env_urls
    if not args.url or not args.token_a or not args.token_b:
        parser.error("--url, --token-a and --token-b (or TANDEM_URL, TANDEM_TOKEN_A, TANDEM_TOKEN_B) are required")
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(asyncio.run(main(args.url, args.token_a, args.token_b, args.lines)))
