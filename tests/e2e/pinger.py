"""A bystander in its own process: `python -m tests.e2e.pinger URL TOKEN WORKSPACE_ID`.

Connects (asking for `presence.batch`), joins the workspace, prints `ready`, then sends `ping`
one at a time until a line arrives on stdin (or `MAX_RUN_S` passed), and prints the round trips
as one JSON line: `{"pings": N, "max_s": ..., "presence_frames": N}`. Being its own process,
what it measures is the server's answer, not the load of the test's many clients.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tests import wsclient

MAX_RUN_S = 300.0
PAUSE_S = 0.05


async def run(url: str, token: str, workspace_id: str) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    rtts: list[float] = []
    async with wsclient.Agent(url, token) as agent:
        await agent.request("hello", protocol=1, presence_batch=True)
        await agent.request("workspace.join", workspace_id=workspace_id)
        print("ready", flush=True)
        deadline = time.monotonic() + MAX_RUN_S
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            await agent.request("ping", wait_s=MAX_RUN_S)
            rtts.append(time.monotonic() - start)
            try:
                await asyncio.wait_for(stop.wait(), PAUSE_S)  # the pause between pings, or the end
            except TimeoutError:
                pass
        frames = agent.events.qsize()
    return {"pings": len(rtts), "max_s": max(rtts, default=0.0), "presence_frames": frames}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(*sys.argv[1:4]))), flush=True)
